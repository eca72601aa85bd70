"""Asynchronous transports: submit one task at a time, take replies as they come.

:class:`AsyncTransport` is the seam the FedBuff loop (:class:`covey.server.AsyncLoop`)
drives. :class:`SimulatedAsyncTransport` runs clients through any synchronous
transport on a virtual clock with simulated per-client speeds (no real waiting).
"""

from __future__ import annotations

import heapq
import itertools
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from covey.core._messages import Reply, Task, real
from covey.transport._base import Transport

Durations = Callable[[int, np.random.Generator], float] | Sequence[float]
"""Simulated seconds a fit task takes: ``(cid, rng) -> seconds``, or one fixed value per client."""


@runtime_checkable
class ClientModel(Protocol):
    """Simulated client speed and availability (:class:`covey.sim.ClientClock`)."""

    def duration(self, cid: int, rng: np.random.Generator) -> float:
        """Simulated seconds client ``cid``'s next fit takes."""
        ...

    def is_online(self, cid: int, rnd: int) -> bool:
        """Whether client ``cid`` is online at ``rnd``."""
        ...


@runtime_checkable
class AsyncTransport(Protocol):
    """Carries single tasks to clients and hands back their replies one at a time.

    The asynchronous loop keeps at most one task in flight per client. A
    transport must deliver exactly one :class:`Reply` for every submitted task
    that is not cancelled: the client's answer, or a ``Reply`` with ``error`` if
    the client failed, disconnected, or did not answer within the task's
    ``timeout`` (measured on the transport's own clock, :meth:`now`).
    """

    def clients(self) -> Sequence[int]:
        """The ids of the clients connected now."""
        ...

    def submit(self, cid: int, task: Task, *, timeout: float | None = None) -> None:
        """Send ``task`` to client ``cid`` without waiting for its reply.

        Args:
            cid: The client, which must have no task in flight.
            task: The task to send.
            timeout: Seconds the client has to reply, after which its reply is a
                timeout error; None: no limit.
        """
        ...

    def next_reply(self, timeout: float | None = None) -> Reply | None:
        """The next reply to arrive.

        Args:
            timeout: Seconds to wait; None waits for a task in flight to finish.

        Returns:
            The reply, or None if none arrives within ``timeout`` seconds or if no
            task is in flight.
        """
        ...

    def cancel(self, cid: int) -> None:
        """Forget ``cid``'s task in flight: its reply, if any comes, is not delivered.

        Args:
            cid: The client whose task to forget (one with none: nothing happens).
        """
        ...

    def now(self) -> float:
        """Seconds on the transport's clock (virtual in simulation)."""
        ...

    def close(self) -> None:
        """Release every resource."""
        ...


def simulated_seconds(value: Any, cid: int) -> float:
    """Client ``cid``'s simulated duration ``value`` as seconds; a ValueError unless a number >= 0.

    Text and bools are refused (``float("5")`` and ``float(True)`` would take them).
    """
    if not real(value):
        raise ValueError(
            f"client {cid}'s simulated duration is {value!r} ({type(value).__name__}), "
            "expected a number of seconds >= 0"
        )
    seconds = float(value)
    if not seconds >= 0.0 or seconds == math.inf:
        raise ValueError(
            f"client {cid}'s simulated duration is {seconds}, expected a finite number >= 0"
        )
    return seconds


@dataclass
class _Pending:
    task: Task
    finish: float
    seq: int
    timed_out: bool
    reply: Reply | None = None


