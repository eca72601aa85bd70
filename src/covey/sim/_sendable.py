"""The results a simulated client may send: those a deployed server accepts.

Each backend checks a client's result against the limits a deployed server
reads it with (:func:`~covey.transport.grpc._wirecheck.result_limits`: at most
4 MiB of JSON, strings of at most 1 MiB, arrays no larger than the task's
model), so a client whose metric is too large fails alone, with the same
error, on every backend and over the network. The process backend's pipe
then carries the result as JSON within the looser :data:`LIMITS` of the pipe
itself (its arrays travel in a file, not here).

A client's config is checked likewise (:func:`unsent`), against the caps a
deployed server sends a task within (4 MiB of JSON, strings of at most 1 MiB;
see :func:`~covey.transport.grpc._frames.task_header`): a config a deployed
server could not send fails that client alone, with the deployed error, on
every backend. Only what a deployed server would encode is checked: a
compression scheme of one's own, which the inline backend hands its clients as
the object (a deployed server names a scheme by its spec), stands as its name.
The process backend holds a task's JSON payload to the same caps
(:func:`~covey.sim._shm.task_item`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from covey.compress._runtime import CONFIG_KEY as COMPRESSION
from covey.compress._runtime import KIND as COMPRESSED_FIT
from covey.core._messages import EvaluateResult, FitResult, Reply, Task
from covey.core._weights import Weights
from covey.transport.grpc._wire import WireError, WireLimits
from covey.transport.grpc._wirecheck import check_config, check_result, result_limits

__all__ = ["LIMITS", "MAX_MESSAGE_BYTES", "Unsent", "sendable", "unsendable", "unsent"]

#: Largest JSON message a worker may send (its arrays travel in a file, not here).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: What the process backend's pipe carries; a result is first checked against
#: the stricter limits of a deployed server (:func:`unsendable`).
LIMITS = WireLimits(max_bytes=MAX_MESSAGE_BYTES)
#: The caps a deployed server sends a task's config within.
_SENT = WireLimits()


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


def unsent(cid: int, task: Task) -> Reply | None:
    """Client ``cid``'s failed reply if a deployed server could not send it ``task``, else None.

    The error is the deployed server's: ``cannot send the fit task to client 0: its
    config:`` then the size, the limit and the entry (or the type no JSON value
    has). The common empty config is not measured.
    """
    if not task.config:
        return None
    try:
        check_config(_as_sent(task), _SENT)
    except WireError as exc:
        error = f"cannot send the {task.kind} task to client {cid}: its config: {exc}"
        return Reply(cid, task.kind, error=error)
    return None


class Unsent:
    """:func:`unsent`, once for the config a round's tasks share (one object, not a copy).

    It keeps the last config found sendable: covey hands clients copies, and
    changes no config once it is on a task, so that one needs no check again.
    """

    def __init__(self) -> None:
        """No config checked yet."""
        #: The last config found sendable.
        self.checked: Any = None

    def __call__(self, cid: int, task: Task) -> Reply | None:
        """Client ``cid``'s failed reply if its config cannot be sent (see :func:`unsent`)."""
        if not task.config or task.config is self.checked:
            return None
        failed = unsent(cid, task)
        if failed is None:
            self.checked = task.config
        return failed


def _as_sent(task: Task) -> Mapping[str, Any]:
    """``task``'s config as a deployed server would encode it.

    A compressed fit task of the inline backend may carry a scheme of one's own
    as the object itself, which only an in-process client can be handed; here it
    stands as its name, as covey's own schemes travel as their spec.
    """
    head = task.config.get(COMPRESSION) if task.kind == COMPRESSED_FIT else None
    if not isinstance(head, Mapping) or isinstance(head.get("scheme"), str):
        return task.config
    name = str(getattr(head.get("scheme"), "name", ""))
    return {**task.config, COMPRESSION: {**head, "scheme": name}}
