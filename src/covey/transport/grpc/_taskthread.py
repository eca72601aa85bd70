"""A deployed client's task threads: one task at a time, and only a live connection's results.

Each session runs its tasks on a thread of its own, so the stream keeps being read
during a long task. A task can outlive its session (a fit or a query that hangs
once the connection dropped): the client waits for it a while (:data:`TASK_WAIT`)
before it reconnects, and no longer, so it hears the server's goodbye and its
stop. What that task does once its session is over is abandoned (:class:`Shared`):
its reply had no connection to go to, and its count or error changes nothing of
the :class:`~covey.transport.grpc._tasks.ConnectResult`. A later session's tasks
wait for it, so the client object never runs two tasks at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from covey.transport.grpc._checks import shown_kind
from covey.transport.grpc._frames import reply_frames
from covey.transport.grpc._refusal import RetryBudget
from covey.transport.grpc._tasks import ConnectResult, counted_kind, perform_task
from covey.transport.grpc._told import Told

__all__ = [
    "TASK_WAIT",
    "Shared",
    "join_task_thread",
    "left_behind",
    "serve_tasks",
    "wait_for_task_thread",
]

logger = logging.getLogger("covey")

TASK_WAIT = 60.0
"""Seconds a client waits for the task its lost connection left running before reconnecting."""


class Shared:
    """What a client's sessions share: its :class:`ConnectResult`, and the right to run a task.

    Each session takes a token (:meth:`begin`). Once the session is over its token
    is abandoned (:meth:`abandon`): a result its threads bring later (a task that
    finished after the connection was lost, a welcome read from a call given up)
    finds :meth:`changing` giving None, under the same lock, and changes nothing.
    """

    def __init__(self, result: ConnectResult | None = None) -> None:
        self.result = result if result is not None else ConnectResult()
        self._lock = threading.Lock()
        self._current = 0
        self._lane = threading.Lock()  # held by the thread running a task on the client
        self.running = ""  # which task runs, and on which thread ("" when none)
        self.told = Told()  # the rounds it replied in, for the server's refusals of them

    def begin(self) -> int:
        """A new session's token; the sessions before it are abandoned."""
        with self._lock:
            self._current += 1
            return self._current

    def abandon(self, token: int) -> None:
        """End the session of ``token``: nothing it does from now on changes the result."""
        with self._lock:
            if self._current == token:
                self._current += 1

    @contextlib.contextmanager
    def changing(self, token: int) -> Iterator[ConnectResult | None]:
        """The result, for the session of ``token`` to change while it is live; else None."""
        with self._lock:
            yield self.result if token == self._current else None

    @contextlib.contextmanager
    def alone(self, task: str, ended: threading.Event) -> Iterator[bool]:
        """Whether ``task`` may run: once no other task does, unless its session ``ended`` first.

        A session runs its tasks one after another on its own thread, so a task
        that has to wait here waits for one an earlier session left running (a
        task that hung past :data:`TASK_WAIT`): a WARNING says so, as the server
        sees the client connected but its task unanswered (``no reply in time``,
        then ``busy``) until that one ends.
        """
        if not self._lane.acquire(blocking=False):
            logger.warning(
                "the %s waits for the %s, left running by an earlier connection: a client "
                "runs one task at a time, so it starts once that one ends",
                task,
                self.running or "task before",
            )
            start = time.monotonic()
            while not self._lane.acquire(timeout=0.1):
                if ended.is_set():
                    logger.info("the %s is dropped: its connection ended while it waited", task)
                    yield False
                    return
            logger.info("the %s starts after waiting %.0f s", task, time.monotonic() - start)
        self.running = f"{task} (thread {threading.current_thread().name})"
        try:
            yield True
        finally:
            self.running = ""
            self._lane.release()


def serve_tasks(session: Any, end: object) -> None:
    """Run the tasks ``session`` queues, one at a time, until ``end``; reply while it is live."""
    while True:
        item = session.tasks.get()
        if item is end:
            return
        cid, header, buffer, intact = item
        del item
        unit = "update" if header.unit == "update" else "round"  # no unit: an older server's
        task = f"{shown_kind(header.kind)} task of {unit} {header.round}"
        with session.shared.alone(task, session.ended) as free:
            if free:
                _perform(session, task, cid, header, buffer, intact)
        # Let go of the received model now: kept for the next task, its pages given
        # back (Buffers.release), or freed at once without a pool.
        del buffer
        if session.buffers is not None:
            session.buffers.release()


def _perform(session: Any, task: str, cid: int, header: Any, buffer: Any, intact: bool) -> None:
    reply, sent = perform_task(session.client, cid, header, buffer, intact, session.limits)
    kind = counted_kind(header.kind)  # a server's text: by name only if this client runs it
    with session.shared.changing(session.token) as live:
        if live is None:  # its session is over: the reply has no connection to go to
            logger.info("the %s ended after its connection was lost; its result is abandoned", task)
            return
        live.tasks += 1
        live.kinds[kind] = live.kinds.get(kind, 0) + 1
        frames = reply_frames(
            header.task_id, reply, session.lanes.up, sent, header.reply_bytes, task
        )
        if reply.ok:  # the server may refuse it: it then says so, naming its round (noted
            # before the reply is queued: the refusal may be read before this thread goes on)
            session.shared.told.replied(header.unit, header.round)
        session.outbound.put(frames)


def wait_for_task_thread(
    running: threading.Thread | None,
    stop: threading.Event,
    budget: RetryBudget,
    shared: Shared,
    bound: float | None = None,
) -> bool:
    """Wait a while for the task a lost session still runs; whether to stop instead of reconnecting.

    A client runs one task at a time: a new session would be sent tasks while the
    old one still runs. It waits :data:`TASK_WAIT` seconds at most: a task that
    hangs must not keep the client from hearing the server (its goodbye) for ever;
    the new session's tasks then wait for it (:meth:`Shared.alone`). The wait does
    not count as time spent failing to connect (``retry_for``).
    """
    if running is not None and running.is_alive() and not stop.is_set():
        logger.info("waiting for the task still running to finish before reconnecting")
        start = time.monotonic()
        until = start + (TASK_WAIT if bound is None else bound)
        while running.is_alive() and not stop.is_set() and time.monotonic() < until:
            running.join(0.1)  # and see ``stop`` within 0.1 s
        if running.is_alive() and not stop.is_set():
            logger.warning(
                "the %s still runs %.0f s after its connection was lost; reconnecting: its "
                "result is abandoned, and the next task waits for it",
                shared.running or f"task (thread {running.name})",
                time.monotonic() - start,
            )
        if budget.since is not None:
            budget.since += time.monotonic() - start
    return stop.is_set()


def join_task_thread(
    worker: threading.Thread | None, deadline: float, stop: threading.Event | None = None
) -> None:
    """Wait up to ``deadline`` seconds for a session's task thread (not from itself).

    A client leaving (``stop`` set) waits no longer: :func:`left_behind` names the task.
    """
    if worker is None or worker is threading.current_thread():
        return
    until = time.monotonic() + deadline
    while worker.is_alive() and (stop is None or not stop.is_set()):
        left = until - time.monotonic()
        if left <= 0:
            break
        worker.join(min(left, 0.1))
    if worker.is_alive() and (stop is None or not stop.is_set()):
        logger.warning(
            "the running task did not finish within %.0f s of the session's end", deadline
        )


def left_behind(shared: Shared) -> None:
    """Name the task still running as the client leaves: not waited for, its result abandoned."""
    running = shared.running
    if running:
        logger.warning("leaving while the %s still runs; its result is abandoned", running)
