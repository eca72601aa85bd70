"""Reading a peer's JSON message within caps on its size, nesting, strings and arrays.

The decoding half of :mod:`._wire`: :func:`loads` checks what a message
declares against :class:`WireLimits` before anything is allocated for it, and
turns the tagged values :func:`._wire.dumps` writes (bytes, non-finite floats,
arrays) back into Python values.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from covey.core._weights import WeightsSpec

__all__ = ["ARRAY_KINDS", "WireError", "WireLimits", "loads"]


class WireError(ValueError):
    """A message that cannot be decoded into a task or a result."""


@dataclass(frozen=True)
class WireLimits:
    """Caps on what one JSON message from a peer may declare, checked before allocating.

    Args:
        max_bytes: Most bytes of JSON text in one message.
        max_depth: Deepest nesting of lists and objects (arrays included).
        max_string: Longest string (or base64 text of ``bytes``), in characters.
        max_elements: Most elements of one embedded array (and of all arrays together).
    """

    max_bytes: int = 4 * 1024 * 1024
    max_depth: int = 32
    max_string: int = 1024 * 1024
    max_elements: int = 1 << 20

    @classmethod
    def for_spec(cls, spec: WeightsSpec | None) -> WireLimits:
        """Limits for a federation training ``spec``: arrays no larger than the model's.

        Small arrays in configs and results (a histogram, a per-class count) stay
        allowed; a declared array larger than the whole model is refused.
        """
        if spec is None:
            return cls()
        elements = sum(math.prod(shape) for shape in spec.shapes)
        return cls(max_elements=max(4096, min(elements, cls.max_elements)))


#: The dtype kinds an array in a JSON message may have: bool, integers, floats.
ARRAY_KINDS = "biuf"


class _Reader:
    """Decodes one message's JSON tree, refusing whatever exceeds ``limits``."""

    def __init__(self, limits: WireLimits) -> None:
        self.limits = limits
        self.elements = 0

    def value(self, value: Any, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise WireError(f"message nested deeper than {self.limits.max_depth} levels")
        if isinstance(value, str):
            self.string(value)
            return value
        if isinstance(value, dict):
            return self.mapping(value, depth)
        if isinstance(value, list):
            items = []
            for index, item in enumerate(value):
                try:
                    items.append(self.value(item, depth + 1))
                except WireError as exc:
                    raise at(exc, f"[{index}]") from None
            return items
        return value

    def string(self, text: str) -> None:
        if len(text) > self.limits.max_string:
            raise WireError(
                f"a string of {len(text)} characters exceeds the limit of {self.limits.max_string}"
            )

    def mapping(self, value: dict[str, Any], depth: int) -> Any:
        if "__bytes__" in value and len(value) == 1:
            text = value["__bytes__"]
            if not isinstance(text, str):
                raise WireError("a bytes value is not base64 text")
            self.string(text)
            return base64.b64decode(text, validate=True)
        if "__float__" in value and len(value) == 1:
            text = value["__float__"]
            if text not in ("nan", "inf", "-inf"):
                raise WireError(f"a tagged float must be nan, inf or -inf, not {text!r:.40}")
            return float(text)
        if "__array__" in value and len(value) == 2 and "dtype" in value:
            return self.array(value["__array__"], value["dtype"], depth)
        out = {}
        for key, item in value.items():
            self.string(key)
            try:
                out[key] = self.value(item, depth + 1)
            except WireError as exc:
                raise at(exc, f"{key!r:.60}") from None
        return out

    def array(self, data: Any, dtype_text: Any, depth: int) -> np.ndarray[Any, Any]:
        if not isinstance(dtype_text, str) or len(dtype_text) > 32:
            raise WireError(f"an array's dtype must be a short string, not {dtype_text!r:.40}")
        try:
            dtype = np.dtype(dtype_text)
        except (TypeError, ValueError, SyntaxError):  # NumPy parses "," with ast
            raise WireError(f"unknown array dtype {dtype_text!r}") from None
        if dtype.kind not in ARRAY_KINDS:
            raise WireError(
                f"array dtype {dtype_text!r} is not allowed (only bool, integer and float arrays)"
            )
        self.elements += self.count(data, depth + 1)
        if self.elements > self.limits.max_elements:
            raise WireError(
                f"arrays of {self.elements} elements exceed the limit of {self.limits.max_elements}"
            )
        if dtype.kind != "f":
            return _exact(data, dtype)
        try:
            with np.errstate(over="ignore"):  # a value beyond the dtype's range: refused below
                array = np.asarray(data, dtype=dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise WireError(f"malformed {dtype} array: {exc}") from None
        if np.isinf(array).any():  # what dumps never writes (NaN: named with its
            raise WireError(  # path by the checks of a config or a result)
                f"a {dtype} array holds a value that is not a finite {dtype} "
                "(beyond its range, or infinite)"
            )
        return array

    def count(self, data: Any, depth: int) -> int:
        if depth > self.limits.max_depth:
            raise WireError(f"message nested deeper than {self.limits.max_depth} levels")
        if isinstance(data, list):
            return sum(self.count(v, depth + 1) for v in data)
        if isinstance(data, bool | int | float):
            return 1
        raise WireError(f"an array holds a {type(data).__name__}, not a number")


def _exact(data: Any, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """``data`` as a bool or integer array of ``dtype``, refusing what it cannot hold as it is.

    NumPy would make ``1.5`` the integer ``1`` and any number ``True``: ``data`` is
    read as the array its JSON makes (bools, integers or floats) and only an
    array of that kind is taken, converted if it keeps every value.
    """
    try:
        found = np.asarray(data)
    except (TypeError, ValueError) as exc:
        raise WireError(f"malformed {dtype} array: {exc}") from None
    if found.dtype == dtype:  # the usual int64 or bool array: taken as it is
        return found
    if found.size == 0:  # JSON's [] reads as float64
        return found.astype(dtype)
    if dtype.kind == "b":
        raise WireError("a bool array holds a number, where only true and false belong")
    if found.dtype.kind in "biu":
        array = found.astype(dtype)
        if (array == found).all():
            return array
    elif dtype.kind == "u" and found.dtype.kind == "f" and _no_floats(data):
        try:  # integers on both sides of 2**63 read as float64: uint64's own, or beyond it
            return np.asarray(data, dtype=dtype)
        except OverflowError:
            pass
    raise WireError(
        f"an integer array ({dtype}) holds a number {dtype} cannot carry: a float "
        "(1.5, or 2.0), or an integer beyond its range"
    )


def _no_floats(data: Any) -> bool:
    """Whether nested lists ``data`` hold no float (for the rare uint64 array read as float64)."""
    return not any(type(v) is float for v in np.asarray(data, dtype=object).ravel().tolist())


def at(exc: WireError, step: str) -> WireError:
    """``exc`` with ``step`` (a key or an index) put in front of the place it names."""
    message, where = str(exc), ""
    if message.endswith(")") and " (at " in message:
        message, where = message[:-1].rsplit(" (at ", 1)
    where = step + ("" if not where else where if where.startswith("[") else f".{where}")
    return WireError(f"{message} (at {where})")


def loads(data: bytes, limits: WireLimits | None = None) -> Any:
    """The value :func:`dumps` encoded; raises :class:`WireError` on bad or oversized input.

    Args:
        data: The JSON bytes a peer sent.
        limits: Caps on sizes and nesting (default :class:`WireLimits`).

    Returns:
        The decoded value; arrays are bool, integer or float NumPy arrays.
    """
    if not data:
        return None
    limits = limits or WireLimits()
    if len(data) > limits.max_bytes:
        raise WireError(f"a message of {len(data)} bytes exceeds the limit of {limits.max_bytes}")
    try:
        tree = json.loads(data)
    except RecursionError:
        raise WireError(f"message nested deeper than {limits.max_depth} levels") from None
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise WireError(f"malformed JSON in message: {exc}") from None
    try:
        return _Reader(limits).value(tree, 0)
    except RecursionError:
        raise WireError(f"message nested deeper than {limits.max_depth} levels") from None
    except WireError:
        raise
    except (ValueError, TypeError) as exc:
        raise WireError(f"malformed value in message: {exc}") from None
