"""Strategy subclasses: which arguments their constructor takes, and copies with other options.

A subclass of :class:`covey.Strategy` may declare more fields (as a frozen
dataclass) or write an ``__init__`` of its own with other parameters. covey
never calls that ``__init__`` again: wrappers such as :func:`covey.privacy.central`
and the deployed server copy the strategy with :func:`replace_strategy`.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from covey.aggregate._flat import written_fraction
from covey.core._messages import plain

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
    it prints as), not by its type's name. Values that are not JSON scalars are
    given by type name (a float that is not finite as ``"nan"``, ``"inf"``,
    NumPy's too).
    """
    kind = type(strategy)
    out: dict[str, Any] = {"class": f"{kind.__module__}.{kind.__qualname__}"}
    for method in OVERRIDABLE:
        if getattr(kind, method) is not getattr(base, method):
            out[method] = getattr(kind, method).__qualname__
    names = {f.name for f in fields(strategy)}
    own = names - {f.name for f in fields(base)}
    own |= {k for k in vars(strategy) if k not in names and not k.startswith("_")}
    for name in sorted(own):
        value = plain(written_fraction(getattr(strategy, name)))
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(float(value))  # JSON has no NaN or infinity; np.float64's repr differs
        scalar = value is None or isinstance(value, bool | int | float | str)
        out[name] = value if scalar else type(value).__name__
    return out
