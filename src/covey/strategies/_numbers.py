"""The checks of a :class:`~covey.strategies._strategy.Strategy`'s fractions and counts."""

from __future__ import annotations

from numbers import Real
from typing import Any

from covey.aggregate._flat import written_fraction
from covey.core._messages import MAX_ROUNDS, plain

__all__ = ["NUMBERS", "check_numbers", "plain_tree"]

NUMBERS = (
    "fraction_fit",
    "fraction_evaluate",
    "min_fit_clients",
    "min_evaluate_clients",
    "min_available_clients",
    "buffer_size",
    "max_staleness",
    "evaluate_every",
)
"""The :class:`Strategy` fields that are numbers."""


def check_numbers(strategy: Any) -> None:
    """Refuse fractions and counts out of range, naming them.

    A NumPy number (``np.int64(3)``, a count computed with NumPy) is taken as
    the Python number it is, and kept as one.
    """
    for attr in NUMBERS:
        value = getattr(strategy, attr)
        if attr.startswith("fraction_"):  # np.float32(0.7) of 90 clients is 63, not 62
            value = written_fraction(value)
        object.__setattr__(strategy, attr, plain(value))
    for attr in ("fraction_fit", "fraction_evaluate"):
        value = getattr(strategy, attr)
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(
                f"{attr} must be a number in [0, 1], got {type(value).__name__} {value!r}"
            )
        if not 0 <= float(value) <= 1:
            raise ValueError(f"{attr} must be in [0, 1], got {value!r}")
    for attr in ("min_fit_clients", "min_evaluate_clients", "min_available_clients"):
        value = getattr(strategy, attr)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"{attr} must be a non-negative int, got {type(value).__name__} {value!r}"
            )
        if value < 0:
            raise ValueError(f"{attr} must be a non-negative int, got {value!r}")
    _check_evaluate_every(strategy.evaluate_every)
    for attr, least in (("buffer_size", 1), ("max_staleness", 0)):
        value = getattr(strategy, attr)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(
                f"{attr} must be None or an int >= {least}, got {type(value).__name__} {value!r}"
            )
        if value is not None and value < least:
            raise ValueError(f"{attr} must be None or an int >= {least}, got {value!r}")


def _check_evaluate_every(every: object) -> None:
    """Refuse an ``evaluate_every`` that is no count of rounds from 1 to ``MAX_ROUNDS``."""
    if isinstance(every, bool) or not isinstance(every, int):
        raise TypeError(
            f"evaluate_every must be an int from 1 to {MAX_ROUNDS:,} (evaluate every that "
            f"many rounds), got {type(every).__name__} {every!r}"
        )
    if not 1 <= every <= MAX_ROUNDS:
        raise ValueError(
            f"evaluate_every must be an int from 1 to {MAX_ROUNDS:,} (evaluate every that "
            f"many rounds; 1: every round), got {every!r}"
        )


def plain_tree(value: Any) -> Any:
    """``value`` with each NumPy number in its dicts, lists and tuples as the Python one.

    For a strategy's ``hyperparameters``, which a wrapper nests (``secure()``'s
    ``"secagg"``, central DP's ``"dp"``) from the numbers its user gave: a run's
    record holds ``1.0`` where ``np.float32(1.0)`` was given.
    """
    if isinstance(value, dict):
        return {k: plain_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain_tree(v) for v in value)
    return plain(value)
