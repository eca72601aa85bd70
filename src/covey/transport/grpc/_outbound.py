"""The server's half of a client's stream: heartbeats, goodbyes, tasks and their arrays.

:class:`TaskStream` is the part of the gRPC service (:mod:`._service`) that
writes a connection's response stream. Only its generator writes to the
stream, so a task's chunk frames are never interleaved with anything else; a
task's arrays go on the client's data connection instead when it has one.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Generator
from typing import Any

from covey.transport.grpc import _lane, _wire
from covey.transport.grpc._frames import control, frames, task_header
from covey.transport.grpc._registry import CLOSE, Connection, Registry
from covey.transport.grpc.proto import covey_pb2 as pb

__all__ = ["SILENCE", "TaskStream"]

SILENCE = 6  # heartbeat intervals of silence after which a client is taken for gone


class TaskStream:
    """Writes each connection's response stream (mixed into the service)."""

    registry: Registry
    heartbeat: float

    def _send(self, conn: Connection) -> Generator[bytes, None, bool]:
        """The response stream: heartbeats, refusals, goodbyes, task headers and their chunk frames.

        Only this generator writes to the stream, so a task's chunk frames are never
        interleaved with anything else. Returns whether it ended after a goodbye.
        """
        goodbye = False
        while conn.alive:
            try:
                item = conn.outbound.get(timeout=self.heartbeat)
            except queue.Empty:
                if time.monotonic() - conn.last_seen > SILENCE * self.heartbeat:
                    self.registry.drop(conn, "timed out (no heartbeat)")
                    return False
                yield _HEARTBEAT
                continue
            if item is CLOSE:
                return goodbye
            if item[0] == "goodbye":
                conn.goodbye = item[1]  # before the write: its client may hang up at once
                yield control(pb.ServerMessage(goodbye=pb.Goodbye(reason=item[1])))
                goodbye = True
                continue
            if item[0] == "told":  # a refusal of its reply (see _told), a frame made already
                yield item[1]
                continue
            if not (yield from self._task(conn, *item[1:])):
                return False
        return False

    def _task(
        self, conn: Connection, task_id: int, task: Any, blob: Any, extras: Any, unit: str
    ) -> Generator[bytes, None, bool]:
        """Send one task: its header, then its arrays; False if the connection went meanwhile.

        ``unit`` is what its number counts (``"update"``, or empty for a round).
        """
        if not conn.data_ready.wait(_lane.READY_WAIT):  # its first task waits for them, once
            conn.data_ready.set()
        with conn.lock:
            if task_id not in conn.pending:
                return True  # cancelled before it was sent
        if conn.kinds and task.kind not in conn.kinds:
            self.registry.unable(conn, task_id, task.kind)
            return True
        try:
            header = task_header(task_id, task, blob, extras, unit)
        except _wire.WireError as exc:  # that client's failure; its stream stays open
            error = f"cannot send the {task.kind} task to client {conn.name}: {exc}"
            self.registry.unable(conn, task_id, task.kind, error)
            return True
        # The cap on its reply's arrays, so that its client refuses a larger reply itself.
        header.reply_bytes = conn.limits_of(task_id)[0]
        lane = conn.lanes[0] if header.weights_size or header.extras_size else None
        header.data_lane = lane is not None
        yield control(pb.ServerMessage(task=header))
        if lane is not None:  # the arrays go on the data connection
            try:
                _lane.send(lane, blob, extras)
            except OSError as exc:
                self.registry.drop(conn, f"lost its data connection ({exc or 'closed'})")
                return False
            return True
        for frame in frames(blob, extras):
            if conn.closed():
                return False
            yield frame
        return True


_HEARTBEAT = control(pb.ServerMessage(heartbeat=pb.Heartbeat()))
