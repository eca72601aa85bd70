"""The results a simulated client may send: those a deployed server accepts.

Each backend checks a client's result against the limits a deployed server
reads it with (:func:`~covey.transport.grpc._wirecheck.result_limits`: at most
4 MiB of JSON, strings of at most 1 MiB, arrays no larger than the task's
model; the bytes of a task kind's arrays of one's own, and of a fit result's
update and extras together, within the cap of
:func:`~covey.transport.grpc._wirecheck.reply_bytes_limit`), so a client whose
metric or reply is too large fails alone, with the same error, on every backend
and over the network. The process backend's pipe
then carries the result as JSON within the looser :data:`LIMITS` of the pipe
itself (its arrays travel in a file, not here).

A client's config and a task's JSON payload (a query's, a task kind of one's
own) are checked likewise (:func:`unsent`), against the caps a deployed server
sends a task within (4 MiB of JSON, strings of at most 1 MiB; see
:func:`~covey.transport.grpc._frames.task_header`): a task a deployed server
could not send fails that client alone, with the deployed error, on every
backend (the process backend's own check is :class:`~covey.sim._tasktexts.TaskTexts`).
A config a deployed client would refuse, one holding NaN anywhere, fails that
client with the deployed client's error (``refusing the task: the server's
config holds NaN at lr``; see :func:`~covey.transport.grpc._checks.check_config`),
on every backend; an infinity is kept, as deployed.
Only what a deployed server would encode is checked: a compression scheme of
one's own, which the inline backend hands its clients as the object (a
deployed server names a scheme by its spec), stands as its name; a payload of
named arrays travels as arrays, not JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from covey.compress._task import CONFIG_KEY as COMPRESSION
from covey.compress._task import KIND as COMPRESSED_FIT
from covey.core._messages import EvaluateResult, FitResult, Reply, Task
from covey.core._weights import Weights
from covey.transport.grpc._checks import check_no_nan
from covey.transport.grpc._wire import (
    WireError,
    WireLimits,
    dumps,
    is_extras,
    result_from_wire,
    result_head,
)
from covey.transport.grpc._wirecheck import (
    check_config,
    check_fit_bytes,
    check_payload,
    check_reply_bytes,
    check_result,
    result_limits,
)
from covey.transport.grpc._wireread import loads

__all__ = [
    "LIMITS",
    "MAX_MESSAGE_BYTES",
    "Unsent",
    "as_received",
    "as_sent",
    "received",
    "sendable",
    "unsendable",
    "unsent",
]

#: Largest JSON message a worker may send (its arrays travel in a file, not here).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: What the process backend's pipe carries; a result is first checked against
#: the stricter limits of a deployed server (:func:`unsendable`).
LIMITS = WireLimits(max_bytes=MAX_MESSAGE_BYTES)
#: The caps a deployed server sends a task's config within.
_SENT = WireLimits()


def unsendable(
    cid: int,
    kind: str,
    result: Any,
    model: Weights | None,
    head: tuple[Any, Weights | None] | None = None,
) -> Reply | None:
    """Client ``cid``'s failed reply if its ``result`` cannot be sent, else None.

    ``model`` is the weights its task carried (None if none): arrays in the
    result's JSON may be no larger than the model, and the arrays of a task
    kind's result of one's own (a dict holding NumPy arrays) take at most the
    bytes a deployed server takes in a reply to that task (about four times the
    model, 64 MiB without one), as for a deployed server. ``head`` is
    ``result_head(result)`` if the caller has it (None: worked out where needed).
    """
    fit = type(result) is FitResult
    usual = fit or type(result) is EvaluateResult
    if usual and not result.metrics:
        if fit and result.extras:
            return _fit_too_large(cid, kind, result, model)
        return None  # the usual case: nothing of a client's size to send
    try:
        check_result(result, result_limits(model), head)
    except WireError as exc:
        return Reply(cid, kind, error=f"cannot send the result: {exc}")
    if fit:
        return _fit_too_large(cid, kind, result, model) if result.extras else None
    too_large = None if usual else check_reply_bytes(kind, result, model, head)
    return None if too_large is None else Reply(cid, kind, error=too_large)


def _fit_too_large(cid: int, kind: str, result: FitResult, model: Weights | None) -> Reply | None:
    """Client ``cid``'s failed reply if its fit result's update and extras pass their cap."""
    too_large = check_fit_bytes(kind, result, model)
    return None if too_large is None else Reply(cid, kind, error=too_large)


def sendable(reply: Reply, model: Weights | None) -> Reply:
    """``reply``, or the failed reply of its client if its result cannot be sent."""
    if reply.error is not None:
        return reply
    return unsendable(reply.cid, reply.kind, reply.result, model) or reply


def as_received(reply: Reply) -> Reply:
    """``reply`` as a deployed server reads it, for a backend that hands over the object.

    A task kind's result of one's own travels as JSON beside its top-level arrays:
    a tuple arrives as a list, a key that is a number as a string, a NumPy scalar as
    the number it holds. The inline and Ray backends give the server that value,
    as the process backend and a deployed client do, so code that reads it works
    alike everywhere. A fit or evaluate result, and a failed reply, are unchanged.
    """
    result = reply.result
    if reply.error is not None or result is None or isinstance(result, FitResult | EvaluateResult):
        return reply
    return _as_received(reply, result_head(result))


def _as_received(reply: Reply, head: tuple[Any, Weights | None]) -> Reply:
    """:func:`as_received` of a task kind's result of one's own; ``head`` its ``result_head``."""
    try:
        received = result_from_wire(dumps(head[0]), head[1], limits=LIMITS)
    except WireError:  # refused before (see sendable), where it is said why
        return reply
    return Reply(reply.cid, reply.kind, result=received)


def received(reply: Reply, model: Weights | None) -> Reply:
    """``as_received(sendable(reply, model))``, a result's head laid out once for both.

    A task kind's result of one's own is split into its JSON head and its arrays
    once per reply: measured, its arrays' bytes checked, and read back from that split.
    """
    result = reply.result
    if reply.error is not None or result is None or isinstance(result, FitResult | EvaluateResult):
        return as_received(sendable(reply, model))
    head = result_head(result)
    failed = unsendable(reply.cid, reply.kind, result, model, head)
    return _as_received(reply, head) if failed is None else failed


def as_sent(payload: Any) -> Any:
    """A task's JSON ``payload`` as a deployed client reads it (see :func:`as_received`).

    A payload of named arrays (:func:`~covey.transport.grpc._wire.is_extras`) is
    unchanged: it travels as those arrays.
    """
    if payload is None or is_extras(payload):
        return payload
    try:
        return loads(dumps(payload), LIMITS)
    except WireError:  # refused before (see unsent), where it is said why
        return payload


def unsent(cid: int, task: Task) -> Reply | None:
    """Client ``cid``'s failed reply if a deployed server could not send it ``task``, else None.

    The error is the deployed server's: ``cannot send the fit task to client 0: its
    config:`` (or ``its payload:``) then the size, the limit and the entry (or the
    type no JSON value has); or the deployed client's, for a config it refuses
    (``refusing the task: the server's config holds NaN at lr``). The common empty
    config and missing payload are not measured.
    """
    return _config_unsent(cid, task) or _payload_unsent(cid, task)


def _config_unsent(cid: int, task: Task) -> Reply | None:
    if not task.config:
        return None
    try:
        check_config(_as_sent(task), _SENT)
    except WireError as exc:
        return _failed(cid, task, "config", exc)
    try:  # sendable, but a deployed client refuses it (see _checks.check_config)
        check_no_nan(task.config)
    except WireError as exc:
        return Reply(cid, task.kind, error=f"refusing the task: {exc}")
    return None


def _payload_unsent(cid: int, task: Task) -> Reply | None:
    payload = task.payload
    if payload is None or is_extras(payload):  # named arrays travel as arrays
        return None
    try:
        check_payload(payload, _SENT)
    except WireError as exc:
        return _failed(cid, task, "payload", exc)
    return None


def _failed(cid: int, task: Task, part: str, exc: WireError) -> Reply:
    error = f"cannot send the {task.kind} task to client {cid}: its {part}: {exc}"
    return Reply(cid, task.kind, error=error)


class Unsent:
    """:func:`unsent`, once for the config (and payload) a round's tasks share.

    It keeps the last config and the last payload found sendable: covey hands
    clients copies, and changes neither once it is on a task, so those need no
    check again.
    """

    def __init__(self) -> None:
        """No config checked yet."""
        #: The last config found sendable.
        self.checked: Any = None
        #: The last payload found sendable.
        self.payload: Any = None

    def fresh(self, task: Task) -> bool:
        """Whether ``task`` has a config or a payload not found sendable yet."""
        config = bool(task.config) and task.config is not self.checked
        return config or (task.payload is not None and task.payload is not self.payload)

    def __call__(self, cid: int, task: Task) -> Reply | None:
        """Client ``cid``'s failed reply if its task cannot be sent (see :func:`unsent`)."""
        if task.config and task.config is not self.checked:
            failed = _config_unsent(cid, task)
            if failed is not None:
                return failed
            self.checked = task.config
        if task.payload is not None and task.payload is not self.payload:
            failed = _payload_unsent(cid, task)
            if failed is not None:
                return failed
            self.payload = task.payload
        return None


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
