"""Metric and record values as JSON: NaN, infinities and bytes kept by tagging them."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

__all__ = [
    "TAGS",
    "as_float",
    "check_info",
    "from_jsonable",
    "jsonable",
    "read_back",
    "shared_name",
    "tag_in",
    "tagged",
]

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
    a value JSON cannot hold (a set, an object) failed only when the run was saved,
    as did a dict of the one key ``__bytes__`` or ``__float__`` (:data:`TAGS`), which
    ``history.json`` reads back as bytes or a float. Each value is converted as the
    history does (:func:`jsonable`): once a round.

    Raises:
        TypeError: naming the event and its round, if ``info`` is not a mapping or
            one of its values cannot be written to the history (or read back as written),
            and where in it.
    """
    if not isinstance(info, Mapping):
        raise TypeError(
            f"{event}(round={round}).info must be a dict of names to values (the round "
            f"records it in aggregate_info), got {type(info).__name__}"
        )
    for key, value in info.items():
        where = f"{event}(round={round}).info[{key!r}]"
        try:
            jsonable(value)
            tag = tag_in(value, where)
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(f"{where}: {exc}") from None
        if tag is not None:
            raise TypeError(tagged(*tag))


def read_back(value: Any) -> Any:
    """``value`` as ``history.json`` gives it back: keys as strings, tuples and arrays as lists.

    NumPy scalars become Python numbers. ``value`` must be what :func:`jsonable` writes
    and hold no dict :func:`tag_in` finds.
    """
    return from_jsonable(jsonable(value))


def tag_in(value: Any, path: str) -> tuple[str, str] | None:
    """``(where, key)`` of a dict in ``value`` that history.json reads back as bytes or a float.

    ``path`` names ``value`` (``its metrics``, then ``its metrics['name'][0]`` and so on).
    """
    if isinstance(value, Mapping):
        if len(value) == 1 and (key := next(iter(value))) in TAGS:
            return path, str(key)
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = tag_in(item, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


def tagged(where: str, key: str) -> str:
    """Why the history cannot keep ``where``, a dict of the one key ``key`` (of :data:`TAGS`)."""
    return (
        f"{where} is a dict of the one key {key!r}, the form history.json writes bytes and NaN "
        "or infinite floats in, so it would be read back as such a value: name that entry "
        "otherwise"
    )


_EXACT = (int, float, str, bytes)


def exact_scalar(value: Any) -> Any:
    """``value`` as the plain Python scalar history.json and the wire give back, else as is.

    A subclass of ``int``, ``float``, ``str`` or ``bytes`` (an ``IntEnum``, a
    ``StrEnum``, ``np.float64``, ``np.str_``) is read back from JSON as the plain
    type: kept as it was, a run's live history differed from the same history
    loaded or resumed, and from a deployed run's (``<E.A: 3>`` against ``3``).
    """
    kind = type(value)
    if kind in _EXACT or kind is bool or value is None:
        return value
    # each base's own method: a subclass's __str__ ("Kind.CNN") or __float__ is left aside
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes.__bytes__(value)
    return value


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
        return jsonable(_item(value))
    if value is not None and not isinstance(value, str | int | float):
        raise TypeError(
            f"cannot write a value of type {type(value).__name__} to the history (JSON): "
            f"{value!r:.80}; metrics and infos must be numbers, strings, lists or dicts"
        )
    return exact_scalar(value)


def _item(value: Any) -> Any:
    """The Python value a NumPy scalar or 0-d array holds; a long double as a float.

    A long double's ``item()`` is a long double again: taking it as a value to
    convert recursed until Python's recursion limit, whose error named nothing.
    """
    item = value.item()
    if type(item) is not type(value) and not _same_kind(item, value):
        return item
    if getattr(getattr(value, "dtype", None), "kind", None) != "f":
        raise TypeError(
            f"cannot write a value of type {type(value).__name__} to the history (JSON): "
            f"{value!r:.80}; metrics and infos must be numbers, strings, lists or dicts"
        )
    return float(item)


def _same_kind(item: Any, value: Any) -> bool:
    """Whether ``item`` (a 0-d array's ``item()``) is still a NumPy scalar of ``value``'s dtype."""
    return getattr(item, "dtype", None) is not None and item.dtype == getattr(value, "dtype", None)


def from_jsonable(value: Any) -> Any:
    """Undo :func:`jsonable`'s tags.

    The keys of the dicts it returns are interned: a run's history holds the
    same metric names (and client ids as keys) in every round, and a string
    made afresh each round (by a client, or read from its reply) would be kept
    once per round, a long run's memory growing by its names alone.
    """
    if isinstance(value, dict):
        if len(value) == 1 and "__bytes__" in value:  # see TAGS
            return bytes.fromhex(value["__bytes__"])
        if len(value) == 1 and "__float__" in value:
            return float(value["__float__"])
        return {shared_name(k): from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def shared_name(key: Any) -> Any:
    """``key`` interned if it is a plain string: one copy of a name every round's record holds.

    (See :func:`from_jsonable`.)
    """
    return sys.intern(key) if type(key) is str else key
