"""The worker side of the process backend: a loop that runs its clients' tasks until told to stop.

A worker is forked (or spawned) by :class:`covey.sim.ProcessTransport`. It
builds each of its clients with ``client_fn`` the first time it is asked, maps
the round's broadcast file read-only, and sends each reply back over its pipe,
the reply's arrays in a shared-memory file of its own (:mod:`covey.sim._shm`).
A client that trains in place trains in that file itself (:mod:`covey.sim._room`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from covey.clients._build import build_client
from covey.clients._client import ClientFn, run_task
from covey.core._messages import FitResult, Reply, Task
from covey.core._weights import Weights, WeightsError, WeightsSpec
from covey.sim import _move, _pace, _room, _shm
from covey.sim._inline import exited
from covey.sim._logs import WorkerLogs
from covey.sim._sendable import sendable
from covey.strategies._fold import contribution
from covey.transport.grpc._wire import ARRAY_KINDS

_Broadcast = tuple[Weights | None, Any]


def _exit_with_parent(pool: str) -> None:
    """Exit this worker as soon as its parent is gone, even while a client is stuck in fit.

    A parent killed outright (SIGKILL, SIGTERM, out of memory) cannot stop its
    workers; a worker waiting for a task sees its pipe close, but one running a
    client never reads it. A thread blocked on the parent's sentinel covers both.
    Nor can it remove the pool's shared-memory files (the broadcast, replies not
    yet read): the worker does, at once, rather than leave them to the next pool.
    """
    parent = mp.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        wait([sentinel])
        _shm.sweep(pool)
        os._exit(1)

    threading.Thread(target=watch, name="covey-parent-watch", daemon=True).start()


def _may_have_children() -> None:
    """Let this worker start processes of its own, as a client's ``DataLoader(num_workers=2)`` does.

    The pool starts its workers as daemons, so that the parent's exit ends
    them, and multiprocessing refuses a daemon any child ("daemonic processes
    are not allowed to have children"). The flag matters to the parent only;
    here it is cleared. A child of the worker that outlives it is the
    client's to end: a ``DataLoader``'s workers watch their parent and exit.
    """
    mp.current_process()._config["daemon"] = False  # type: ignore[attr-defined]


def _one_thread() -> None:
    """Run torch and XGBoost on one thread in this worker, once loaded (by the parent or a client).

    torch's CPU wheels and XGBoost run parallel work on GNU OpenMP, whose thread
    pool does not survive a fork: the first parallel op of a forked child (a
    BatchNorm, an add over 100,000 values, a boosting round) waits forever for
    the parent's threads once the parent had run one (XGBoost's
    ``initial_model`` does). One thread never enters that pool, and with one
    worker per CPU it is also the most a worker should use. Called again after
    each client is built, it also covers a ``client_fn`` that imports torch
    itself, so a run's bits do not depend on whether the parent had loaded torch.
    An ``nthread`` in a client's own XGBoost parameters overrides this one.
    """
    torch = sys.modules.get("torch")
    set_num_threads = getattr(torch, "set_num_threads", None)
    if set_num_threads is not None:
        set_num_threads(1)
    xgb = sys.modules.get("xgboost")
    set_config = getattr(xgb, "set_config", None)
    if set_config is not None:
        with contextlib.suppress(ValueError, TypeError):  # an XGBoost without the setting
            set_config(nthread=1)


def _fresh_hint() -> str:
    """What a worker started from a fresh interpreter lacks, for an error building a client."""
    method = mp.get_start_method(allow_none=True)
    if method in (None, "fork"):
        return ""
    return (
        f"(this worker was started with start_method={method!r}: it has what importing "
        "client_fn's module gives, not what the simulating process set up at run time, such "
        'as globals set under `if __name__ == "__main__":`, registered task kinds or '
        "patches; set those up when the module is imported, or use start_method='fork')\n"
    )


def _own_output() -> None:
    """Print to the terminal itself, not through the parent's progress bar.

    A worker started while the bar is drawn (one replacing a worker that died)
    inherits the bar's redirection of ``sys.stdout`` and ``sys.stderr``: a
    client's print would go through a copy of the bar that nothing draws (and
    redraw its stale frame under the live one), and through its lock, which the
    fork may have copied held, hanging the worker at its first print.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        setattr(sys, name, getattr(stream, "rich_proxied_file", stream))


