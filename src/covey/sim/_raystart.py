"""Starting or joining the Ray a run uses; a local Ray started here is watched.

A local Ray started for a run ends with the process that started it, even one
killed with SIGKILL: Ray ties most of its processes to it, and on Linux a
watchdog (:mod:`covey.sim._raywatch`) ends the others.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

from covey.core._extras import MissingExtraError
from covey.core._interrupt import stop_signals
from covey.sim._rayplan import check_joined, check_reachable, unpicklable
from covey.sim._raywatch import watch

logger = logging.getLogger("covey")

#: Seconds a local Ray has to start by default (``simulate(ray_start_timeout=...)``).
LOCAL_START_TIMEOUT = 120.0
#: What Ray reads for the seconds its GCS has to start.
WAIT_VARIABLE = "RAY_gcs_server_port_wait_time_s"
ENVIRONMENT_SET = "(set in the environment)"
#: Starts of a local Ray tried while ``ray_start_timeout`` has time left (see start_again).
START_ATTEMPTS = 3


#: What makes Ray keep to this machine; set by :func:`ray_module` for a local Ray.
ONE_HOST = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: ``[ONE_HOST]`` once this process set it before importing Ray.
_ours: list[str] = []


def ray_module(local: bool = False) -> Any:
    """The ``ray`` module, or a clear error naming the extra that installs it."""
    imported = sys.modules.get("ray")
    again = bool(_ours) and imported is not None and not imported.is_initialized()
    if local and (imported is None or again) and ONE_HOST not in os.environ:
        # A Ray started here serves only this machine: no multi-node cluster on
        # Windows or macOS, where Ray then binds to loopback (Ray reads this when
        # imported). On Linux Ray's servers listen on every interface regardless.
        # Set for each local Ray's processes, taken back by shutdown(): a `ray start
        # --address` run from this process afterwards refused to join, even on Linux.
        os.environ[ONE_HOST] = "0"
        _ours[:] = [ONE_HOST]
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError("backend='ray' needs Ray: pip install 'covey[ray]'") from exc
    one_host_as_set(ray)
    return ray


def one_host_as_set(ray: Any) -> None:
    """Make this process's Ray follow :data:`ONE_HOST` as the environment has it now.

    Ray reads it once, when imported: a cluster run after a local run in the same
    process registered its driver on 127.0.0.1 (unreachable from the other nodes)
    though :func:`shutdown` had taken the variable back.
    """
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        return  # another Ray's internals: left as that Ray has them
    default = not (sys.platform == "darwin" or sys.platform == "win32")
    value = os.environ.get(ONE_HOST)
    on = default if value is None else value.lower() in ("1", "true")
    constants.ENABLE_RAY_CLUSTER = on


def release_one_host(ray: Any) -> None:
    """Take back :data:`ONE_HOST` if this process set it and no Ray of its own runs."""
    if _ours and os.environ.get(ONE_HOST) == "0" and not ray.is_initialized():
        os.environ.pop(ONE_HOST)
    one_host_as_set(ray)


class _Discarded(io.RawIOBase):
    """A file that takes every byte written to it and keeps none."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return memoryview(data).nbytes


def check_pickles(ray: Any, client_fn: object) -> None:
    """Refuse a ``client_fn`` that Ray could not send to its actors, before Ray starts.

    Ray pickles it for each actor it starts: one that does not pickle failed only
    once a local Ray had started, or a cluster had been joined.

    Raises:
        TypeError: naming what in ``client_fn`` does not pickle.
    """
    try:  # into a sink that keeps nothing: no copy of the data client_fn holds
        ray.cloudpickle.dump(client_fn, _Discarded())
    except Exception as exc:  # whatever pickling raised: named below
        found = io.StringIO()  # Ray's own account of the culprit, as Ray would give it
        with contextlib.suppress(Exception), contextlib.redirect_stdout(found):
            ray.util.inspect_serializability(client_fn, name="client_fn")
        why = found.getvalue() if "FAIL serialization:" in found.getvalue() else str(exc)
        raise TypeError(unpicklable(client_fn, Exception(why))) from exc


