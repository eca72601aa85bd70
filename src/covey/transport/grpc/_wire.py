"""Safe encodings of tasks and results for transports that cross a trust boundary.

Nothing that arrives from the network is unpickled. Small structured data
(configs, metrics, payloads) is JSON, with bytes and non-finite floats tagged;
arrays travel as codec-encoded weights next to the JSON. What a peer sends is
read within caps by :mod:`._wireread`, whose names this module also offers.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.core._messages import EvaluateResult, FitResult
from covey.core._weights import Weights
from covey.transport.grpc._wireread import ARRAY_KINDS as ARRAY_KINDS
from covey.transport.grpc._wireread import WireError as WireError
from covey.transport.grpc._wireread import WireLimits as WireLimits
from covey.transport.grpc._wireread import at as _at
from covey.transport.grpc._wireread import loads as loads


def _check_length(value: Any, max_string: int | None) -> None:
    """Refuse a string or bytes value a peer would refuse as longer than ``max_string``."""
    if max_string is None:
        return
    if isinstance(value, str) and len(value) > max_string:
        raise WireError(
            f"a string of {len(value)} characters exceeds the limit of {max_string} characters"
        )
    if isinstance(value, bytes | bytearray | memoryview):
        size = memoryview(value).nbytes
        if 4 * ((size + 2) // 3) > max_string:
            raise WireError(
                f"a bytes value of {size} bytes ({4 * ((size + 2) // 3)} characters of base64) "
                f"exceeds the limit of {max_string} characters"
            )


class _Elements:
    """The elements of the arrays one message holds so far, against a peer's cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    def add(self, array: np.ndarray[Any, Any]) -> None:
        """Count ``array``; refuse it when the message's arrays pass the cap with it."""
        if array.dtype.kind not in ARRAY_KINDS:
            raise WireError(
                f"an array of dtype {array.dtype} cannot be sent (only bool, integer and "
                "float arrays)"
            )
        self.seen += array.size
        if self.seen > self.limit:
            raise WireError(
                f"an array of {array.size} elements exceeds the limit of {self.limit} elements"
                if self.seen == array.size
                else f"the arrays reach {self.seen} elements with this one of {array.size}, "
                f"over the limit of {self.limit} elements"
            )


def _array_json(array: np.ndarray[Any, Any], elements: _Elements | None) -> dict[str, Any]:
    if elements is not None:
        elements.add(array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # JSON has no NaN
        raise WireError(
            f"an array of {array.size} elements holds NaN or infinity, which JSON has no "
            "numbers for (send finite values, or a non-finite one as a float metric of its own)"
        )
    return {"__array__": array.tolist(), "dtype": array.dtype.str}


def _scalar(value: np.generic) -> Any:
    """A NumPy scalar as the Python value it holds (a long double as a float)."""
    item = value.item()
    if isinstance(item, np.generic):  # a long double's item() is itself: no recursion
        if item.dtype.kind != "f":
            raise WireError(f"cannot send a value of type {type(value).__name__}")
        return float(item)  # as weighted_metrics takes it
    return item


def _to_json(value: Any, max_string: int | None = None, elements: _Elements | None = None) -> Any:
    _check_length(value, max_string)
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):  # np.float64 too, whose repr is np.float64(nan): no tag
        return value if math.isfinite(value) else {"__float__": repr(float(value))}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, np.generic):
        return _to_json(_scalar(value), max_string, elements)
    if isinstance(value, np.ndarray):
        return _array_json(value, elements)
    if isinstance(value, Mapping):
        return _mapping_json(value, max_string, elements)
    if isinstance(value, list | tuple):
        if all(type(v) is str for v in value) and (
            max_string is None or not value or max(map(len, value)) <= max_string
        ):  # the usual list of names: as the loop below gives them, at once
            return list(value)
        items: list[Any] = []
        for i, v in enumerate(value):
            try:
                items.append(_to_json(v, max_string, elements))
            except WireError as exc:
                raise _at(exc, f"[{i}]") from None
        return items
    raise WireError(f"cannot send a value of type {type(value).__name__} over the network")


def _mapping_json(value: Mapping[Any, Any], max_string: int | None, elements: Any) -> Any:
    out: dict[str, Any] = {}
    for k, v in value.items():
        if max_string is not None and len(str(k)) > max_string:  # named by its mapping
            size = len(str(k))
            raise WireError(f"a name of {size} characters exceeds the limit of {max_string}")
        try:
            out[str(k)] = _to_json(v, max_string, elements)
        except WireError as exc:
            raise _at(exc, repr(str(k))) from None
    return out


