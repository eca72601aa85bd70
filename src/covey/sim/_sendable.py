"""The results a simulated client may send: those a deployed server accepts.

Each backend checks a client's result against the limits a deployed server
reads it with (:func:`~covey.transport.grpc._wirecheck.result_limits`: at most
4 MiB of JSON, strings of at most 1 MiB, arrays no larger than the task's
model), so a client whose metric is too large fails alone, with the same
error, on every backend and over the network. The process backend's pipe
then carries the result as JSON within the looser :data:`LIMITS` of the pipe
itself (its arrays travel in a file, not here).
"""

from __future__ import annotations

from typing import Any

from covey.core._messages import EvaluateResult, FitResult, Reply
from covey.core._weights import Weights
from covey.transport.grpc._wire import WireError, WireLimits
from covey.transport.grpc._wirecheck import check_result, result_limits

__all__ = ["LIMITS", "MAX_MESSAGE_BYTES", "sendable", "unsendable"]

#: Largest JSON message a worker may send (its arrays travel in a file, not here).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: What the process backend's pipe carries; a result is first checked against
#: the stricter limits of a deployed server (:func:`unsendable`).
LIMITS = WireLimits(max_bytes=MAX_MESSAGE_BYTES)


def unsendable(cid: int, kind: str, result: Any, model: Weights | None) -> Reply | None:
    """Client ``cid``'s failed reply if its ``result`` cannot be sent, else None.

    ``model`` is the weights its task carried (None if none): arrays in the
    result may be no larger than the model, as for a deployed server.
    """
    if (type(result) is FitResult or type(result) is EvaluateResult) and not result.metrics:
        return None  # the usual case: nothing of a client's size to send
    try:
        check_result(result, result_limits(model))
    except WireError as exc:
        return Reply(cid, kind, error=f"cannot send the result: {exc}")
    return None


def sendable(reply: Reply, model: Weights | None) -> Reply:
    """``reply``, or the failed reply of its client if its result cannot be sent."""
    if reply.error is not None:
        return reply
    return unsendable(reply.cid, reply.kind, reply.result, model) or reply