def worker_main(
    conn: Connection,
    client_fn: ClientFn,
    pool: str,
    started: Any = None,
    levels: tuple[dict[str, int], int] | None = None,
    pacing: tuple[Any, int] | None = None,
) -> None:
    """Run the tasks the parent sends over ``conn`` until it says stop or goes away.

    Args:
        conn: This worker's end of its pipe to the parent.
        client_fn: Builds each client of this worker, once.
        pool: The name prefix of the pool's shared-memory files.
        started: A shared byte set to 1 here: a worker gone without it never started.
        levels: The parent's logger levels (see :func:`covey.sim._logs.levels`); given,
            the clients' log records go to the parent's loggers.
        pacing: The semaphore the parent gives credits on and the budget in bytes
            (see :mod:`covey.sim._pace`); None: no pacing.
    """
    if started is not None:
        started.value = 1
    logs = WorkerLogs(conn)
    if levels is not None:
        logs.install(levels)
    prefix = f"{pool}r{os.getpid()}-"  # the parent accepts reply files of this name only
    _exit_with_parent(pool)
    _may_have_children()
    _one_thread()
    # Ctrl-C, and a closed terminal's SIGHUP, reach the whole process group: the parent
    # handles them and stops the workers.
    for sig in (signal.SIGINT, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])):
        signal.signal(sig, signal.SIG_IGN)
    # A forked worker inherits the handler by which `covey run` stops on SIGTERM: SIGTERM
    # ends a worker as it ends one started otherwise (the parent replaces it or stops).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _own_output()
    pacer = None if pacing is None else _pace.Pacer(*pacing, conn, logs.send_bytes)
    clients: dict[int, Any] = {}
    current: tuple[str | None, _Broadcast] = (None, (None, None))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if data == b"stop":
            logs.push(timeout=1.0)
            return
        seq, path, sizes, items = _shm.read_tasks(data)
        map_error: str | None = None
        if path is not None and current[0] != path:
            current = (None, (None, None))  # the old mapping goes first: one broadcast at a time
            try:
                current = (path, _shm.map_broadcast(path, sizes))
            except Exception:  # noqa: BLE001 - reported to the server as each task's error
                map_error = traceback.format_exc()
        broadcast = current[1] if path is not None else (None, None)
        if not _run_batch(
            logs, seq, items, broadcast, map_error, clients, client_fn, prefix, pacer
        ):
            return


def _run_batch(
    conn: WorkerLogs,
    seq: int,
    items: list[_shm.TaskItem],
    broadcast: _Broadcast,
    map_error: str | None,
    clients: dict[int, Any],
    client_fn: ClientFn,
    prefix: str,
    pacer: _pace.Pacer | None = None,
) -> bool:
    """Run one batch of tasks and send each reply; False once the parent is gone."""
    weights, extras = broadcast
    for item in items:
        cid, kind = item[:2]
        room: _room.Room | None = None
        try:
            if pacer is not None:  # a client starts once the server has folded enough
                pacer.wait()
            if map_error is not None:
                reply = Reply(cid, kind, error=map_error)
            else:
                reply, room = _run_one(conn, item, weights, extras, clients, client_fn, prefix)
            moving = _move.movable(reply) if room is None else frozenset()
            size = _shm.send_reply(conn, seq, reply, prefix, room, moving)
            if pacer is not None:
                pacer.sent(size)
        except (BrokenPipeError, OSError):
            return False
        finally:
            if room is not None:  # removes its file unless the reply named it
                room.release()
        # The result is in shared memory now: drop it before the next client runs.
        del reply, room
    return True


def _run_one(
    conn: WorkerLogs,
    item: _shm.TaskItem,
    weights: Weights | None,
    extras: Any,
    clients: dict[int, Any],
    client_fn: ClientFn,
    prefix: str,
) -> tuple[Reply, _room.Room | None]:
    """Run one task; a client that trains in place does so in its reply's file (the room)."""
    cid, kind, rnd = item[:3]
    room: _room.Room | None = None
    conn.context = (cid, rnd)
    try:
        config, payload = _shm.task_fields(item, extras)
        client = clients.get(cid)
        if client is None:
            client = clients[cid] = build_client(client_fn, cid)
            _one_thread()
        task = Task(kind, rnd, config, weights, payload)
        room = _room.for_task(client, task, prefix)
        if room is not None:
            task = replace(task, weights=room.weights)
        return _sendable(run_task(client, cid, task), task), room
    except Exception:  # noqa: BLE001 - building the client failed: the task's error
        if room is not None:
            room.release()
        error = traceback.format_exc()
        if cid not in clients:
            error += _fresh_hint()
        return Reply(cid, kind, error=error), None
    except BaseException as exc:  # noqa: BLE001 - sys.exit(), a CancelledError: the client's
        # The client's alone: left to end the worker, it would fail the clients queued
        # behind it too, and cost a new worker. A KeyboardInterrupt too: workers ignore
        # SIGINT (Ctrl-C stops the run in the simulating process), so the client raised it.
        if room is not None:
            room.release()
        return Reply(cid, kind, error=traceback.format_exc() + exited(exc, kind)), None
    finally:
        conn.context = None


def _sendable(reply: Reply, task: Task) -> Reply:
    """``reply``, or the server's own error for a fit result of arrays no pipe carries.

    Arrays of a dtype the codec refuses (object, complex, strings, datetimes) would
    fail as "cannot send the result"; the server refuses them anyway for not
    matching the model, and on the inline and Ray backends says so (``client 1's
    weights: 'w' has dtype object, expected float64``). Checked here against the
    weights the task carried, the error is the same on every backend. So is a
    result too large to send (a metric of 2 million characters; see
    :mod:`covey.sim._sendable`), checked first, as the inline backend does.
    """
    reply = sendable(reply, task.weights)
    result = reply.result
    if not isinstance(result, FitResult) or task.weights is None:
        return reply
    arrays = result.weights if result.weights is not None else result.delta
    parts = [arrays or {}, *result.extras.values()]
    if all(a.dtype.kind in ARRAY_KINDS for part in parts for a in part.values()):
        return reply
    try:
        contribution(reply.cid, result, WeightsSpec.of(task.weights))
    except WeightsError as exc:
        return Reply(reply.cid, reply.kind, error=str(exc))
    return reply