def dumps(value: Any) -> bytes:
    """JSON bytes for ``value`` (scalars, bytes, small arrays, dicts, lists)."""
    return json.dumps(_to_json(value), separators=(",", ":"), allow_nan=False).encode()


def dumps_within(value: Any, limits: WireLimits) -> bytes:
    """:func:`dumps`, refusing what a peer reading it with ``limits`` would refuse for size.

    A string or ``bytes`` value over ``limits.max_string`` characters, an array
    whose elements take the message's arrays over ``limits.max_elements``, or an
    array of a dtype a peer refuses is refused before it is encoded, naming
    where it is; a value nested deeper than ``limits.max_depth`` is refused
    naming its top-level key; JSON over ``limits.max_bytes`` is refused before it is sent,
    naming the largest entry of a mapping and that entry's size.

    Raises:
        WireError: naming the place, the size and the limit.

    Example:
        >>> dumps_within({"a": 1, "b": "xyz"}, WireLimits())
        b'{"a":1,"b":"xyz"}'
        >>> try:
        ...     dumps_within({"a": "x" * 9, "b": 2}, WireLimits(max_bytes=16))
        ... except WireError as exc:
        ...     print(exc)
        23 bytes of JSON exceed the limit of 16; the largest entry takes 11 bytes (at 'a')
    """
    try:
        tree = _to_json(value, limits.max_string, _Elements(limits.max_elements))
    except RecursionError:
        raise WireError(f"nested deeper than {limits.max_depth} levels, the limit") from None
    _check_depth(tree, limits.max_depth)
    text = json.dumps(tree, separators=(",", ":"), allow_nan=False)
    if len(text) <= limits.max_bytes:
        return text.encode()
    message = f"{len(text)} bytes of JSON exceed the limit of {limits.max_bytes}"
    if isinstance(tree, dict) and tree:
        # Each entry's share of the text, to name the largest.
        sizes = {key: len(json.dumps(item, separators=(",", ":"))) for key, item in tree.items()}
        largest = max(sizes, key=sizes.__getitem__)
        message += f"; the largest entry takes {sizes[largest]} bytes (at {largest!r})"
    raise WireError(message)


def _check_depth(tree: Any, max_depth: int) -> None:
    """Refuse a JSON tree a peer's reader would find nested deeper than ``max_depth``.

    Depths are counted as :class:`._wireread._Reader` counts them: the root at 0, a tagged
    bytes or float value as one level, an array's numbers ``ndim + 1`` below it.
    A mapping's too-deep entry is named by its key.
    """
    entries = tree.items() if isinstance(tree, dict) and not _tagged(tree) else [(None, tree)]
    for key, item in entries:
        stack = [(item, 0 if key is None else 1)]
        while stack:
            node, depth = stack.pop()
            array = isinstance(node, dict) and node.keys() == {"__array__", "dtype"}
            if array:  # its numbers lie ndim + 1 levels below it
                data, depth = node["__array__"], depth + 1
                while isinstance(data, list) and data:
                    data, depth = data[0], depth + 1
            if depth > max_depth:
                where = "" if key is None else f" (at {key!r})"
                raise WireError(f"nested deeper than {max_depth} levels, the limit{where}")
            if isinstance(node, dict) and not array and not _tagged(node):
                stack.extend((v, depth + 1) for v in node.values())
            elif isinstance(node, list):
                stack.extend((v, depth + 1) for v in node)


def _tagged(node: dict[str, Any]) -> bool:
    """Whether ``node`` is a tagged bytes or float value (one level, as a peer reads it)."""
    return len(node) == 1 and ("__bytes__" in node or "__float__" in node)


MAX_ERROR_CHARS = 16 * 1024
"""The most characters of a peer's error text kept (a failed task's traceback)."""


