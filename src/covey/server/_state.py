"""The aggregation state of a run as bytes that hold only data: safetensors arrays plus JSON.

A resumed run reads these bytes back from its run folder, so they must never
execute anything: arrays go into a safetensors file and everything else (the
shape of the state: tuples, lists, mappings, numbers, strings) into a JSON tree
stored in that file's metadata. The named tuples aggregation steps keep their
state in are rebuilt only from types found in a *template* state built by the
strategy itself, never from a name read from disk.

The metadata also holds the SHA-256 of the tree and of every array, so a bit
flipped anywhere in the stored bytes (SQLite keeps no checksums of its own) is
refused rather than resumed from as a slightly different optimizer state.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from covey.core._version import covey_version
from covey.server._rundb import NewerFormatError

__all__ = ["StateError", "check_state", "dump_state", "load_state", "state_types"]

_KEY = "covey-state"
_FORMAT = 2
_FORMATS = (1, 2)  # 1: before the checksum (read, unchecked)


class StateError(ValueError):
    """A state that cannot be stored, or stored bytes that are not a valid state."""


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_FACTORIES: dict[str, type] = {t.__name__: t for t in (int, float, str, bool, list, dict, set)}
"""The default factories of a ``defaultdict`` a state keeps as one (others: a dict)."""


def _mapping_kind(value: Mapping[Any, Any]) -> str | None:
    """What a resumed run rebuilds ``value`` as, beside a dict (None: a dict).

    A ``Counter`` or ``defaultdict`` read back as a dict would raise ``KeyError`` where
    the run never stopped counted on from 0; an ``OrderedDict`` would lack its methods.
    """
    if isinstance(value, collections.Counter):
        return "Counter"
    if isinstance(value, collections.OrderedDict):
        return "OrderedDict"
    if isinstance(value, collections.defaultdict):
        factory = value.default_factory
        name = "" if factory is None else getattr(factory, "__name__", "?")
        if factory is None or _FACTORIES.get(name) is factory:
            return f"defaultdict:{name}"
    return None


def _mapping(items: dict[Any, Any], node: Mapping[str, Any]) -> Any:
    """``items`` as the mapping type stored in ``node``'s ``kind``."""
    kind = node.get("kind")
    if kind is None:
        return items
    if kind == "Counter":
        return collections.Counter(items)
    if kind == "OrderedDict":
        return collections.OrderedDict(items)
    if isinstance(kind, str) and kind.startswith("defaultdict:"):
        name = kind.removeprefix("defaultdict:")
        if name == "" or name in _FACTORIES:
            return collections.defaultdict(_FACTORIES.get(name), items)
    raise StateError(f"unknown mapping in a stored state: {str(kind)[:40]!r}")


class _Writer:
    def __init__(self, types: Mapping[str, type] | None) -> None:
        self.arrays: dict[str, np.ndarray[Any, Any]] = {}
        self.types = types

    def tree(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | str | int):
            return value
        # Before float, which np.float64 is: read back as a float, it would scale a
        # float32 array to float32 where it scaled it to float64 (and a non-finite one's
        # repr, np.float64(nan), is no float's).
        if isinstance(value, np.generic):
            return {"__scalar__": self.array(np.asarray(value))}
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, np.ndarray):
            return {"__array__": self.array(value)}
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            name = _type_name(type(value))
            if self.types is not None and name not in self.types:
                raise StateError(
                    f"the aggregation state holds a {name} that the state its step's init() "
                    "returns does not: a resumed run rebuilds only the named tuple types of "
                    f"that state, so have init() return a {type(value).__name__} too "
                    "(its fields may be None)"
                )
            return {"__tuple__": name, "items": [self.tree(v) for v in value]}
        if isinstance(value, tuple):
            return {"__tuple__": None, "items": [self.tree(v) for v in value]}
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        if isinstance(value, Mapping):
            node = {"__dict__": [[self.tree(k), self.tree(v)] for k, v in value.items()]}
            kind = _mapping_kind(value)
            return node if kind is None else {**node, "kind": kind}
        if isinstance(value, set | frozenset):
            # Sorted, so equal sets store alike. Read back, a set iterates in Python's
            # order, not the one it had (strings hash differently in each process):
            # docs/strategies.md tells a step that needs an order to keep a list.
            items = sorted(value, key=repr)
            return {
                "__set__": [self.tree(v) for v in items],
                "frozen": isinstance(value, frozenset),
            }
        raise StateError(
            f"cannot store a {type(value).__name__} in a run's aggregation state: a step's "
            "state is built from tuples (named tuples included), lists, sets, dicts, NumPy "
            "arrays and scalars, numbers, strings and None"
        )

    def array(self, array: np.ndarray[Any, Any]) -> str:
        if array.dtype.kind not in "biuf":
            raise StateError(f"cannot store a {array.dtype} array in a run's aggregation state")
        key = str(len(self.arrays))
        # Native byte order (what safetensors gives back); np.require keeps 0-d arrays 0-d.
        native = array.astype(array.dtype.newbyteorder("="), copy=False)
        self.arrays[key] = np.require(native, requirements="C")
        return key


