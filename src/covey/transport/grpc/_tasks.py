"""Running a task on a deployed client's task thread, which must outlive every task.

Also the task a client received (:func:`received_task`) and what its participation
did (:class:`ConnectResult`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from covey.clients._client import hand_over, not_an_exception, run_task, task_kinds
from covey.core import _codec
from covey.core._messages import Reply, Task
from covey.core._weights import WeightsError
from covey.transport.grpc import _wire
from covey.transport.grpc._checks import TaskLimits, check_config, shown_kind
from covey.transport.grpc._frames import control
from covey.transport.grpc._stream import split_blobs
from covey.transport.grpc._wirecheck import result_limits
from covey.transport.grpc.proto import covey_pb2 as pb

__all__ = [
    "UNKNOWN_KIND",
    "ConnectResult",
    "counted_kind",
    "perform_task",
    "received_task",
    "refuse_task",
    "run_on_task_thread",
]

logger = logging.getLogger("covey")


def run_on_task_thread(client: Any, cid: int, task: Task) -> Reply:
    """:func:`run_task`, where what is no ``Exception`` fails the task as well.

    The task runs on the session's task thread. ``sys.exit()`` in ``fit`` (a
    script's helper, argparse) or a ``CancelledError`` leaked by the client's
    event loop ended that thread: the client stayed connected and never
    replied, so the server waited for the reply (for ever, without a round
    timeout) and took the client for busy in every later round. Ctrl-C is
    raised in the main thread, never here.
    """
    try:
        return run_task(client, cid, task)
    except BaseException as exc:  # noqa: BLE001 - the client's, not this process's
        what = not_an_exception(exc)
        hint = (
            f"covey: the client {what} in its {task.kind} task: the task fails and this "
            "client goes on with the next one (a deployed client leaves only when the run "
            "ends or it is stopped)\n"
        )
        return Reply(cid, task.kind, error=traceback.format_exc() + hint)


UNKNOWN_KIND = "(unknown)"
"""The key :attr:`ConnectResult.kinds` counts tasks of kinds without a handler under."""


def counted_kind(kind: str) -> str:
    """The key a task of ``kind`` is counted under: itself if this runtime performs it.

    A server's task may name any kind; counted by name, a server sending a
    thousand made-up kinds would grow the count by a thousand keys, each text of
    its choosing.
    """
    return kind if kind in task_kinds() else UNKNOWN_KIND


@dataclass
class ConnectResult:
    """How a client's participation ended.

    Attributes:
        reason: The server's goodbye message.
        tasks: How many tasks this client performed.
        sessions: How many times it connected (the server welcomed it); failed
            connection attempts do not count.
        cid: The id the server gave it.
        kinds: How many tasks of each kind (``"fit"``, ``"evaluate"``, ...) it performed;
            tasks of a kind this client has no handler for (a server may name any, each
            failed) are counted together under :data:`UNKNOWN_KIND`.
    """

    reason: str = ""
    tasks: int = 0
    sessions: int = 0
    cid: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)


def received_task(
    client: Any, header: pb.TaskHeader, buffer: Any, intact: bool, limits: TaskLimits
) -> Task:
    """The task ``header`` and its received bytes (``buffer``) make, checked.

    Raises:
        covey.core._codec.CodecError: its bytes are corrupt (``intact`` False: their
            checksums were computed as they arrived) or malformed.
        covey.transport.grpc._wire.WireError: its config or payload is malformed.
        covey.WeightsError: its weights are not those of the client's model.
    """
    if not intact:
        raise _codec.CodecError("corrupt payload (checksum mismatch)")
    weights, extras = split_blobs(buffer, header.weights_size, header.extras_size, verify=False)
    limits.check_weights(header.kind, weights)
    hand_over(client, header.kind, weights)  # this message is this task's alone
    return Task(
        header.kind,
        int(header.round),
        check_config(_wire.loads(header.config, limits.wire)),
        weights,
        extras if extras is not None else _wire.loads(header.payload, limits.wire),
    )


def perform_task(
    client: Any, cid: int, header: pb.TaskHeader, buffer: Any, intact: bool, limits: TaskLimits
) -> tuple[Reply, _wire.WireLimits]:
    """The reply to the task ``header`` announced, and the limits the server reads it with.

    A failed task is logged as a warning, with the last line of its error.

    A task the client refuses (see :func:`received_task`) is its failed reply.
    The limits are those of the model the task carried
    (:func:`~covey.transport.grpc._wirecheck.result_limits`): the client sends a
    result over them as its failure, as every simulation backend does.
    """
    try:
        task = received_task(client, header, buffer, intact, limits)
    except (_codec.CodecError, _wire.WireError, WeightsError) as exc:
        reply, sent = Reply(cid, header.kind, error=f"refusing the task: {exc}"), _wire.WireLimits()
    else:
        sent = result_limits(task.weights)
        reply = run_on_task_thread(client, cid, task)
    if not reply.ok:
        logger.warning(
            "task %s of %s %d failed: %s",
            shown_kind(header.kind),
            "update" if header.unit == "update" else "round",  # no unit: an older server's
            header.round,
            (reply.error or "").strip().splitlines()[-1:],
        )
    return reply, sent


def refuse_task(
    header: pb.TaskHeader, why: str, send: Callable[[Any], None], end: object, call: Any
) -> str:
    """Tell the server why a client refuses a task, and end the client's request stream.

    The refusal goes as the task's failed reply, before the stream's end (gRPC
    delivers them in order), so the server records why; reconnecting would only
    fetch the same model again. The client drops the task's bytes until the
    server ends the stream; a server that does not is cut off (``call.cancel()``)
    after 10 s.

    Args:
        header: The task refused.
        why: Why, in words.
        send: Queues an item on the request stream.
        end: The item that ends the request stream.
        call: The stream's gRPC call.

    Returns:
        What the server was told (the client raises it as a Refused once the stream ends).
    """
    said = f"{why} (raise --max-task-mb, or connect(max_task_bytes=...))"
    error = pb.ReplyHeader(task_id=header.task_id, kind=header.kind, error=said)
    send([control(pb.ClientMessage(reply=error))])
    send(end)
    cut_off = threading.Timer(10.0, call.cancel)
    cut_off.daemon = True  # never keeps the process from exiting
    cut_off.start()
    return said


def drop_queued(tasks: queue.Queue[Any]) -> None:
    """Empty a session's queue of tasks not started: their replies could not be sent."""
    dropped = 0
    with contextlib.suppress(queue.Empty):
        while True:
            tasks.get_nowait()
            dropped += 1
    if dropped:
        logger.info("dropping %d queued task(s): the session ended", dropped)
