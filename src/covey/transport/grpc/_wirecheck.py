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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.core._messages import EvaluateResult, FitResult
from covey.core._weights import Weights, WeightsError, WeightsSpec
from covey.transport.grpc._wire import ARRAY_KINDS, WireLimits, dumps_within, result_head

__all__ = ["check_config", "check_payload", "check_result", "result_limits"]

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
    try:
        spec = WeightsSpec.of(model)
    except WeightsError:  # no model to size arrays by; the round loop refuses it anyway
        return WireLimits()
    return WireLimits.for_spec(spec)


class _MayRefuse(Exception):
    """Raised by the measuring when the encoder might refuse the value."""


def check_result(result: Any, limits: WireLimits) -> None:
    """Refuse ``result`` as :func:`~covey.transport.grpc._wire.result_to_wire` would.

    Raises:
        WireError: the encoder's own error, naming the place, the size and the limit.
    """
    try:
        if type(result) is FitResult or type(result) is EvaluateResult:
            if not result.metrics:  # the usual case: nothing of a client's size to send
                return
            size = _metrics(result.metrics, limits)
        else:
            size = _HEAD + _measure(result_head(result)[0], 0, limits, [0])
    except _MayRefuse:
        size = limits.max_bytes + 1
    if size > limits.max_bytes:
        dumps_within(result_head(result)[0], limits)


def check_config(config: Mapping[str, Any], limits: WireLimits) -> None:
    """Refuse ``config`` as :func:`~covey.transport.grpc._frames.task_header` would.

    A config that may pass a limit, or holds a value of a type JSON has not, is
    encoded to give the verdict (the usual small config of numbers is only measured).

    Raises:
        WireError: the encoder's own error, naming the entry, the size and the limit.
    """
    try:
        size = _measure(config, 0, limits, [0])
    except _MayRefuse:
        size = limits.max_bytes + 1
    if size > limits.max_bytes:
        dumps_within(dict(config), limits)


def check_payload(payload: Any, limits: WireLimits) -> None:
    """Refuse a task's JSON ``payload`` as :func:`~covey.transport.grpc._frames.task_header` would.

    As :func:`check_config`; a payload of named arrays
    (:func:`~covey.transport.grpc._wire.is_extras`) travels as arrays, not JSON,
    and is the caller's to leave out.

    Raises:
        WireError: the encoder's own error, naming the entry, the size and the limit.
    """
    try:
        size = _measure(payload, 0, limits, [0])
    except _MayRefuse:
        size = limits.max_bytes + 1
    if size > limits.max_bytes:
        dumps_within(payload, limits)


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
