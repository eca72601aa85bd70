"""Whether a task's result, or a task's config, can be sent, checked without encoding it.

One set of limits holds for a client's result wherever it runs:
:func:`result_limits`, those a deployed server reads results with (at most
4 MiB of JSON, arrays no larger than the model; see
:meth:`~covey.transport.grpc._wire.WireLimits.for_spec`). A deployed client
checks its result against them before sending it, and every simulation backend
(inline, process, Ray) checks it against them too, so a client fails alike on
every backend and over the network (a metric of 2 million characters, say).
A result is first measured, sizes only: lengths of strings and names, elements
and dimensions of arrays, and an upper bound of its JSON's size. Only one that
might pass a limit is encoded, by the encoder that sends it
(:func:`~covey.transport.grpc._wire.dumps_within`), which then gives the
verdict and the error: the same on every backend by construction.

A task's config and JSON payload are checked the same way (:func:`check_config`,
:func:`check_payload`), against the caps a deployed server sends a task within
(:func:`~covey.transport.grpc._frames.task_header`).

The bytes of a reply's arrays are capped too, by the model of the task it answers
(:func:`reply_bytes_limit`: about four times the model, 64 MiB for a task that
carries none). A deployed server states the cap in each task's header, and its
client sends a reply over it as its failure (:func:`reply_bytes_error`) instead
of being dropped for it; every simulation backend refuses a task kind's result of
one's own (:func:`check_reply_bytes`), and a fit result whose update and extras
pass the cap (:func:`check_fit_bytes`), with the same error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.compress._kernels import index_dtype
from covey.core import _codec
from covey.core._messages import EvaluateResult, FitResult
from covey.core._weights import Weights, WeightsError, WeightsSpec
from covey.transport.grpc._wire import (
    ARRAY_KINDS,
    WireLimits,
    dumps_within,
    flatten_extras,
    result_head,
)

__all__ = [
    "NO_MODEL_REPLY_BYTES",
    "check_config",
    "check_fit_bytes",
    "check_payload",
    "check_reply_bytes",
    "check_result",
    "reply_bytes_error",
    "reply_bytes_limit",
    "reply_limit",
    "result_limits",
    "sparse_bytes",
]

#: The most bytes of arrays a reply to a task that carries no model may announce.
NO_MODEL_REPLY_BYTES = 64 * 1024 * 1024

#: Most characters of JSON for one number of an array (``-2.2250738585072014e-308``)
#: and the comma after it.
_NUMBER = 25
#: Most characters of JSON for a result's head besides its metrics.
_HEAD = 256


def result_limits(model: Weights | None) -> WireLimits:
    """The limits on the result of a task that carried ``model`` (its weights, if any).

    Those a deployed server reads the result with: :class:`WireLimits`' caps, and
    arrays no larger than the model's (:meth:`WireLimits.for_spec`). A task that
    carried no weights gets the caps alone.
    """
    if not model:
        return WireLimits()
    sized = _sized(model)
    return WireLimits() if sized is None else sized[1]


def reply_limit(model_bytes: int, spec: WeightsSpec) -> int:
    """The most bytes a reply may declare, for a model of ``model_bytes`` encoded.

    A reply carries an update and at most one model of extras (SCAFFOLD's). A
    compressed update takes up to three times a weight's bytes (top-k of a float16
    array: a uint32 index and a value per entry), five times for an array of more
    than 2**32 values (a uint64 index), in up to three arrays per weight, each
    aligned to 64 bytes and named in the header by a key holding the weight's
    name: for a model of many small arrays that is more than the arrays' bytes.
    """
    names = sum(len(name) for name in spec.names)
    # 12 header characters per name character at most: a \uXXXX escape, escaped again.
    per_array = 3 * (2 * 64 + 128) * len(spec.names) + 3 * 12 * names
    return max(4 * model_bytes, sparse_bytes(spec) + model_bytes) + per_array + 1024 * 1024


def sparse_bytes(spec: WeightsSpec) -> int:
    """The bytes of the largest top-k update of a model: an index and a value per entry.

    Top-k at a fraction near 1 sends every float entry with its index, as its
    integer arrays whole: for a float16 array of more than 2**32 values (uint64
    indices) five times the array's bytes, more than the ``4 * model`` that
    bounds a reply otherwise.
    """
    total = 0
    for shape, dtype in zip(spec.shapes, spec.dtypes, strict=True):
        size = math.prod(shape)
        index = index_dtype(size).itemsize if dtype.kind == "f" else 0
        total += size * (dtype.itemsize + index)
    return total


def reply_bytes_limit(model: Weights | None) -> int:
    """The most bytes of arrays a reply to a task that carried ``model`` may announce.

    :func:`reply_limit` of the model encoded, as a deployed server caps the reply
    (and states in the task's header); :data:`NO_MODEL_REPLY_BYTES` for a task
    without a model.
    """
    if not model:
        return NO_MODEL_REPLY_BYTES
    sized = _sized(model)
    return NO_MODEL_REPLY_BYTES if sized is None else sized[2]


#: The layout of the model last sized by :func:`_sized`, with its limits.
_last: tuple[WeightsSpec, WireLimits, int] | None = None


def _sized(model: Weights) -> tuple[WeightsSpec, WireLimits, int] | None:
    """``model``'s spec, :func:`result_limits` and :func:`reply_bytes_limit`; None if no model.

    Both depend on the model's layout alone (names in order, shapes, dtypes), which
    every reply of a round, and mostly of a run, shares: a model laid out as the
    last one sized takes its limits, after a comparison cheaper than laying it out.
    """
    global _last
    last = _last
    if last is not None and _same_layout(model, last[0]):
        return last
    try:
        spec = WeightsSpec.of(model)
    except WeightsError:  # no model to size arrays by; the round loop refuses it anyway
        return None
    last = _last = (
        spec,
        WireLimits.for_spec(spec),
        reply_limit(_codec.encoded_size(model, spec), spec),
    )
    return last


def _same_layout(model: Weights, spec: WeightsSpec) -> bool:
    """Whether ``WeightsSpec.of(model)`` is ``spec``: plain arrays under its names, in order."""
    return spec.describes(model)


def reply_bytes_error(kind: str, size: int, most: int) -> str:
    """The failure of a reply to a ``kind`` task whose arrays take ``size`` bytes, over ``most``."""
    return (
        f"cannot send the result: its arrays take {size} bytes, more than the limit of "
        f"{most} bytes of arrays in a reply to its {kind} task (about four times the "
        "task's model, 64 MiB for a task that carries none)"
    )


#: The layout of the arrays of the last reply :func:`check_reply_bytes` measured, with
#: :func:`~covey.core._codec.encoded_size_at_most` of them (it depends on the layout alone).
_last_reply: tuple[WeightsSpec, int] | None = None


def check_reply_bytes(
    kind: str, result: Any, model: Weights | None, head: tuple[Any, Weights | None] | None = None
) -> str | None:
    """:func:`reply_bytes_error` if the arrays of ``result`` (its own kind's) pass their cap.

    ``result`` is a task kind's of one's own: a mapping whose NumPy arrays travel
    encoded, beside its JSON. A fit result's arrays match the model (the round
    loop refuses others), far below the cap. Arrays the codec cannot encode (a
    string or complex dtype, a name not a string) fail as a deployed client's
    do: ``cannot send the result: weight 'x' has dtype complex128; ...``.
    ``head`` is ``result_head(result)`` if the caller has it. Arrays laid out as
    the last reply's (every client of a round sends alike) are not laid out again.
    """
    global _last_reply
    arrays = (result_head(result) if head is None else head)[1]
    if not arrays:
        return None
    most = reply_bytes_limit(model)
    try:
        last = _last_reply
        if last is None or not last[0].describes(arrays):
            spec = WeightsSpec.of(arrays)  # what encoding it to send raises first
            last = _last_reply = (spec, _codec.encoded_size_at_most(arrays))
        if last[1] <= most:  # the usual reply: well within
            return None
        size = _codec.encoded_size(arrays, last[0])
    except WeightsError as exc:
        return f"cannot send the result: {exc}"
    except Exception:  # noqa: BLE001 - refused where it is encoded, with its own error
        return None
    return reply_bytes_error(kind, size, most) if size > most else None


def check_fit_bytes(kind: str, result: FitResult, model: Weights | None) -> str | None:
    """:func:`reply_bytes_error` if a fit result's update and extras pass their cap together.

    A deployed client sends the update and the extras as two encoded blobs, and
    the server takes at most :func:`reply_bytes_limit` bytes of both: an update
    matches the model, but a result may carry any number of model-sized extras.
    Arrays the codec cannot encode are left to the check that sends them. The
    encodings are laid out only when their bound (no header written) passes the cap.
    """
    arrays = result.weights if result.delta is None else result.delta
    most = reply_bytes_limit(model)
    try:
        update = arrays or {}
        extras = flatten_extras(result.extras) if result.extras else None
        at_most = _codec.encoded_size_at_most(update)
        if extras is not None:
            at_most += _codec.encoded_size_at_most(extras)
        if at_most <= most:  # the usual result: well within (or not encodable: None too)
            return None
        size = _codec.encoded_size(update)
        if extras is not None:
            size += _codec.encoded_size(extras)
    except Exception:  # noqa: BLE001 - not encodable: refused where it is encoded
        return None
    return reply_bytes_error(kind, size, most) if size > most else None


class _MayRefuse(Exception):
    """Raised by the measuring when the encoder might refuse the value."""


def check_result(
    result: Any, limits: WireLimits, head: tuple[Any, Weights | None] | None = None
) -> None:
    """Refuse ``result`` as :func:`~covey.transport.grpc._wire.result_to_wire` would.

    ``head`` is ``result_head(result)`` if the caller has it (None: worked out here).

    Raises:
        WireError: the encoder's own error, naming the place, the size and the limit.
    """
    try:
        if type(result) is FitResult or type(result) is EvaluateResult:
            if not result.metrics:  # the usual case: nothing of a client's size to send
                return
            size = _metrics(result.metrics, limits)
        else:
            if head is None:
                head = result_head(result)
            size = _HEAD + _measure(head[0], 0, limits, [0])
    except _MayRefuse:
        size = limits.max_bytes + 1
    if size > limits.max_bytes:
        dumps_within((result_head(result) if head is None else head)[0], limits)


def check_config(config: Mapping[str, Any], limits: WireLimits) -> None:
    """Refuse ``config`` as :func:`~covey.transport.grpc._frames.task_header` would.

    A config that may pass a limit, or holds a value of a type JSON has not, is
    encoded to give the verdict (the usual small config of numbers is only measured).

    Raises:
        WireError: the encoder's own error, naming the entry, the size and the limit.
    """
    _check_json(config, limits)


def check_payload(payload: Any, limits: WireLimits) -> None:
    """Refuse a task's JSON ``payload`` as :func:`~covey.transport.grpc._frames.task_header` would.

    As :func:`check_config`; a payload of named arrays
    (:func:`~covey.transport.grpc._wire.is_extras`) travels as arrays, not JSON,
    and is the caller's to leave out.

    Raises:
        WireError: the encoder's own error, naming the entry, the size and the limit.
    """
    _check_json(payload, limits)


def _check_json(value: Any, limits: WireLimits) -> None:
    """Measure ``value`` as JSON; encode it for the verdict only if it may pass a limit."""
    try:
        size = _measure(value, 0, limits, [0])
    except _MayRefuse:
        size = limits.max_bytes + 1
    if size > limits.max_bytes:
        dumps_within(dict(value) if isinstance(value, Mapping) else value, limits)


def _metrics(metrics: dict[str, Any], limits: WireLimits) -> int:
    """:func:`_measure` of a result's metrics (an entry of its head), floats measured at once."""
    longest = limits.max_string
    total, elements = _HEAD, [0]
    for name, value in metrics.items():
        if len(name) > longest:
            raise _MayRefuse
        if type(value) is float:  # the usual metric
            total += 12 * len(name) + 28
        else:
            total += 12 * len(name) + 4 + _measure(value, 2, limits, elements)
    return total


def _measure(value: Any, depth: int, limits: WireLimits, elements: list[int]) -> int:
    """An upper bound of ``value``'s JSON characters at ``depth``; :class:`_MayRefuse` if over.

    ``elements`` holds the count of array elements met so far.
    """
    if depth > limits.max_depth:
        raise _MayRefuse
    if value is None or isinstance(value, bool | float):
        return 24  # a float's repr, or a tagged non-finite one
    if isinstance(value, int):
        return value.bit_length() // 3 + 2  # its digits and sign
    if isinstance(value, str):
        return _text(len(value), limits)
    if isinstance(value, bytes | bytearray | memoryview):
        size = memoryview(value).nbytes
        return _text(4 * ((size + 2) // 3), limits) + 16  # base64, tagged
    if isinstance(value, np.ndarray | np.generic):
        return _array(value, depth, limits, elements)
    if isinstance(value, Mapping):
        total = 2
        for key, item in value.items():
            total += _text(len(str(key)), limits) + 2 + _measure(item, depth + 1, limits, elements)
        return total
    if isinstance(value, list | tuple):
        if value and all(type(item) is str for item in value):  # a list of names, at once
            if depth + 1 > limits.max_depth or max(map(len, value)) > limits.max_string:
                raise _MayRefuse
            return 2 + 12 * sum(map(len, value)) + 3 * len(value)
        return 2 + sum(_measure(item, depth + 1, limits, elements) + 1 for item in value)
    raise _MayRefuse  # no JSON value: the encoder names its type


def _text(length: int, limits: WireLimits) -> int:
    """The bound of a JSON string of ``length`` characters (each at most a surrogate pair)."""
    if length > limits.max_string:
        raise _MayRefuse
    return 12 * length + 2


def _array(value: Any, depth: int, limits: WireLimits, elements: list[int]) -> int:
    if value.dtype.kind not in ARRAY_KINDS:
        raise _MayRefuse
    if isinstance(value, np.generic):
        return 24
    elements[0] += value.size
    if elements[0] > limits.max_elements or depth + 1 + value.ndim > limits.max_depth:
        raise _MayRefuse
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise _MayRefuse
    lists, count = 0, 1
    for dim in value.shape[:-1]:  # the nested lists of tolist(): 1, then one per row...
        lists += count
        count *= dim
    lists += count if value.ndim else 0
    return 64 + _NUMBER * int(value.size) + 3 * lists