def dump_state(state: Any, types: Mapping[str, type] | None = None) -> bytes:
    """The bytes of an aggregation state: a safetensors file with the tree in its metadata.

    Args:
        state: Tuples, named tuples, lists, sets, mappings, NumPy arrays and scalars,
            numbers, strings and None, nested.
        types: The named tuple types :func:`load_state` will be able to rebuild
            (:func:`state_types` of the step's ``init`` state); None: any.

    Returns:
        Bytes :func:`load_state` turns back into an equal state.

    Raises:
        StateError: if the state holds anything else, or a named tuple not in ``types``.
    """
    writer = _Writer(types)
    tree = writer.tree(state)
    digest = _digest(tree, writer.arrays)
    meta = {_KEY: json.dumps({"format": _FORMAT, "tree": tree, "sha256": digest}, allow_nan=False)}
    return bytes(safetensors.numpy.save(writer.arrays, metadata=meta))


def _digest(tree: Any, arrays: Mapping[str, np.ndarray[Any, Any]]) -> str:
    """The SHA-256 of a state's tree and arrays (names, dtypes, shapes and bytes)."""
    sha = hashlib.sha256(json.dumps(tree, sort_keys=True, allow_nan=False).encode())
    for key in sorted(arrays):
        array = np.require(arrays[key], requirements="C")
        sha.update(f"\0{key}\0{array.dtype.str}\0{array.shape}\0".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def _parse(data: bytes) -> tuple[dict[str, np.ndarray[Any, Any]], Any]:
    """The arrays and the checked tree of stored state bytes."""
    try:
        arrays = safetensors.numpy.load(bytes(data))
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(bytes(data[8 : 8 + header_len]))
        meta = json.loads(header["__metadata__"][_KEY])
    except (
        safetensors.SafetensorError,
        ValueError,
        KeyError,
        TypeError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise StateError(f"not a stored aggregation state: {type(exc).__name__}: {exc}") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > _FORMAT:
        raise NewerFormatError(
            f"its aggregation state has format {fmt}, written by a newer covey than this one "
            f"(covey {covey_version()} reads formats {_FORMATS[0]} to {_FORMAT}): resume the "
            "run with the covey version that saved it"
        )
    if not isinstance(meta, dict) or meta.get("format") not in _FORMATS or "tree" not in meta:
        raise StateError("not a stored aggregation state (unknown format)")
    if meta["format"] >= 2:
        try:
            actual = _digest(meta.get("tree"), arrays)
        except (TypeError, ValueError) as exc:
            raise StateError(f"corrupt stored aggregation state: {exc}") from None
        if actual != meta.get("sha256"):
            raise StateError(
                "the stored aggregation state is damaged: its checksum does not match "
                f"(SHA-256 {actual}, recorded {meta.get('sha256')!r})"
            )
    return arrays, meta["tree"]


def check_state(data: bytes) -> None:
    """Check that ``data`` is stored state bytes whose checksum matches, without rebuilding it.

    Raises:
        StateError: naming what is wrong.
        NewerFormatError: the state is of a newer covey's format.
    """
    _parse(data)


def state_types(template: Any) -> dict[str, type]:
    """The named tuple types in ``template``: the only ones :func:`load_state` rebuilds.

    Args:
        template: A state the strategy builds itself (``aggregator.init(weights)``).

    Returns:
        Each type by its module and qualified name.

    Raises:
        StateError: if ``template`` itself could not be stored (a run refuses it
            before its first round).
    """
    types = _named_tuples(template, {})
    dump_state(template, types)
    return types


def _named_tuples(template: Any, found: dict[str, type]) -> dict[str, type]:
    if isinstance(template, tuple):
        if hasattr(template, "_fields"):
            found[_type_name(type(template))] = type(template)
        for item in template:
            _named_tuples(item, found)
    elif isinstance(template, list):
        for item in template:
            _named_tuples(item, found)
    elif isinstance(template, Mapping):
        for item in template.values():
            _named_tuples(item, found)
    return found


_OLD_FLOAT64 = "np.float64("
"""How covey stored a non-finite np.float64 before it kept NumPy scalars as such."""


def _non_finite(text: Any) -> float:
    """The non-finite float stored as ``text``: its repr (``nan``, ``inf``, ``-inf``)."""
    if isinstance(text, str) and text.startswith(_OLD_FLOAT64) and text.endswith(")"):
        return np.float64(text[len(_OLD_FLOAT64) : -1])
    return float(text)


def _rebuild(cls: type, items: list[Any]) -> Any:
    """The named tuple ``cls`` of the stored ``items``, naming a covey that stored more or fewer.

    A covey that adds a field to a step's state stores one item more, and one that
    lacks a field another has (without a default) stores one fewer: neither is damage.
    """
    fields: tuple[str, ...] = getattr(cls, "_fields", ())
    needed = len(fields) - len(getattr(cls, "_field_defaults", {}))
    if len(items) > len(fields):
        raise NewerFormatError(
            f"the stored aggregation state holds a {cls.__name__} of {len(items)} fields where "
            f"this covey's has {len(fields)}: it was saved by a newer covey than this one "
            f"(covey {covey_version()}); resume the run with the covey version that saved it"
        )
    if len(items) < needed:
        raise StateError(
            f"the stored aggregation state holds a {cls.__name__} of {len(items)} fields where "
            f"this covey's needs {needed}: it was saved by another covey version; resume "
            "the run with the covey version that saved it"
        )
    return cls(*items)


class _Reader:
    def __init__(self, arrays: Mapping[str, np.ndarray[Any, Any]], types: dict[str, type]) -> None:
        self.arrays = arrays
        self.types = types

    def tree(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__float__" in value:
            return _non_finite(value["__float__"])
        if "__array__" in value:
            return self.array(value["__array__"])
        if "__scalar__" in value:
            return self.array(value["__scalar__"])[()]
        if "__set__" in value:
            items = [self.tree(v) for v in value["__set__"]]
            return frozenset(items) if value.get("frozen") else set(items)
        if "__dict__" in value:
            return _mapping({self.tree(k): self.tree(v) for k, v in value["__dict__"]}, value)
        if "__tuple__" in value:
            items = [self.tree(v) for v in value["items"]]
            name = value["__tuple__"]
            if name is None:
                return tuple(items)
            cls = self.types.get(name)
            if cls is None:
                raise StateError(
                    f"the stored state holds a {name} this strategy does not use (its init() "
                    "makes none): the run was started with another aggregation step"
                )
            return _rebuild(cls, items)
        raise StateError(f"unknown entry in a stored state: {sorted(value)[:3]}")

    def array(self, key: Any) -> np.ndarray[Any, Any]:
        if key not in self.arrays:
            raise StateError(f"the stored state refers to a missing array {key!r}")
        return self.arrays[key]


def load_state(data: bytes, template: Any) -> Any:
    """The aggregation state :func:`dump_state` stored.

    Args:
        data: The stored bytes.
        template: A state built by the same strategy (``aggregator.init(weights)``);
            only the named tuple types it contains can be rebuilt.

    Returns:
        The state.

    Raises:
        StateError: if ``data`` is not a stored state or does not fit the strategy.
        NewerFormatError: a newer covey stored it (another format, or a named tuple
            with more fields than this covey's).
    """
    arrays, tree = _parse(data)
    try:
        return _Reader(arrays, _named_tuples(template, {})).tree(tree)
    except (StateError, NewerFormatError):
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise StateError(f"corrupt stored aggregation state: {type(exc).__name__}: {exc}") from None