def start_or_join(
    ray: Any,
    address: str | None,
    init_args: Mapping[str, Any] | None,
    timeout: float | None = None,
) -> bool:
    """Start or join a Ray unless this process has one already; whether it did.

    ``timeout``: seconds a cluster at ``address`` has to answer (None: 10 s), or
    a local Ray has to start (None: :data:`LOCAL_START_TIMEOUT`). A local Ray that
    fails to start leaves none of its processes running.
    """
    if ray.is_initialized():
        if address is not None:
            check_joined(address, str(ray.get_runtime_context().gcs_address))
        return False
    if address is not None:
        check_reachable(address, 10.0 if timeout is None else timeout)
    # "local" starts a new Ray: None would join any Ray already running here.
    kwargs: dict[str, Any] = {
        "address": address if address is not None else "local",
        "include_dashboard": False,
        "log_to_driver": True,
    }
    kwargs.update(init_args or {})
    local = kwargs["address"] == "local"
    deadline = time.monotonic() + (LOCAL_START_TIMEOUT if timeout is None else timeout)
    with (
        held_signals() as held,
        kept_logging(kwargs),
        local_start_wait(local, timeout) as wait,
    ):
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                _env_before[:] = [dict(os.environ)]
                ray.init(**kwargs)
                break
            except BaseException as exc:
                if not local:
                    if isinstance(exc, ConnectionError):  # "Failed to connect to Ray cluster"
                        exc.add_note(joining_failed(str(address)))
                    raise
                stop_started(ray, exc)  # stopped even when interrupted a second time
                if attempt < START_ATTEMPTS and start_again(exc, wait, deadline):
                    continue
                if isinstance(exc, Exception):
                    exc.add_note(local_start_failed(wait))
                raise
    _env_before.append(dict(os.environ))
    try:
        for handler, signum in held:
            handler(signum, None)  # Ctrl-C's raises KeyboardInterrupt, now that Ray can stop
    except BaseException:
        shutdown(ray)
        raise
    return True


#: The ``ray.init`` arguments by which a caller asks Ray to set up its own logger.
_RAY_LOGGING_ARGS = ("configure_logging", "logging_level", "logging_format")


@contextlib.contextmanager
def kept_logging(init_args: Mapping[str, Any]) -> Iterator[None]:
    """Put back, after the block, the logging that ``ray.init`` changes in this process.

    ``ray.init`` gives every handler of the ``ray`` logger Ray's format and sets that
    logger's level to INFO, each time it is called. A handler of the user's own
    there (or one that pytest's log capture attaches to every logger that does not
    propagate, the root logger's) printed all that it handled in Ray's format from
    then on, covey's lines too; a ``ray`` logger quietened by the user spoke again.
    Left as Ray sets them when ``init_args`` names one of Ray's logging arguments.
    """
    if any(name in init_args for name in _RAY_LOGGING_ARGS):
        yield
        return
    ray_logger = logging.getLogger("ray")
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    formats = {
        handler: handler.formatter
        for logger in loggers
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
    }
    level = ray_logger.level
    try:
        yield
    finally:
        ray_logger.setLevel(level)
        for handler, formatter in formats.items():
            if handler.formatter is not formatter:
                handler.setFormatter(formatter)


#: This process's environment before, and after, its Ray was started or joined (one
#: Ray per process): the variables ``ray.init`` set are put back by :func:`shutdown`.
_env_before: list[dict[str, str]] = []


def shutdown(ray: Any) -> None:
    """Stop the Ray that :func:`start_or_join` started or joined, as this process had it.

    ``ray.init`` sets variables in this process's environment and ``ray.shutdown``
    leaves them: ``PYTHONBREAKPOINT`` names Ray's driver hook (``breakpoint()`` in
    the notebook or script that ran a simulation then waited for a remote debugger,
    or did nothing, instead of starting pdb), ``RAY_AUTH_MODE=token`` and
    ``RAY_USAGE_STATS_ENABLED``, all passed on to every process started from it
    after the run. Each is put back as it was, unless changed since ``ray.init``.
    """
    try:
        ray.shutdown()
    finally:
        release_one_host(ray)
        if _env_before:
            before = _env_before[0]
            after = _env_before[1] if len(_env_before) > 1 else dict(os.environ)
            _env_before.clear()
            for name in {*before, *after} - {WAIT_VARIABLE}:  # that one: local_start_wait's
                if before.get(name) == after.get(name) or os.environ.get(name) != after.get(name):
                    continue
                if name in before:
                    os.environ[name] = before[name]
                else:
                    os.environ.pop(name, None)


def start_again(exc: BaseException, wait: str, deadline: float) -> bool:
    """Whether a local Ray that timed out starting is started again (and says so).

    Ray gives its raylet a fixed 30 s to start, which no setting raises: on a busy
    machine a start can time out there while ``ray_start_timeout`` has time left.
    A wait set in the environment is the user's own: that start is not repeated.
    """
    timed_out = isinstance(exc, Exception) and "timed out" in str(exc).lower()
    if not timed_out or wait.endswith(ENVIRONMENT_SET) or time.monotonic() >= deadline:
        return False
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    logger.warning("the local Ray did not start in time (%s); starting it again", first[:200])
    return True


