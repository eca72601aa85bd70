"""The process backend: a pool of long-lived worker processes, each owning a share of the clients.

Per round, the global weights are encoded once into a shared-memory file that
every worker maps and decodes without copying; each task message carries only
a reference to it. A worker builds each of its clients with ``client_fn`` the
first time it is asked and reuses it in every later round, so clients keep
their data and state warm. Replies return over a pipe with their arrays sent
out-of-band (pickle protocol 5), and reach the round loop as they arrive.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing as mp
import os
import pickle
import tempfile
import time
import traceback
import weakref
from collections.abc import Iterator, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from covey.clients._client import ClientFn, run_task
from covey.core import _codec
from covey.core._messages import Reply, Task
from covey.core._weights import Weights

logger = logging.getLogger("covey")

_TaskItem = tuple[int, str, int, Mapping[str, Any], Any]


def _shm_dir() -> str:
    path = "/dev/shm"  # noqa: S108 - the shared-memory file system; each file gets a random name
    if os.path.isdir(path) and os.access(path, os.W_OK):
        return path
    return tempfile.gettempdir()


def _map_weights(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    # The arrays view the mapping; it stays alive as long as any array does.
    return _codec.decode(memoryview(mm), verify=False)


def _send_reply(conn: Connection, seq: int, reply: Reply) -> None:
    buffers: list[pickle.PickleBuffer] = []
    try:
        body = pickle.dumps((seq, reply), protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001 - whatever fails to pickle becomes the client's error
        buffers = []
        failed = Reply(reply.cid, reply.kind, error=traceback.format_exc())
        body = pickle.dumps((seq, failed), protocol=5)
    conn.send_bytes(len(buffers).to_bytes(4, "little") + body)
    for buf in buffers:
        conn.send_bytes(buf.raw())


def _recv_reply(conn: Connection) -> tuple[int, Reply]:
    head = conn.recv_bytes()
    count = int.from_bytes(head[:4], "little")
    buffers = [conn.recv_bytes() for _ in range(count)]
    # Our own worker process over a private pipe, never the network or a file.
    seq, reply = pickle.loads(memoryview(head)[4:], buffers=buffers)  # noqa: S301
    return int(seq), reply


def _worker_main(conn: Connection, client_fn: ClientFn) -> None:
    clients: dict[int, Any] = {}
    current: tuple[str | None, Weights | None] = (None, None)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if message[0] == "stop":
            return
        _, seq, path, items = message
        weights: Weights | None = None
        map_error: str | None = None
        if path is not None:
            if current[0] != path:
                try:
                    current = (path, _map_weights(path))
                except Exception:  # noqa: BLE001 - reported to the server as each task's error
                    current = (None, None)
                    map_error = traceback.format_exc()
            weights = current[1]
        for cid, kind, rnd, config, payload in items:
            if map_error is not None:
                reply = Reply(cid, kind, error=map_error)
            else:
                try:
                    client = clients.get(cid)
                    if client is None:
                        client = clients[cid] = client_fn(cid)
                    reply = run_task(client, cid, Task(kind, rnd, config, weights, payload))
                except Exception:  # noqa: BLE001 - building the client failed: the task's error
                    reply = Reply(cid, kind, error=traceback.format_exc())
            try:
                _send_reply(conn, seq, reply)
            except (BrokenPipeError, OSError):
                return


class _Worker:
    __slots__ = ("conn", "process")

    def __init__(self, ctx: Any, client_fn: ClientFn, index: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main, args=(child, client_fn), name=f"covey-worker-{index}", daemon=True
        )
        self.process.start()
        child.close()
        self.conn: Connection = parent

    def alive(self) -> bool:
        return bool(self.process.is_alive())

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(("stop",))
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.conn.close()


def _cleanup(workers: list[_Worker], files: list[str]) -> None:
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.stop()
    for path in files:
        with contextlib.suppress(OSError):
            os.unlink(path)


class ProcessTransport:
    """Clients live in a pool of worker processes; client ``cid`` lives in worker ``cid % n``.

    Args:
        client_fn: ``cid -> Client``; called once per client, inside its worker.
        num_clients: Clients have ids ``0 .. num_clients - 1``.
        num_workers: Worker processes (default: the CPUs this process may use).
        start_method: ``"fork"`` (default where available: ``client_fn`` may be
            any callable), ``"forkserver"`` or ``"spawn"`` (``client_fn`` must pickle).
    """

    def __init__(
        self,
        client_fn: ClientFn,
        num_clients: int,
        *,
        num_workers: int | None = None,
        start_method: str | None = None,
    ) -> None:
        if num_workers is None:
            num_workers = (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else (os.cpu_count() or 1)
            )
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        if start_method is None:
            start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self._ctx = mp.get_context(start_method)
        self._client_fn = client_fn
        self._clients = range(num_clients)
        self._seq = 0
        self._published: tuple[Weights | None, str | None] = (None, None)
        self._files: list[str] = []
        n = max(1, min(num_workers, num_clients))
        self._workers = [_Worker(self._ctx, client_fn, i) for i in range(n)]
        self._finalizer = weakref.finalize(self, _cleanup, self._workers, self._files)

    @property
    def num_workers(self) -> int:
        """The number of worker processes."""
        return len(self._workers)

    def clients(self) -> Sequence[int]:
        """Ids of the simulated clients."""
        return self._clients

    def _publish(self, weights: Weights | None) -> str | None:
        if weights is None:
            return None
        if self._published[0] is weights:
            return self._published[1]
        size = _codec.encoded_size(weights)
        fd, path = tempfile.mkstemp(prefix="covey-weights-", dir=_shm_dir())
        try:
            os.ftruncate(fd, size)
            with mmap.mmap(fd, size) as mm:
                _codec.encode_into(weights, memoryview(mm))
        finally:
            os.close(fd)
        self._files.append(path)
        self._published = (weights, path)
        return path

    def _unlink_stale(self, keep: set[str | None]) -> None:
        # Workers that mapped an older file keep their mapping after unlink.
        for old in [p for p in self._files if p not in keep]:
            with contextlib.suppress(OSError):
                os.unlink(old)
            self._files.remove(old)

    def _revive(self) -> None:
        for i, worker in enumerate(self._workers):
            if not worker.alive():
                logger.warning(
                    "worker %d had died (exit code %s); starting a new one, its clients "
                    "are rebuilt with client_fn",
                    i,
                    worker.process.exitcode,
                )
                with contextlib.suppress(Exception):
                    worker.conn.close()
                self._workers[i] = _Worker(self._ctx, self._client_fn, i)

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Send each worker its clients' tasks, then yield replies as they arrive."""
        self._revive()
        self._seq += 1
        seq = self._seq
        deadline = None if timeout is None else time.monotonic() + timeout
        n = len(self._workers)
        # Group by worker and by the weights each task carries (usually one object).
        batches: dict[tuple[int, str | None], list[_TaskItem]] = {}
        pending: dict[int, set[int]] = {}
        for cid in sorted(tasks):
            task = tasks[cid]
            path = self._publish(task.weights)
            w = cid % n
            batches.setdefault((w, path), []).append(
                (cid, task.kind, task.round, task.config, task.payload)
            )
            pending.setdefault(w, set()).add(cid)
        for (w, path), items in batches.items():
            # A dead worker is reported when its connection is read.
            with contextlib.suppress(OSError, BrokenPipeError):
                self._workers[w].conn.send(("run", seq, path, items))
        self._unlink_stale({path for _, path in batches})
        by_conn = {self._workers[w].conn: w for w in pending}
        while by_conn:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait(list(by_conn), timeout=remaining)
            if not ready:
                return  # deadline: the loop records the missing clients
            for conn in ready:
                if not isinstance(conn, Connection):  # an invariant, not an input check
                    raise RuntimeError(f"internal error: conn is {type(conn).__name__}")
                w = by_conn[conn]
                try:
                    reply_seq, reply = _recv_reply(conn)
                except (EOFError, OSError):
                    # Its pipe closed, so the worker is exiting: reap it now, so that its
                    # exit code is known and the next exchange sees it dead and replaces it.
                    process = self._workers[w].process
                    process.join(5.0)
                    if process.is_alive():
                        process.kill()
                        process.join(5.0)
                    code = process.exitcode
                    for cid in sorted(pending[w]):
                        yield Reply(
                            cid,
                            tasks[cid].kind,
                            error=f"worker process died (exit code {code}) running this client",
                        )
                    del by_conn[conn]
                    continue
                if reply_seq != seq or reply.cid not in pending[w]:
                    continue  # a late reply from an earlier, timed-out exchange
                pending[w].discard(reply.cid)
                yield reply
                if not pending[w]:
                    del by_conn[conn]

    def close(self) -> None:
        """Stop the workers and remove the shared-memory files."""
        self._finalizer()

    def __enter__(self) -> ProcessTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
