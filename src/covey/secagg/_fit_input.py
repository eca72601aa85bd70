"""A secure fit's client side: train, check the update, quantize it and append its tail.

The input function of :func:`~covey.secagg.secure` (registered as
``covey.secagg.fit``): its vector is what the client masks. The client's own
mistakes are named as a plain fit names them (:mod:`covey.clients._mistakes`):
a ``fit`` returning a tuple is told what to return, and an update of another
layout reads ``client 1's weights: ...`` (a deployed client's name when the
server sends it), the message alone, before anything is masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.aggregate._flat import int_change, signed
from covey.clients._client import lend
from covey.clients._current import current_task
from covey.clients._mistakes import ResultRefused, call_fit
from covey.core._messages import Task
from covey.core._weights import Weights, WeightsError, WeightsSpec
from covey.secagg._ddp import clip_update
from covey.secagg._ring import RangeError, out_of_range, quantize


def layout(weights: Weights) -> list[tuple[str, tuple[int, ...], int]]:
    """Each array's name, shape and size, in the order the secure vector holds them."""
    return [(name, weights[name].shape, int(weights[name].size)) for name in sorted(weights)]


def _who(task: Task) -> str:
    """The client as the server names it: its name if the task carries one, else its id."""
    name = task.payload.get("name") if isinstance(task.payload, Mapping) else None
    if isinstance(name, str) and name:
        return name
    now = current_task()
    return "the fit result" if now is None else f"client {now.cid}"


def _check_update(task: Task, weights_in: Weights, values: Any, what: str) -> None:
    """Refuse an update of another layout (or with a NaN) as the server refuses a plain one.

    Checked before anything is masked: a wrong name, shape or dtype is named
    here, not met as a length mismatch in the protocol.
    """
    model = WeightsSpec.of(weights_in)
    if model.conforms(values):
        return
    try:
        model.check(values, what=f"{_who(task)}'s {what}")
    except WeightsError as exc:
        raise ResultRefused(str(exc)) from None


def fit_input(client: Any, task: Task, spec: Any) -> np.ndarray:
    """The client's side of a secure fit: train, quantize, pre-scale, append count and metrics."""
    if task.weights is None:
        raise ValueError("a secure fit task carries no weights")
    config = dict(task.config)
    config["round"] = task.round
    result = call_fit(client, lend(client, task.weights), config)  # task.weights used below
    if result.delta is not None:
        _check_update(task, task.weights, result.delta, "delta")
    else:
        _check_update(task, task.weights, result.weights, "weights")
    n = result.num_examples
    if n > int(spec["max_examples"]):
        raise RangeError(  # not the count: the server is to learn only the sum of them
            f"num_examples exceeds max_examples={spec['max_examples']} of secure aggregation: "
            "raise it on the server, secure(max_examples=...)"
        )
    weight = n if spec["weighted"] else 1
    clip, bits = float(spec["clip"]), int(spec["bits"])
    deltas: list[np.ndarray] = []
    for name, _, _ in layout(task.weights):
        if result.delta is not None:
            # An unsigned array's delta is a change modulo 2**bits (5 -> 3 is sent as 254):
            # its value is the signed reading, as the unsecured mean reads it.
            delta = np.asarray(signed({name: np.asarray(result.delta[name])})[name], np.float64)
        elif result.weights is not None:
            delta = _weights_change(result.weights[name], task.weights[name], clip)
        else:
            raise ValueError("a fit result carries neither weights nor a delta")
        deltas.append(delta.ravel())
    if spec.get("l2_clip") is not None:
        deltas = clip_update(deltas, float(spec["l2_clip"]), clip, bits)
    # One quantization of the whole update (one draw of randomness, not one per array
    # of a model of hundreds); an array out of range is then found and named.
    try:
        quantized = quantize(np.concatenate(deltas), clip, bits)
    except RangeError:
        _name_out_of_range(task.weights, deltas, clip, bits)
        raise
    quantized *= weight
    tail = [n, *_metric_tail(result.metrics, spec["metrics"], n, bits)]
    return np.concatenate([quantized, np.asarray(tail, dtype=np.int64)])


def _name_out_of_range(model: Any, deltas: list[np.ndarray], clip: float, bits: int) -> None:
    """Raise the :class:`RangeError` of the first array of ``deltas`` out of range, by name."""
    for (name, _, _), delta in zip(layout(model), deltas, strict=True):
        try:
            quantize(delta, clip, bits)
        except RangeError as exc:  # name the array: an index alone is ambiguous
            raise out_of_range(name, model[name], exc) from None


def _metric_tail(metrics: Any, bounds: Mapping[str, float], n: int, bits: int) -> list[int]:
    """Each declared metric as (quantized value times ``n``, ``n``), or (0, 0) when absent."""
    tail: list[int] = []
    for name, bound in bounds.items():
        value = metrics.get(name)
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = value.item()  # a 0-d array is its number, as the unsecured mean reads it
        # Numbers as the unsecured mean takes them, NumPy scalars (a float32 loss) included.
        if isinstance(value, bool | np.bool_) or not isinstance(
            value, int | float | np.integer | np.floating
        ):
            tail += [0, 0]
            continue
        if not abs(float(value)) <= float(bound):  # also NaN; the value stays out of it
            raise RangeError(
                f"fit metric {name!r} is not within its secure-aggregation bound "
                f"[-{bound:g}, {bound:g}]: raise the bound in secure(metrics=...)"
            )
        tail += [int(quantize(np.array([float(value)]), float(bound), bits)[0]) * n, n]
    return tail


def _weights_change(new: Any, old: Any, clip: float) -> np.ndarray:
    """New weights minus the global ones, a change of at most ``clip`` read as such.

    ``old + d`` rounded to a float dtype is off by up to half a unit in the last
    place, so a change of exactly ``clip`` can read as a hair more (0.7 + 1.0 is
    1.7000002 in float32, minus 0.7 gives 1.0000001); within that spacing the
    value is put back on the bound. A larger change stays as it is and fails.
    """
    new_arr, old_arr = np.asarray(new), np.asarray(old)
    if new_arr.dtype.kind in "iu":  # exact for a change to a value past 2**53
        return int_change(new_arr, old_arr)
    # asarray: for 0-d arrays the difference is a NumPy scalar, which takes no assignment.
    delta = np.asarray(new_arr.astype(np.float64) - old_arr.astype(np.float64))
    if new_arr.dtype.kind == "f":
        slack = np.abs(np.spacing(new_arr)).astype(np.float64)
        near = (np.abs(delta) > clip) & (np.abs(delta) <= clip + slack)
        delta[near] = np.copysign(clip, delta[near])
    return delta