@contextlib.contextmanager
def local_start_wait(local: bool, timeout: float | None) -> Iterator[str]:
    """Give a local Ray ``timeout`` seconds to start its GCS while the block runs.

    Ray waits 30 s by default for its GCS to say its port, which a busy machine
    can exceed ("Timed out waiting for file .../gcs_server_port"). Ray reads
    ``RAY_gcs_server_port_wait_time_s`` when it starts; one set already is kept.
    Yields what bounds the wait, for an error to name.
    """
    if not local or WAIT_VARIABLE in os.environ:
        yield f"{WAIT_VARIABLE}={os.environ.get(WAIT_VARIABLE, '')} {ENVIRONMENT_SET}"
        return
    seconds = LOCAL_START_TIMEOUT if timeout is None else timeout
    # Whole seconds, at least one; Ray's wait is a C int of milliseconds.
    os.environ[WAIT_VARIABLE] = str(min(max(1, math.ceil(seconds)), 2_000_000))
    try:
        yield f"ray_start_timeout={seconds:g} s"
    finally:
        os.environ.pop(WAIT_VARIABLE, None)


def stop_started(ray: Any, exc: BaseException) -> None:
    """Stop the processes a local Ray that failed to start had started, and wait for them.

    Ray leaves them running (its GCS server, when its port did not come in time)
    until this process ends; the ``ray._private.node.Node`` that started them is
    found in the traceback of ``exc``.
    """
    node_type = getattr(getattr(getattr(ray, "_private", None), "node", None), "Node", None)
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen and isinstance(node_type, type):
        seen.add(id(cause))
        trace = cause.__traceback__
        while trace is not None:
            node = trace.tb_frame.f_locals.get("self")
            if isinstance(node, node_type):
                with contextlib.suppress(Exception):  # stopped as far as can be
                    cast(Any, node).kill_all_processes(check_alive=False, wait=True)
                break
            trace = trace.tb_next
        cause = cause.__cause__ or cause.__context__
    with contextlib.suppress(Exception):  # a Ray that started part-way then failed
        shutdown(ray)


def local_start_failed(wait: str) -> str:
    """What to do when a local Ray did not start within ``wait``."""
    return (
        f"the local Ray started for this run did not start (its GCS given {wait}, its "
        "raylet Ray's fixed 30 s, each start tried); the processes it had started were "
        "stopped. A busy machine can take longer: raise ray_start_timeout, run fewer "
        "processes beside it, or give ray_address a Ray started beforehand (ray start --head)"
    )


def joining_failed(address: str) -> str:
    """What to check when Ray could not join the cluster at ``address``.

    A head started with ``RAY_AUTH_MODE=token`` refuses a driver without its token,
    and one of another Ray or Python version fails it too; Ray says only that it
    could not connect, after about 20 s.
    """
    return (
        f"could not join the Ray cluster at {address}: if it was started with "
        "RAY_AUTH_MODE=token, give this process RAY_AUTH_MODE=token and the cluster's token "
        "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); run the cluster's Ray "
        "and Python versions here; and give the head node's address (the --port of `ray "
        "start --head`, 6379 by default)"
    )


@contextlib.contextmanager
def held_signals() -> Iterator[list[tuple[Any, int]]]:
    """Hold SIGINT, SIGTERM and SIGHUP back while the block runs; the list has those that came.

    Each as ``(handler, signal number)``, the Python handler it was to run. Ray
    interrupted while it starts (Ctrl-C in ``ray.init``) left its agents running
    for a minute or more, or ended the process with a segmentation fault: held,
    the signal is handled once Ray has started and can be stopped. A second one is
    handled at once (a Ray that does not start is interrupted). Signals whose
    handler is not Python's (the default action, ignored) are not held, and
    signals outside the main thread are left as they are.

    Every one of these handlers is put back after the block: ``ray.init`` sets a
    SIGTERM handler of its own (``sys.exit``), which ``ray.shutdown`` leaves in
    place; kept, a process that had run a Ray simulation (a notebook's, a
    ``covey run``'s) no longer ended, or stopped as it had been told to, on SIGTERM.
    """
    held: list[tuple[Any, int]] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    before: dict[int, Any] = {
        int(sig): signal.getsignal(sig) for sig in (signal.SIGINT, *stop_signals())
    }

    def hold(signum: int, frame: Any) -> None:
        held.append((before[signum], signum))
        signal.signal(signum, before[signum])  # a second one is not held: a Ray stuck starting

    for sig, handler in before.items():
        if callable(handler):
            signal.signal(sig, hold)
    try:
        yield held
    finally:
        for signum, handler in before.items():
            if handler is not None:  # None: set outside Python, which cannot set it back
                signal.signal(signum, handler)


def watch_local(ray: Any) -> subprocess.Popen[bytes] | None:
    """Start the watchdog that ends the local Ray this process started if it dies.

    None where there is none: not on Linux, or a Ray that does not say its session
    folder (Ray's own ties to this process then end most of its processes).
    """
    try:
        session = str(ray._private.worker._global_node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - another Ray's internals: watched as Ray watches it
        return None
    try:
        return watch(session)
    except OSError as exc:  # no process can be started: the run goes on
        logger.warning("could not start the watchdog of the local Ray %s: %s", session, exc)
        return None