class SimulatedAsyncTransport:
    """Asynchronous clients on a virtual clock, run through a synchronous transport.

    A fit task submitted at virtual time ``t`` to client ``cid`` completes at
    ``t + duration(cid)``; ``next_reply`` jumps the clock to the next completion
    (no real waiting). Other task kinds take no virtual time. Clients run through
    ``transport.exchange`` (inline, or a process pool computing ``prefetch``
    tasks at once); a client's result does not depend on when it runs, so the
    run is reproducible and the same on every backend.

    Args:
        transport: Where the clients run (e.g. :func:`covey.sim.inline_transport`).
        durations: ``(cid, rng) -> seconds`` drawn per task, or a fixed duration per
            client; default 1.0 s for every task. Or a :class:`covey.sim.ClientClock`,
            whose ``duration`` is drawn and whose ``online`` test is applied at submit
            (an offline client's task fails at once).
        seed: Seeds the ``rng`` passed to ``durations``.
        prefetch: Tasks to compute per exchange (more lets a process pool work in parallel).
        wall_timeout: Real seconds each exchange with ``transport`` may take (a
            simulation's ``round_timeout``): a client stuck in ``fit`` then fails
            its task instead of holding up the run. None waits without end.
        on_deliver: Called with a client's id when the clock reaches its computed
            reply, which may have been computed earlier, with a prefetched batch
            (a simulation counts the bytes of each task and reply then).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        durations: Durations | ClientModel | None = None,
        seed: int = 0,
        prefetch: int = 1,
        wall_timeout: float | None = None,
        on_deliver: Callable[[int], None] | None = None,
    ) -> None:
        self._transport = transport
        self._on_deliver = on_deliver
        self._wall_timeout = wall_timeout
        self._durations = durations
        # Asked once: a check against a runtime Protocol takes about 60 us, twice a task.
        self._model = durations if isinstance(durations, ClientModel) else None
        self._rng = np.random.default_rng([seed, 3])
        self._prefetch = max(1, int(prefetch))
        self._now = 0.0
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, int]] = []
        self._pending: dict[int, _Pending] = {}

    def clients(self) -> Sequence[int]:
        """The clients of the wrapped transport."""
        return self._transport.clients()

    def now(self) -> float:
        """The virtual clock, in seconds."""
        return self._now

    def _duration(self, cid: int) -> float:
        if self._model is not None:
            return self._model.duration(cid, self._rng)
        if self._durations is None:
            return 1.0
        if callable(self._durations):
            try:
                given = self._durations(cid, self._rng)
            except Exception as exc:  # the user's error, told where it came from
                name = getattr(self._durations, "__qualname__", type(self._durations).__name__)
                exc.add_note(f"raised by client_durations {name} for client {cid}")
                raise
            return simulated_seconds(given, cid)
        fixed = cast(Sequence[float], self._durations)  # a ClientModel was taken above
        return simulated_seconds(fixed[cid], cid)

    def _said(self, cid: int) -> str:
        """Where client ``cid``'s simulated durations come from, for a timeout's error."""
        if self._durations is None:
            return "1 s for every client; simulate(client_durations=...) gives others"
        return "from client_durations"

    def submit(self, cid: int, task: Task, *, timeout: float | None = None) -> None:
        """Schedule ``task``'s completion on the virtual clock.

        Args:
            cid: The client, which must have no task in flight (else ``ValueError``).
            task: The task; a fit task takes the client's simulated duration.
            timeout: Virtual seconds; a task that would take longer completes at
                the timeout as a timeout error. None: no limit.
        """
        if cid in self._pending:
            raise ValueError(f"client {cid} already has a task in flight")
        model = self._model
        if model is not None and not model.is_online(cid, task.round):
            seq = next(self._seq)
            said = f"offline in update {task.round} (simulated availability)"  # as a round's
            offline = Reply(cid, task.kind, error=said)
            self._pending[cid] = _Pending(task, self._now, seq, False, offline)
            heapq.heappush(self._heap, (self._now, seq, cid))
            return
        duration = self._duration(cid) if task.kind == "fit" else 0.0
        timed_out = timeout is not None and duration > timeout
        finish = self._now + (timeout if timed_out and timeout is not None else duration)
        seq = next(self._seq)
        self._pending[cid] = _Pending(task, finish, seq, timed_out)
        heapq.heappush(self._heap, (finish, seq, cid))

    def next_reply(self, timeout: float | None = None) -> Reply | None:
        """Advance the virtual clock to the next completion and return its reply.

        Args:
            timeout: Virtual seconds; when no task completes within it, the clock
                advances by it and None is returned. None: wait for the next completion.
        """
        while self._heap:
            finish, seq, cid = self._heap[0]
            pending = self._pending.get(cid)
            if pending is None or pending.seq != seq:
                heapq.heappop(self._heap)  # cancelled
                continue
            if timeout is not None and finish - self._now > timeout:
                self._now += timeout
                return None
            heapq.heappop(self._heap)
            self._now = max(self._now, finish)
            if pending.timed_out:
                del self._pending[cid]
                why = (
                    f"no reply in time: its simulated duration ({self._said(cid)}) is longer "
                    "than the timeout"
                )
                return Reply(cid, pending.task.kind, error=why)
            if pending.reply is None:
                self._compute(cid)
            del self._pending[cid]
            if pending.reply is None:  # an invariant of this module, not an input check
                raise RuntimeError("internal error: pending.reply is unset")
            if self._on_deliver is not None:
                self._on_deliver(cid)
            return pending.reply
        return None

    def _compute(self, first: int) -> None:
        batch = [first, *self._next_waiting(first, self._prefetch - 1)]
        tasks = {cid: self._pending[cid].task for cid in batch}
        try:
            for reply in self._transport.exchange(tasks, timeout=self._wall_timeout):
                if reply.cid in tasks:
                    self._pending[reply.cid].reply = reply
        except Exception:  # noqa: BLE001 - a broken transport fails the batch's tasks, not the run
            error = traceback.format_exc()
            for cid in batch:
                self._pending[cid].reply = Reply(cid, tasks[cid].kind, error=error)
        missing = (
            "no reply"
            if self._wall_timeout is None
            else f"no reply in time: past the timeout of {self._wall_timeout:g} s"
        )
        for cid in batch:
            if self._pending[cid].reply is None:
                self._pending[cid].reply = Reply(cid, tasks[cid].kind, error=missing)

    def _next_waiting(self, first: int, count: int) -> list[int]:
        """The ``count`` tasks due soonest after ``first`` that are still to compute.

        A best-first walk of the heap from its root (a parent is never due after its
        children), so it looks at about as many entries as it returns, not at every
        task in flight: FedBuff with ``where=`` has a properties task in flight per client.
        """
        heap, out = self._heap, list[int]()
        frontier = [(heap[0], 0)] if heap and count > 0 else []
        while frontier and len(out) < count:
            (_, seq, cid), i = heapq.heappop(frontier)
            pending = self._pending.get(cid)
            if (
                pending is not None
                and pending.seq == seq
                and cid != first
                and pending.reply is None
                and not pending.timed_out
            ):
                out.append(cid)
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return out

    def cancel(self, cid: int) -> None:
        """Drop ``cid``'s task in flight.

        Args:
            cid: The client whose task to drop (one with none: nothing happens).
        """
        self._pending.pop(cid, None)

    def close(self) -> None:
        """Close the wrapped transport."""
        self._pending.clear()
        self._heap.clear()
        self._transport.close()
