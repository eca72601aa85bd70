"""The functions a run is given to call: its ``evaluate_fn`` and its ``on_round`` callbacks.

Both are checked before the run starts, so that a wrong one fails at once rather than
after the first round has trained.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

import numpy as np

from covey.core._history import RoundRecord
from covey.core._messages import MetricValue
from covey.core._recordvalues import settle, written
from covey.core._weights import Weights
from covey.strategies._checks import name_of

EvaluateFn = Callable[
    [int, Weights],
    "tuple[float | np.floating[Any], Mapping[str, MetricValue | np.ndarray[Any, Any]]] | None",
]
"""``(round, weights) -> (loss, metrics)`` on the server; a metric is a scalar (NumPy's, or
a 0-d array, as the number it holds), so a :data:`covey.Metrics` of one's own is taken."""
RoundCallback = Callable[[RoundRecord], None]
"""``(record) -> None``: ``on_round``, called with each round's record once the round is over."""

REPLAYED: ContextVar[int | None] = ContextVar("covey_replayed_round", default=None)
"""The saved round a resumed run calls its ``on_round`` callbacks with again, while it does.

A run stopped before a round's callbacks all returned calls them again as it
resumes (see :func:`covey.server._saver.call_pending`); a console reading this
says the round is the saved one the run resumes after, not one just run.
"""


def replayed_round() -> int | None:
    """The saved round ``on_round`` is being called with again as a run resumes; else None."""
    return REPLAYED.get()


def check_evaluate_fn(evaluate_fn: object) -> None:
    """Refuse an ``evaluate_fn`` that cannot be called as ``evaluate_fn(round, weights)``.

    Flower's takes ``(server_round, parameters, config)``: without this check it
    would fail only after the clients were started, with a bare ``missing 1
    required positional argument``.

    Raises:
        TypeError: naming the call covey makes and what the function wants.
    """
    if evaluate_fn is None:
        return
    if not callable(evaluate_fn):
        raise TypeError(f"evaluate_fn must be a function, got {type(evaluate_fn).__name__}")
    try:
        signature = inspect.signature(evaluate_fn)
    except (TypeError, ValueError):  # a builtin or extension type: nothing to check
        return
    try:
        signature.bind(0, {})
    except TypeError:
        name = getattr(evaluate_fn, "__qualname__", type(evaluate_fn).__name__)
        try:  # it wants more arguments: Flower's (server_round, parameters, config)
            signature.bind(0, {}, {})
            fix = (
                "Flower's third argument, config, has no counterpart: drop it or give it a default"
            )
        except TypeError:
            fix = "give it those two parameters, e.g. def evaluate_fn(round, weights)"
        raise TypeError(
            f"covey calls evaluate_fn(round, weights) (weights: a dict of names to arrays) "
            f"but {name}{signature} cannot be called so; {fix}"
        ) from None


def _check_round_callback(callback: object, what: str) -> None:
    """Refuse a round callback that cannot be called as ``callback(record)``.

    ``on_round=lambda: None`` would otherwise train round 0 and then stop the
    run with Python's bare ``takes 0 positional arguments but 1 was given``.

    Raises:
        TypeError: naming ``what``, the call covey makes and the function's own signature.
    """
    if not callable(callback):
        how = "," if "[" in what else " (covey calls on_round(record)) or a list of them,"
        raise TypeError(
            f"{what} must be a function of the round's record{how} got {type(callback).__name__}"
        )
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # a builtin or extension type: nothing to check
        return
    try:
        signature.bind(None)
    except TypeError:
        raise TypeError(
            f"covey calls on_round(record) (record: the round's RoundRecord) but {what} "
            f"{name_of(callback)}{signature} cannot be called so: give it that one parameter, "
            "e.g. def on_round(record)"
        ) from None


def _noted(callback: RoundCallback, what: str) -> RoundCallback:
    """``callback``, an error it raises noted with ``what``, its name and the round."""

    def call(record: RoundRecord) -> None:
        before = written(record)
        try:
            callback(record)
        except Exception as exc:  # the user's error, told where it came from
            exc.add_note(f"raised by {what} {name_of(callback)} in round {record.round}")
            raise
        # What it wrote into the record, kept as history.json reads it back.
        settle(record, before, f"{what} {name_of(callback)} in round {record.round}")

    return call


def round_callback(on_round: object) -> RoundCallback | None:
    """``on_round`` as one callback: a list or tuple of callbacks is called in its order.

    Checked before the run starts, so that a wrong value fails at once rather
    than after the first round has trained. An error a callback raises gets a
    note naming it and the round, as the errors of a strategy's functions do.

    Raises:
        TypeError: ``on_round`` is neither a function of a round's record, nor a
            list or tuple of them.
    """
    if on_round is None:
        return None
    if not isinstance(on_round, list | tuple):
        _check_round_callback(on_round, "on_round")
        return _noted(on_round, "on_round")  # type: ignore[arg-type]
    for i, callback in enumerate(on_round):
        _check_round_callback(callback, f"on_round[{i}]")
    callbacks = tuple(_noted(c, f"on_round[{i}]") for i, c in enumerate(on_round))

    def each(record: RoundRecord) -> None:
        for callback in callbacks:
            callback(record)

    return each


def checked_callbacks(evaluate_fn: object, on_round: object) -> RoundCallback | None:
    """Check a run's ``evaluate_fn`` and return its ``on_round`` as one callback, before it starts.

    See :func:`check_evaluate_fn` and :func:`round_callback`.
    """
    check_evaluate_fn(evaluate_fn)
    return round_callback(on_round)
