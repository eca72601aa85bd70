"""Strategy subclasses: which arguments their constructor takes, and copies with other options.

A subclass of :class:`covey.Strategy` may declare more fields (as a frozen
dataclass) or write an ``__init__`` of its own with other parameters. covey
never calls that ``__init__`` again: wrappers such as :func:`covey.privacy.central`
and the deployed server copy the strategy with :func:`replace_strategy`.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from covey.aggregate._flat import written_fraction
from covey.core._messages import plain
from covey.strategies._checks import name_of

if TYPE_CHECKING:
    from covey.strategies._strategy import Strategy


def parameters(cls: type[Strategy]) -> set[str] | None:
    """The keyword arguments ``cls(...)`` takes (None: its ``__init__`` takes ``**kwargs``)."""
    try:
        params = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):  # an __init__ whose signature cannot be read decides itself
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


S = TypeVar("S", bound="Strategy")


def replace_strategy(strategy: S, **changes: Any) -> S:
    """``strategy`` with ``changes`` to its fields: same class, own attributes kept.

    Unlike :func:`dataclasses.replace`, it does not call the class's ``__init__``
    with every field, which a subclass with an ``__init__`` of its own (taking
    other parameters) would refuse: the object is copied and the fields set,
    then checked as a new strategy is.

    Raises:
        TypeError: for a name that is not a field of ``strategy``.
    """
    unknown = set(changes) - {f.name for f in fields(strategy)}
    if unknown:
        raise TypeError(f"not options of a Strategy: {sorted(unknown)}")
    new = copy.copy(strategy)
    for name, value in changes.items():
        object.__setattr__(new, name, value)
    new.__post_init__()
    return new


OVERRIDABLE = (
    "fit_config",
    "evaluate_config",
    "client_fit_config",
    "client_evaluate_config",
    "num_fit",
    "num_evaluate",
)
"""The methods a subclass overrides the documented way."""


def subclass_options(strategy: Strategy, base: type[Strategy]) -> dict[str, Any]:
    """What :meth:`~covey.Strategy.describe` adds for a subclass: its class, overrides, fields.

    Its own fields, and the public attributes an ``__init__`` of its own set
    (``object.__setattr__(self, "base_lr", base_lr)``), so that a resumed run
    with other values is refused as for a field. A NumPy number is recorded as
    the Python one (``np.int64(3)`` as ``3``, ``np.float32(0.1)`` as the ``0.1``
    it prints as), not by its type's name; a float that is not finite as
    ``"nan"``, ``"inf"`` (JSON has none), NumPy's too. A tuple, list, set, dict
    or NumPy array of such values is recorded by value (a tuple, a set sorted
    and an array as a list; a dict's keys as strings), one of more than
    :data:`MAX_RECORDED` values by its type and a digest of them; a function by
    its name, as the strategy's options are. Anything else is given by type name.
    """
    kind = type(strategy)
    out: dict[str, Any] = {"class": f"{kind.__module__}.{kind.__qualname__}"}
    for method in OVERRIDABLE:
        if getattr(kind, method) is not getattr(base, method):
            out[method] = getattr(kind, method).__qualname__
    for name in sorted(own_attributes(strategy, base)):
        out[name] = recorded(getattr(strategy, name))
    return out


def own_attributes(strategy: Strategy, base: type[Strategy]) -> set[str]:
    """The fields ``strategy``'s class adds to ``base``'s, and the public attributes it set."""
    names = {f.name for f in fields(strategy)}
    own = names - {f.name for f in fields(base)}
    return own | {k for k in vars(strategy) if k not in names and not k.startswith("_")}


MAX_RECORDED = 1000
"""The most values a subclass's attribute is recorded by; a larger one is recorded by digest."""


class _Unrecordable(Exception):
    """A value that has no JSON form :func:`recorded` writes."""


def recorded(value: Any) -> Any:
    """How :func:`subclass_options` records one attribute's ``value`` (see there)."""
    try:
        count = [0]
        out = _by_value(value, count, 0)
    except _Unrecordable:
        if callable(value):  # a function, a class: by name, as the strategy's options
            return name_of(value)
        return former_record(value)
    if count[0] > MAX_RECORDED:
        text = json.dumps(out, sort_keys=True, separators=(",", ":"))
        return f"{type(value).__name__} sha256:{hashlib.sha256(text.encode()).hexdigest()[:32]}"
    return out


def former_record(value: Any) -> Any:
    """How an attribute's ``value`` was recorded before containers were recorded by value."""
    value = plain(written_fraction(value))
    if isinstance(value, float) and not math.isfinite(value):
        return repr(float(value))
    scalar = value is None or isinstance(value, bool | int | float | str)
    return value if scalar else type(value).__name__


def _by_value(value: Any, count: list[int], depth: int) -> Any:
    """``value`` as JSON values, counting its scalars in ``count[0]``."""
    if depth > 32:  # a nesting this deep (or a cycle) is no hyperparameter
        raise _Unrecordable
    value = plain(written_fraction(value))
    if isinstance(value, np.bool_):
        value = bool(value)
    if value is None or isinstance(value, bool | int | float | str):
        count[0] += 1
        return (
            repr(float(value)) if isinstance(value, float) and not math.isfinite(value) else value
        )
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        value = value.tolist() if value.ndim else value.item()
        return _by_value(value, count, depth + 1)
    if isinstance(value, list | tuple):
        return [_by_value(x, count, depth + 1) for x in value]
    if isinstance(value, set | frozenset):
        return sorted((_by_value(x, count, depth + 1) for x in value), key=repr)
    if isinstance(value, dict) and all(
        isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)) for k in value
    ):
        return {str(k): _by_value(v, count, depth + 1) for k, v in value.items()}
    raise _Unrecordable
