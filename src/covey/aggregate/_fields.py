"""The checks of an :class:`~covey.aggregate.Aggregate`'s counts and arrays as it is made."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["check_fields"]


def check_fields(round: Any, num_clients: Any, num_examples: Any, weights: Any, delta: Any) -> None:
    """Refuse an ``Aggregate`` whose counts are no ints >= 0 or whose arrays are no dict.

    Raises:
        TypeError: a count is no int (a bool, a float, a str; NumPy integers are
            taken), or the arrays given are no dict; naming the field.
        ValueError: a count is negative, naming the field.
    """
    arrays = weights if delta is None else delta
    if not isinstance(arrays, Mapping):
        which = "weights" if delta is None else "delta"
        raise TypeError(
            f"Aggregate(round={round!r:.40}).{which} must be a dict of names to arrays, "
            f"got {type(arrays).__name__}"
        )
    _count(round, round, "round", "the round it aggregates")
    _count(num_clients, round, "num_clients", "how many contributions were combined")
    _count(num_examples, round, "num_examples", "how many examples they trained on")


def _count(value: Any, round: Any, name: str, what: str) -> None:
    """Refuse ``Aggregate.<name>`` unless it is an int >= 0 (a NumPy integer too)."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise TypeError(
            f"Aggregate(round={round!r:.40}).{name} must be an int ({what}), got "
            f"{type(value).__name__} {value!r:.80}"
        )
    if value < 0:
        raise ValueError(
            f"Aggregate(round={round}).{name} must be an int >= 0 ({what}), got {value}"
        )
