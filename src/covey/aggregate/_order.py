"""The kind of each built-in step, and a chain refused when its steps are out of order.

A reducer turns the round's contributions into one aggregate; a per-client
step acts on each contribution, so it must come before the reducer; a server
step acts on the aggregate, so it must come after it. A step out of place
passes the events it cannot use on untouched: ``chain(server_adam(),
weighted_mean())`` would be FedAvg, ``chain(weighted_mean(), clip_norm(1.0))``
would clip nothing, and a second reducer would get no contribution. Such a
chain is refused when it is built. Steps written by hand carry no kind and
are not checked.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from itertools import pairwise
from typing import Any, TypeVar, cast

import numpy as np

from covey.aggregate._flat import written_fraction
from covey.core._messages import plain

__all__ = [
    "CLIENT",
    "REDUCER",
    "SERVER",
    "check_order",
    "check_reduces",
    "describe_step",
    "described",
    "of_kind",
    "reducer_names",
]

CLIENT, REDUCER, SERVER = "per-client step", "reducer", "server step"
_RANK = {CLIENT: 0, REDUCER: 1, SERVER: 2}
KIND = "_covey_kind"
"""Set on the ``update`` of a built-in step: ``(kind, name)``, e.g. ``("reducer", "median()")``."""


DESCRIBED = "_covey_described"
"""Set on the ``update`` of a built-in step: its call, e.g. ``"server_adam(eta=0.1, ...)"``."""

_S = TypeVar("_S")
_F = TypeVar("_F", bound=Callable[..., Any])


def described(factory: _F) -> _F:
    """``factory`` (a built-in step's), whose steps record the call that made them.

    Every argument is written out, defaults included, so that a run's record
    (:meth:`covey.Strategy.describe`) says which rule ran with which settings,
    and a resumed run with other settings is refused.
    """
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def make(*args: Any, **kwargs: Any) -> Any:
        step = factory(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        given = ", ".join(f"{key}={_said(value)}" for key, value in bound.arguments.items())
        setattr(step.update, DESCRIBED, f"{factory.__name__}({given})")
        return step

    return cast(_F, make)


def _said(value: Any) -> str:
    """An argument as text: a function by its qualified name, anything else by its repr.

    A NumPy number is written as the Python one it equals (``np.float64(0.1)`` as
    ``0.1``, ``np.float32(0.1)`` as the ``0.1`` it prints as, ``np.True_`` as
    ``True``), in a tuple or list too, so that a step given either is described
    alike and a run started with one resumes with the other.
    """
    if callable(value):
        return str(getattr(value, "__qualname__", type(value).__qualname__))
    return repr(_python(value))


def _python(value: Any) -> Any:
    """``value`` with its NumPy numbers (in a tuple or list too) as Python ones.

    A complex NumPy number is the Python complex it prints as; a long double (real
    or complex) the Python number it equals, when one does (else it keeps its repr).
    """
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.longdouble | np.clongdouble):
        same = complex(value) if isinstance(value, np.clongdouble) else float(value)
        return same if same == value or value != value else value  # NaN != NaN
    if isinstance(value, np.complexfloating):
        return complex(str(value))  # complex64(0.1+0.2j) as the 0.1+0.2j it prints as
    if isinstance(value, np.generic):
        return plain(written_fraction(value))
    if type(value) in (tuple, list):
        return type(value)(_python(item) for item in value)
    return value


python_number = _python
"""What a step's description writes a NumPy number as (see :func:`_said`)."""


def describe_step(step: Any) -> str:
    """What ``step`` is, as text: a chain's steps, a built-in step's call, or a function's name.

    Example:
        >>> from covey.aggregate import chain, clip_norm, krum
        >>> describe_step(chain(clip_norm(1.0), krum(1)))
        'chain(clip_norm(max_norm=1.0), krum(f=1))'
    """
    from covey.aggregate._base import STEPS, innermost

    update = innermost(step)
    steps = getattr(update, STEPS, None)
    if steps is not None:
        return f"chain({', '.join(describe_step(part) for part in steps)})"
    text = getattr(update, DESCRIBED, None)
    if isinstance(text, str):
        return text
    return _said(update)


def of_kind(step: _S, kind: str, name: str) -> _S:
    """``step``, marked as a step of ``kind`` (:data:`CLIENT`, :data:`REDUCER`, :data:`SERVER`)."""
    setattr(step.update, KIND, (kind, name))  # type: ignore[attr-defined]
    return step


def _kinds(step: Any) -> list[tuple[str, str]]:
    """The kinds of ``step``, in event order: a chain's steps', a wrapper's inner step's."""
    from covey.aggregate._base import STEPS, innermost

    update = innermost(step)
    steps = getattr(update, STEPS, None)
    if steps is not None:
        return [kind for part in steps for kind in _kinds(part)]
    kind = getattr(update, KIND, None)
    return [kind] if isinstance(kind, tuple) else []


def check_order(steps: tuple[Any, ...]) -> None:
    """Refuse ``chain(*steps)`` if a step comes where it would get no event it acts on.

    Raises:
        ValueError: naming the step out of place and where it goes.
    """
    kinds = [kind for step in steps for kind in _kinds(step)]
    for (kind, name), (later, after) in pairwise(kinds):
        if kind == REDUCER and later == REDUCER:
            raise ValueError(
                f"chain(): {name} and {after} are both reducers; the second would get the "
                "first's aggregate and no contribution, so it would do nothing: keep one"
            )
        if _RANK[later] >= _RANK[kind]:
            continue
        if later == CLIENT:
            raise ValueError(
                f"chain(): the per-client step {after} comes after the {kind} {name}, so it "
                "would do nothing: it acts on each contribution, and after the reducer there "
                f"is none; put it before the reducer, e.g. {_EXAMPLE}"
            )
        raise ValueError(
            f"chain(): the server step {name} comes before the reducer {after}, so it would "
            "do nothing: it acts on the round's aggregate, which only the reducer makes; put "
            f"it after the reducer, e.g. {_EXAMPLE}"
        )


def reducer_names(step: Any) -> list[str]:
    """The names of the built-in reducers in ``step``, e.g. ``["median()"]``."""
    return [name for kind, name in _kinds(step) if kind == REDUCER]


def _leaf_kinds(step: Any) -> list[tuple[str, str] | None]:
    """The kind of every step in ``step``, in event order; None for a step of no kind."""
    from covey.aggregate._base import STEPS, innermost

    update = innermost(step)
    steps = getattr(update, STEPS, None)
    if steps is not None:
        return [kind for part in steps for kind in _leaf_kinds(part)]
    kind = getattr(update, KIND, None)
    return [kind if isinstance(kind, tuple) else None]


def check_reduces(step: Any) -> None:
    """Refuse an aggregator made only of built-in steps none of which is a reducer.

    Per-client and server steps pass on what they do not act on, and only a
    reducer emits the round's aggregate: without one no round would change the
    model (each would log that no aggregate came). A step written by hand may
    be the reducer, so an aggregator holding one is not checked. A chain without
    a reducer is fine as a part of a longer chain; only the whole is checked.

    Raises:
        ValueError: naming the steps and what to add.
    """
    kinds = _leaf_kinds(step)
    known = [kind for kind in kinds if kind is not None]
    if len(known) < len(kinds) or any(kind == REDUCER for kind, _ in known):
        return
    names = ", ".join(name for _, name in known)
    raise ValueError(
        f"the aggregator ({names}) has no reducer: per-client and server steps act on each "
        "contribution or on the round's aggregate, which only a reducer (weighted_mean(), "
        "median(), krum(f), ...) makes, so no round would change the model; add one, "
        f"e.g. {_EXAMPLE}"
    )


_EXAMPLE = "chain(clip_norm(1.0), weighted_mean(), server_adam())"
