"""Metric and record values as JSON: NaN, infinities and bytes kept by tagging them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["TAGS", "as_float", "check_info", "from_jsonable", "jsonable"]

TAGS = frozenset({"__bytes__", "__float__"})
"""The keys of the one-key objects :func:`jsonable` writes bytes and NaN or infinite floats as:
a dict of one such key is read back as bytes or a float, so no metric may be named so."""


def as_float(value: int | float) -> float:
    """``value`` as a float; an integer too big for one (valid JSON) is an infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_info(info: Any, event: str, round: int) -> None:
    """Refuse an aggregation event's ``info`` that the round's history cannot keep.

    The round loop copies ``info`` into the round's ``aggregate_info``: a list or
    None there failed as ``'NoneType' object is not iterable``, naming nothing, and
    a value JSON cannot hold (a set, an object) failed only when the run was saved.
    Each value is converted as the history does (:func:`jsonable`): once a round.

    Raises:
        TypeError: naming the event and its round, if ``info`` is not a mapping or
            one of its values cannot be written to the history.
    """
    if not isinstance(info, Mapping):
        raise TypeError(
            f"{event}(round={round}).info must be a dict of names to values (the round "
            f"records it in aggregate_info), got {type(info).__name__}"
        )
    for key, value in info.items():
        try:
            jsonable(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(f"{event}(round={round}).info[{key!r}]: {exc}") from None


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data; NaN, infinities and bytes become tagged objects."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": str(value)}
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # arrays (a custom metric)
        return jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars, 0-d arrays
        return jsonable(value.item())
    if value is not None and not isinstance(value, str | int | float):
        raise TypeError(
            f"cannot write a value of type {type(value).__name__} to the history (JSON): "
            f"{value!r:.80}; metrics and infos must be numbers, strings, lists or dicts"
        )
    return value


def from_jsonable(value: Any) -> Any:
    """Undo :func:`jsonable`'s tags."""
    if isinstance(value, dict):
        if len(value) == 1 and "__bytes__" in value:  # see TAGS
            return bytes.fromhex(value["__bytes__"])
        if len(value) == 1 and "__float__" in value:
            return float(value["__float__"])
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value
