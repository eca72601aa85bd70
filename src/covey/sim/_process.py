"""The process backend: a pool of long-lived worker processes, each owning a share of the clients.

Per round, the global weights are encoded once into a shared-memory file that
every worker maps and decodes without copying; each task message carries only
a reference to it. A worker builds each of its clients with ``client_fn`` the
first time it is asked and reuses it in every later round, so clients keep
their data and state warm. A reply returns as a JSON message over the pipe,
its arrays written by the worker into a shared-memory file of their own
(:mod:`covey.sim._shm`): the parent maps and unlinks that file and hands the
round loop read-only views, so replies reach the loop as they arrive, are
folded in place and free their memory as soon as the loop drops them. The
parent's global weights are swapped for views of the broadcast file once it is
written, so parent and workers share a single copy of the model.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing as mp
import os
import secrets
import signal
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from covey.clients._client import ClientFn
from covey.core._codec import CodecError
from covey.core._messages import Reply, Task
from covey.core._text import clients
from covey.core._weights import Weights
from covey.sim import _logs, _pace, _shm, _start
from covey.sim._inline import batch_norm_hint
from covey.sim._pool import Worker as _Worker
from covey.sim._pool import cleanup as _cleanup
from covey.sim._pool import never_started as _never_started
from covey.sim._pool import too_many_files as _too_many_files
from covey.sim._sendable import MAX_MESSAGE_BYTES, Unsent
from covey.sim._tasktexts import TaskTexts
from covey.transport._base import LONGEST_WAIT
from covey.transport.grpc import _wire
from covey.transport.grpc._wire import WireError

logger = logging.getLogger("covey")

_SEGFAULT_HINT = (
    ": a segmentation fault (in the client's code or a library it called). One common "
    "cause: a write into the read-only global weights, which the worker maps read-only "
    "while torch.from_numpy, ctypes or a compiled extension (scikit-learn's SGD estimators "
    "train their coef_ in place) ignore NumPy's read-only flag; copy before writing "
    "(torch.tensor(array), model.coef_ = weights['coef'].copy(), array.copy())"
)


def _share(weights: dict[str, Any], mapped: Mapping[str, Any]) -> None:
    """Swap the read-only arrays of ``weights`` for their identical views in the broadcast.

    The caller's model then lives in the shared file alone: the parent keeps no
    second copy of what every worker maps. Writable arrays, and any whose dtype
    or shape the encoding changed, are left as they are.
    """
    for name, view in mapped.items():
        old = weights.get(name)
        if (
            isinstance(old, np.ndarray)
            and not old.flags.writeable
            and old.dtype == view.dtype
            and old.shape == view.shape
        ):
            weights[name] = view


class ProcessTransport:
    """Clients live in a pool of worker processes; client ``cid`` lives in worker ``cid % n``.

    Args:
        client_fn: ``cid -> Client``; called once per client, inside its worker.
        num_clients: Clients have ids ``0 .. num_clients - 1``.
        num_workers: Worker processes (default: the CPUs this process may use).
        start_method: ``"fork"`` (``client_fn`` may be any callable), ``"forkserver"``
            or ``"spawn"`` (``client_fn`` must pickle and be importable in the workers);
            None forks (warning once if this process runs other Python threads;
            see :mod:`covey.sim._start`).
        max_waiting_bytes: A worker starts its next client only while its replies
            the round loop has not folded yet total less than this (default 32 MiB),
            so replies held for client-id order take at most about one model per
            worker; None lets workers run ahead (faster when clients' times vary a
            lot, at the cost of memory). Replies of 256 kB and less are not counted.
            See :mod:`covey.sim._pace`.

    Raises:
        ValueError: an unknown ``start_method``, a bad ``max_waiting_bytes``, or a
            ``client_fn`` it cannot send.
    """

    def __init__(
        self,
        client_fn: ClientFn,
        num_clients: int,
        *,
        num_workers: int | None = None,
        start_method: str | None = None,
        max_waiting_bytes: int | None = _pace.DEFAULT_BUDGET,
    ) -> None:
        if max_waiting_bytes is not None and (
            isinstance(max_waiting_bytes, bool)
            or not isinstance(max_waiting_bytes, int)
            or max_waiting_bytes < 0
        ):
            raise ValueError(
                f"max_waiting_bytes must be None or a non-negative int, got {max_waiting_bytes!r}"
            )
        self._budget = max_waiting_bytes
        if num_workers is None:
            num_workers = (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else (os.cpu_count() or 1)
            )
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        self._ctx = mp.get_context(_start.choose(start_method, client_fn))
        if self._ctx.get_start_method() == "forkserver":
            _start.preload(self._ctx)
        self._client_fn = client_fn
        self._clients = range(num_clients)
        self._seq = 0
        self._published: tuple[Weights | None, Any, str | None, dict[str, int]] = (
            None,
            None,
            None,
            {},
        )
        self._files: list[str] = []
        _shm.sweep_orphans()
        self._pool = f"covey-{os.getpid()}-{secrets.token_hex(4)}-"
        n = max(1, min(num_workers, num_clients))
        self._workers: list[_Worker] = []
        try:
            for i in range(n):
                self._workers.append(_Worker(self._ctx, client_fn, i, self._pool, self._budget))
        except BaseException as exc:  # the workers started so far stop
            _cleanup(self._workers, self._files, self._pool)
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                raise _too_many_files(exc, len(self._workers), n) from None
            raise
        self._finalizer = weakref.finalize(self, _cleanup, self._workers, self._files, self._pool)

    @property
    def num_workers(self) -> int:
        """The number of worker processes."""
        return len(self._workers)

    def clients(self) -> Sequence[int]:
        """Ids of the simulated clients."""
        return self._clients

    def _publish(self, task: Task) -> tuple[str | None, dict[str, int]]:
        """The broadcast file of a task's weights (and fit extras), written once per object."""
        weights = task.weights
        extras = _shm.broadcast_extras(task.kind, task.payload)
        if weights is None and extras is None:
            return None, {}
        if self._published[0] is weights and self._published[1] is extras:
            return self._published[2], self._published[3]
        parts = {
            "weights": weights,
            "extras": None if extras is None else _wire.flatten_extras(extras),
        }
        present = {k: v for k, v in parts.items() if v}
        path, sizes = _shm.write_file(f"{self._pool}w-", list(present.values()))
        self._files.append(path)
        named = dict(zip(present, sizes, strict=True))
        self._published = (weights, extras, path, named)
        if isinstance(weights, dict):
            _share(weights, _shm.map_broadcast(path, named)[0] or {})
        return path, named

    def _unlink_stale(self, keep: set[str | None]) -> None:
        # Workers that mapped an older file keep their mapping after unlink. The last
        # file published stays, whatever this exchange sent: the next task with the same
        # weights (a fit after a properties exchange) is sent that file again.
        keep = keep | {self._published[2]}
        for old in [p for p in self._files if p not in keep]:
            with contextlib.suppress(OSError):
                os.unlink(old)
            self._files.remove(old)

    def _revive(self) -> None:
        for i, worker in enumerate(self._workers):
            if not worker.alive():
                if worker.ended == "stopped":
                    pass  # at a deadline, whose warning said so: it did not die of itself
                elif worker.ended == "failed":
                    logger.warning(
                        "worker %d was stopped: it sent a message that is no reply; starting a "
                        "new one, its clients are rebuilt with client_fn",
                        i,
                    )
                elif worker.started.value:
                    logger.warning(
                        "worker %d had died (exit code %s); starting a new one, its clients "
                        "are rebuilt with client_fn",
                        i,
                        worker.process.exitcode,
                    )
                else:
                    logger.warning(
                        "worker %d: %s; trying a new one",
                        i,
                        _never_started(self._ctx.get_start_method(), worker.process.exitcode),
                    )
                with contextlib.suppress(Exception):
                    worker.conn.close()
                _shm.sweep(worker.prefix)
                self._workers[i] = _Worker(self._ctx, self._client_fn, i, self._pool, self._budget)

    def _lost(self, w: int, why: str, task: Task | None = None) -> str:
        """Reap worker ``w``, whose pipe closed or spoke nonsense, and remove its files.

        ``task``: the one it was running, whose weights a segmentation fault may
        have been a write into (BatchNorm running statistics, say: the hint names them).
        """
        worker = self._workers[w]
        process = worker.process
        process.join(5.0 if why == "died" else 0.0)
        if process.is_alive():
            process.kill()
            process.join(5.0)
            worker.ended = why
        _shm.sweep(worker.prefix)
        if why == "died" and not worker.started.value:
            return _never_started(self._ctx.get_start_method(), process.exitcode)
        hint = ""
        if process.exitcode == -signal.SIGSEGV:
            hint = _SEGFAULT_HINT
            if task is not None:
                hint += batch_norm_hint(task.weights or {}, task.kind)
        return f"worker process {why} (exit code {process.exitcode}{hint})"

    def _stop_late(
        self, w: int, late: dict[int, None], tasks: Mapping[int, Task], timeout: float | None
    ) -> Iterator[Reply]:
        """Stop worker ``w``, still busy at the deadline, and fail the clients it did not answer."""
        logger.warning(
            "worker %d missed the deadline with %s unanswered (%s); stopping it, "
            "a new one takes its clients (rebuilt with client_fn)",
            w,
            clients(len(late)),
            ", ".join(map(str, sorted(late)[:10])) + (" ..." if len(late) > 10 else ""),
        )
        self._lost(w, "stopped")
        for cid in sorted(late):
            kind = tasks[cid].kind
            yield Reply(
                cid,
                kind,
                error=f"no reply in time: its {kind} task was still unanswered after the "
                f"timeout of {timeout:g} s (its worker process was stopped and is replaced)",
            )

    def _receive(self, w: int, seq: int, pending: dict[int, None]) -> Reply | None:
        """The next reply of this exchange from worker ``w``, or None for a late one.

        Raises:
            EOFError: the worker's pipe closed.
            covey.WireError: the worker sent something that is not a reply.
        """
        worker = self._workers[w]
        data = worker.conn.recv_bytes(MAX_MESSAGE_BYTES)
        if _logs.is_logs(data):
            _logs.dispatch(data, worker.name, worker.process.pid)
            return None
        if _pace.is_wait(data):
            worker.waiting_at = _pace.waited_at(data)
            return None
        reply_seq, message, blob = _shm.parse_reply(data)
        # A file reply counts against its worker's budget until folded, freed or dropped.
        credit = _pace.Credit(worker.give) if "file" in message else None
        if reply_seq != seq or message["cid"] not in pending:
            # A late reply from an earlier, timed-out exchange (or one already answered):
            # its file goes unread.
            logger.debug(
                "worker %d: dropping a stale %s reply of client %s from exchange %d "
                "(exchange %d is running%s)",
                w,
                message["kind"],
                message["cid"],
                reply_seq,
                seq,
                "" if reply_seq != seq else "; the client has answered it already",
            )
            path = _shm.reply_file(message, worker.prefix)
            if path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if credit is not None:
                credit()
            return None
        del pending[message["cid"]]
        try:
            reply = _shm.build_reply(message, worker.prefix, blob, credit)
        except (WireError, CodecError, OSError) as exc:
            if credit is not None:
                credit()
            return Reply(message["cid"], message["kind"], error=f"unreadable reply: {exc}")
        return reply if credit is None else _pace.PacedReply(reply, credit)

    def _unstall(self, waiting: Iterable[int]) -> None:
        """Give a credit to each worker left if all wait for one and none has a message."""
        workers = [self._workers[w] for w in waiting]
        if not all(worker.stalled() for worker in workers):
            return
        if wait([worker.conn for worker in workers], timeout=0):
            return
        # The replies are held by whoever reads them, unreleased: pacing must not stall it.
        for worker in workers:
            worker.give()

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Send each worker its clients' tasks, then yield replies as they arrive.

        Args:
            tasks: The task of each client, by client id; a client's worker is
                fixed by its id. A task that cannot be sent to a worker fails
                its client, yielded first.
            timeout: Seconds for the whole exchange (None: no limit). A worker
                still busy at the deadline is stopped and replaced, and each of
                its clients not yet answered fails with ``"no reply in time"``.

        Raises:
            RuntimeError: the transport is closed (its workers would start again and
                outlive it); the replies are read as the iterator is, so read them
                before the ``with`` block ends.
        """
        if not self._finalizer.alive:
            raise RuntimeError(
                "this ProcessTransport is closed: an exchange needs it open until its "
                "replies are read (read them inside its `with` block)"
            )
        self._revive()
        self._seq += 1
        seq = self._seq
        deadline = None if timeout is None else time.monotonic() + timeout
        n = len(self._workers)
        # Group by worker and by the weights each task carries (usually one object).
        batches: dict[tuple[int, str | None], list[_shm.TaskItem]] = {}
        sizes: dict[str | None, dict[str, int]] = {}
        unsendable: list[Reply] = []
        refused = Unsent()  # a config a deployed client refuses (NaN) fails its client
        texts = TaskTexts()  # the round's shared config goes into JSON once
        for cid in sorted(tasks):
            task = tasks[cid]
            failed = refused(cid, task)
            if failed is not None:
                unsendable.append(failed)
                continue
            path, sizes[path] = self._publish(task)
            try:
                item = texts(
                    cid, task.kind, task.round, task.config, task.payload, "extras" in sizes[path]
                )
            except WireError as exc:
                error = f"cannot send the {task.kind} task to client {cid}: {exc}"
                unsendable.append(Reply(cid, task.kind, error=error))
                continue
            w = cid % n
            batches.setdefault((w, path), []).append(item)
        # Each worker's clients in the order it runs them: the first one unanswered is running.
        pending: dict[int, dict[int, None]] = {}
        for (w, path), items in batches.items():
            pending.setdefault(w, {}).update(dict.fromkeys(item[0] for item in items))
            # A dead worker is reported when its connection is read.
            with contextlib.suppress(OSError, BrokenPipeError):
                _shm.send_tasks(self._workers[w].conn, seq, path, sizes[path], items)
        yield from unsendable
        self._unlink_stale({path for _, path in batches})
        yield from self._collect(seq, tasks, pending, (deadline, timeout))

    def _collect(
        self,
        seq: int,
        tasks: Mapping[int, Task],
        pending: dict[int, dict[int, None]],
        limit: tuple[float | None, float | None],
    ) -> Iterator[Reply]:
        """Yield the replies of exchange ``seq`` as they arrive, until all are in or time is up."""
        deadline, timeout = limit
        by_conn = {self._workers[w].conn: w for w in pending}
        while by_conn:
            self._unstall(by_conn.values())
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # At most LONGEST_WAIT at once: the OS refuses longer ones (a round_timeout of days).
            ready = wait(list(by_conn), timeout=remaining and min(remaining, LONGEST_WAIT))
            if not ready and remaining is not None and remaining > LONGEST_WAIT:
                continue
            if not ready:
                # Deadline. The workers left are still busy (a client stuck in fit would
                # hold up every later round): stop them; the next exchange replaces them.
                for w in sorted(by_conn.values()):
                    yield from self._stop_late(w, pending[w], tasks, timeout)
                return
            for conn in ready:
                if not isinstance(conn, Connection):  # an invariant, not an input check
                    raise RuntimeError(f"internal error: conn is {type(conn).__name__}")
                w = by_conn[conn]
                try:
                    reply = self._receive(w, seq, pending[w])
                except (EOFError, OSError, WireError) as exc:
                    # Its pipe closed, so the worker is exiting: reap it now, so that its
                    # exit code is known and the next exchange sees it dead and replaces it.
                    running = next(iter(pending[w]))
                    ended = "died" if not isinstance(exc, WireError) else "failed"
                    error = self._lost(w, ended, tasks[running])
                    started = bool(self._workers[w].started.value)
                    for cid in sorted(pending[w]):
                        why = (
                            "this client"
                            if cid == running
                            else f"client {running}, before this one"
                        )
                        text = f"{error} running {why}" if started else error
                        yield Reply(cid, tasks[cid].kind, error=text)
                    del by_conn[conn]
                    continue
                if reply is not None:
                    yield reply
                    del reply  # folded by now: its mapping goes before the next one comes
                if not pending[w]:
                    del by_conn[conn]

    @property
    def start_method(self) -> str:
        """How the workers were started: ``"fork"``, ``"forkserver"`` or ``"spawn"``."""
        return str(self._ctx.get_start_method())

    def _drain(self, deadline: float) -> None:
        """Ask every worker to stop, and pass on the log records they send until they do."""
        left = {id(w.conn): w for w in self._workers if w.alive()}
        for worker in left.values():
            worker.ask_stop()
        while left and time.monotonic() < deadline:
            conns = [w.conn for w in left.values()]
            for conn in wait(conns, timeout=max(0.0, deadline - time.monotonic())):
                worker = left[id(conn)]
                try:
                    data = worker.conn.recv_bytes(MAX_MESSAGE_BYTES)
                    if _logs.is_logs(data):
                        _logs.dispatch(data, worker.name, worker.process.pid)
                except (EOFError, OSError, WireError):
                    del left[id(conn)]
        for worker in left.values():  # still busy in a client: stopped, as at a timeout
            worker.process.kill()

    def close(self) -> None:
        """Stop the workers (passing on their last log records) and remove the files."""
        if not self._finalizer.alive:
            return
        try:
            self._drain(time.monotonic() + 5.0)
        except BaseException:  # a second Ctrl-C: the workers go at once
            for worker in self._workers:
                with contextlib.suppress(Exception):
                    worker.process.kill()
            raise
        finally:
            self._finalizer()

    def __enter__(self) -> ProcessTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
