"""The results a simulated client may send: what the process backend's pipe carries.

The process backend sends each result to the server process as JSON (with the
network's limits on strings, arrays and nesting); the inline and Ray backends
hand results over in memory. Each checks a result against the same limits
(:func:`~covey.transport.grpc._wirecheck.check_result`), so a client whose
metric is too large to send fails alone, with the same error, on every backend.
"""

from __future__ import annotations

from typing import Any

from covey.core._messages import Reply
from covey.transport.grpc._wire import WireError, WireLimits
from covey.transport.grpc._wirecheck import check_result

__all__ = ["LIMITS", "MAX_MESSAGE_BYTES", "sendable", "unsendable"]

#: Largest JSON message a worker may send (its arrays travel in a file, not here).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
LIMITS = WireLimits(max_bytes=MAX_MESSAGE_BYTES)


def unsendable(cid: int, kind: str, result: Any) -> Reply | None:
    """Client ``cid``'s failed reply if its ``result`` cannot be sent, else None."""
    try:
        check_result(result, LIMITS)
    except WireError as exc:
        return Reply(cid, kind, error=f"cannot send the result: {exc}")
    return None


def sendable(reply: Reply) -> Reply:
    """``reply``, or the failed reply of its client if its result cannot be sent."""
    if reply.error is not None:
        return reply
    return unsendable(reply.cid, reply.kind, reply.result) or reply