def clipped_error(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    r"""A peer's error text cut to ``limit`` characters: its start and its end, saying so.

    The end holds what went wrong (a traceback's last line, covey's hint); the
    start where. Kept whole, a peer's megabytes of error would be stored in the
    run's history and database, and logged, every round.

    Example:
        >>> clipped_error("a" * 10 + "b" * 10, limit=8)
        'aaaa\n[... 12 characters left out ...]\nbbbb'
    """
    if len(text) <= limit:
        return text
    half = limit // 2
    left_out = len(text) - 2 * half
    return f"{text[:half]}\n[... {left_out} characters left out ...]\n{text[-half:]}"


def flatten_extras(extras: Mapping[str, Weights]) -> dict[str, Any]:
    """Named weights mappings as one flat mapping (for the codec), keys ``[extra, name]``."""
    return {
        json.dumps([extra, name]): array
        for extra, weights in extras.items()
        for name, array in weights.items()
    }


def unflatten_extras(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Undo :func:`flatten_extras`; raises :class:`WireError` on keys it did not make."""
    out: dict[str, dict[str, Any]] = {}
    for key, array in flat.items():
        try:
            pair = json.loads(key)
        except (ValueError, TypeError, RecursionError):  # RecursionError: nested too deep
            raise WireError(f"malformed extra array name {key!r:.200}") from None
        if (
            type(pair) is not list
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], str)
        ):
            raise WireError(f"malformed extra array name {key!r:.200}")
        arrays = out.setdefault(pair[0], {})
        if pair[1] in arrays:  # two spellings of one name's JSON
            raise WireError(f"extra array {pair[1]!r:.100} of {pair[0]!r:.100} comes twice")
        arrays[pair[1]] = array
    return out


def is_extras(value: Any) -> bool:
    """Whether ``value`` is a non-empty mapping of names to weights (arrays by name)."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(
            isinstance(k, str)
            and isinstance(v, Mapping)
            and all(isinstance(a, np.ndarray) for a in v.values())
            for k, v in value.items()
        )
    )


def result_to_wire(result: Any, limits: WireLimits | None = None) -> tuple[bytes, Weights | None]:
    """Split a task's result into JSON bytes and optional weights to send as chunks.

    With ``limits`` (those the reader applies), a metric or value the reader would
    refuse for its size is refused here, naming where it is (``'metrics'.'blob'``),
    instead of reaching the reader as an unreadable reply.
    """
    head, arrays = result_head(result)
    return (dumps(head) if limits is None else dumps_within(head, limits)), arrays


def result_head(result: Any) -> tuple[Any, Weights | None]:
    """The JSON part of a task's result as :func:`result_to_wire` sends it, and its arrays."""
    if isinstance(result, FitResult):
        form = "weights" if result.weights is not None else "delta"
        arrays = result.weights if result.weights is not None else result.delta
        head = {
            "type": "fit",
            "form": form,
            "num_examples": result.num_examples,
            "metrics": result.metrics,
        }
        return head, arrays
    if isinstance(result, EvaluateResult):
        head = {
            "type": "evaluate",
            "loss": result.loss,
            "num_examples": result.num_examples,
            "metrics": result.metrics,
        }
        return head, None
    if isinstance(result, Mapping) and any(isinstance(v, np.ndarray) for v in result.values()):
        # Large arrays in a dict result (e.g. a masked vector) travel as chunks, not JSON.
        arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
        rest = {k: v for k, v in result.items() if k not in arrays}
        return {"type": "value", "value": rest, "arrays": sorted(arrays)}, arrays
    return {"type": "value", "value": result}, None


def result_from_wire(
    data: bytes,
    weights: Weights | None,
    extras: Mapping[str, Weights] | None = None,
    limits: WireLimits | None = None,
) -> Any:
    """Rebuild a result from :func:`result_to_wire`'s output; raises :class:`WireError`."""
    head = loads(data, limits)
    if not isinstance(head, dict) or "type" not in head:
        raise WireError("a reply's result has no type")
    try:
        kind = head["type"]
        if kind == "fit":
            if weights is None:
                raise WireError("a fit result came without weights")
            if head["form"] == "weights":
                return FitResult(
                    weights=weights,
                    num_examples=head["num_examples"],
                    metrics=head["metrics"],
                    extras=dict(extras or {}),
                )
            if head["form"] == "delta":
                return FitResult(
                    delta=weights,
                    num_examples=head["num_examples"],
                    metrics=head["metrics"],
                    extras=dict(extras or {}),
                )
            raise WireError(f"unknown fit result form {head['form']!r}")
        if kind == "evaluate":
            return EvaluateResult(
                loss=head["loss"], num_examples=head["num_examples"], metrics=head["metrics"]
            )
        if kind == "value":
            names = head.get("arrays")
            if names is None:
                return head.get("value")
            value = head.get("value")
            if not isinstance(value, dict) or weights is None or sorted(weights) != names:
                raise WireError("a value result's arrays do not match its header")
            return {**value, **weights}
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"malformed {head.get('type')} result: {exc}") from None
    raise WireError(f"unknown result type {kind!r}")
