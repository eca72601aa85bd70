"""The process backend's worker processes: starting one, and stopping the pool.

Each :class:`Worker` is one process running :func:`covey.sim._worker.worker_main`
with its end of a pipe; :func:`cleanup` stops them all and removes the pool's
shared-memory files.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from covey.clients._client import ClientFn
from covey.clients._quiet import ignoring
from covey.core import _gcstart
from covey.sim import _logs, _shm
from covey.sim._worker import worker_main

__all__ = ["Worker", "cleanup", "never_started", "too_many_files"]

_FORK_WARNING = r"This process .* is multi-threaded, use of fork\(\) may lead to deadlocks"


def never_started(method: str, exitcode: int | None) -> str:
    """Why a worker whose ``worker_main`` never ran is gone: the likely causes, by start method."""
    if method == "fork":
        return f"worker process never started (exit code {exitcode}); see its error on stderr"
    return (
        f"worker process never started (exit code {exitcode}): with start_method={method!r} "
        "each worker imports the main module anew and unpickles client_fn before it starts. "
        "A script that starts the simulation at its top level, not under "
        '`if __name__ == "__main__":`, ends every worker this way (multiprocessing\'s '
        "RuntimeError on stderr), as does a client_fn a fresh interpreter cannot import "
        "(defined in a notebook or the interactive prompt): guard the script's entry point, "
        "define client_fn in an importable module, or use start_method='fork'"
    )


@contextlib.contextmanager
def _frozen(ctx: Any) -> Iterator[None]:
    """Fork with the parent's objects frozen (:func:`gc.freeze`), then thaw them in the parent.

    A forked worker shares the parent's pages until it writes to them, and a
    collection of the oldest generation writes into every object it visits: the
    first one in a worker would copy each page of the parent's heap that holds
    one. The worker keeps them frozen, out of its collections; the parent's stay
    as they were. A parent that froze objects itself is left as it is (the
    interpreter's own frozen objects do not count: :mod:`covey.core._gcstart`).
    """
    if ctx.get_start_method() != "fork" or _gcstart.others_frozen():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Worker:
    """One worker process and the parent's end of its pipe.

    Args:
        ctx: The multiprocessing context to start it with.
        client_fn: Builds the worker's clients.
        index: Its place in the pool (its name).
        pool: The name prefix of the pool's shared-memory files.
        budget: Bytes of unfolded replies it may have and still start a client
            (see :mod:`covey.sim._pace`); None: no pacing.
    """

    __slots__ = (
        "conn",
        "credits",
        "ended",
        "given",
        "name",
        "prefix",
        "process",
        "started",
        "waiting_at",
    )

    def __init__(
        self, ctx: Any, client_fn: ClientFn, index: int, pool: str, budget: int | None = None
    ) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.name = f"covey-worker-{index}"
        # Set by worker_main as it begins: a worker gone without it never started.
        self.started = ctx.RawValue("b", 0)
        #: Why the parent killed it ("stopped" at a deadline, "failed": no reply sent), or None.
        self.ended: str | None = None
        #: Pacing: credits given so far, and the count the worker said it waits at.
        self.credits = None if budget is None else ctx.Semaphore(0)
        self.given = 0
        self.waiting_at: int | None = None
        pacing = None if budget is None else (self.credits, budget)
        self.process = ctx.Process(
            target=worker_main,
            args=(child, client_fn, pool, self.started, _logs.levels(), pacing),
            name=self.name,
            daemon=True,
        )
        try:
            # Python 3.12+ warns of any thread, NumPy's OpenBLAS pool too; the method was
            # chosen knowingly (see covey.sim._start), and the backend warns of its own.
            # ``ignoring`` leaves the filters of other threads alone.
            with ignoring(DeprecationWarning, _FORK_WARNING), _frozen(ctx):
                self.process.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.conn: Connection = parent
        #: The names of the reply files this worker writes.
        self.prefix = f"{pool}r{self.process.pid}-"

    def alive(self) -> bool:
        return bool(self.process.is_alive())

    def give(self) -> None:
        """Give the worker one credit: a reply of its is folded, freed or dropped."""
        if self.credits is not None:
            self.given += 1
            self.credits.release()

    def stalled(self) -> bool:
        """Whether the worker waits for a credit and none was given since it said so."""
        return self.waiting_at is not None and self.waiting_at >= self.given

    def ask_stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send_bytes(b"stop")

    def stop(self, deadline: float) -> None:
        """Wait until ``deadline`` (monotonic) for the worker to exit, then kill it."""
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.conn.close()


def cleanup(workers: list[Worker], files: list[str], pool: str) -> None:
    # Every worker is told at once and given the same 5 s: workers stuck in a client's
    # fit are killed together, so Ctrl-C does not wait 5 s for each in turn. A second
    # Ctrl-C in those 5 s kills them at once (this runs once: a worker left now is left
    # for good, and it ignores SIGINT), and the files go all the same.
    try:
        for worker in workers:
            worker.ask_stop()
        deadline = time.monotonic() + 5.0
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.stop(deadline)
    except BaseException:
        for worker in workers:  # a signal to each first: nothing here waits
            with contextlib.suppress(Exception):
                worker.process.kill()
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.process.join(1.0)
                worker.conn.close()
        raise
    finally:
        for path in files:
            with contextlib.suppress(OSError):
                os.unlink(path)
        files.clear()
        # Replies written but never read: a timed-out round, a worker stopped mid-write.
        _shm.sweep(pool)


def too_many_files(exc: OSError, started: int, wanted: int) -> OSError:
    """The error of a pool that ran out of file descriptors while its workers started."""
    try:
        import resource

        limit = f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]} files"
    except ImportError:  # pragma: no cover - not POSIX
        limit = "a limited number of files"
    return OSError(
        exc.errno,
        f"cannot start worker {started + 1} of num_workers={wanted}: {exc.strerror}; this "
        f"process may open {limit} (ulimit -n) and each worker holds two; give fewer "
        "num_workers or raise the limit",
    )
