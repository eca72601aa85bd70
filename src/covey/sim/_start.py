"""How the process backend starts its workers: ``fork``, ``forkserver`` or ``spawn``.

``fork`` copies this process: the workers start at once and ``client_fn`` may
be any callable (a lambda, a closure, a class defined in a notebook), but a
lock that another thread of this process held at that moment stays held in
the worker for good, and the first client to take it (a log handler, an
allocator, a library's thread pool) hangs. ``forkserver`` and ``spawn`` start
each worker from a process that runs no other thread, so nothing is inherited
held, but ``client_fn`` travels to the worker pickled: it must be importable
there by name.

With ``start_method=None`` the backend forks (where the platform can), so what
workers see never depends on which threads happen to run: a patch, a global or
a task kind set up at run time reaches them the same way every time. When this
process runs other Python threads it warns, once, naming them and saying how
to start workers from the fork server instead.
"""

from __future__ import annotations

import ast
import functools
import logging
import multiprocessing as mp
import os
import pickle
import sys
import threading
import types
from typing import Any

logger = logging.getLogger("covey")

#: The start methods the process backend accepts (where the platform has them).
START_METHODS = ("fork", "forkserver", "spawn")

_ADVICE = (
    "define client_fn (and the client class it builds) at the top level of a module the "
    "workers can import (a functools.partial of such a function works too), or pass "
    "start_method='fork'"
)


def check_start_method(value: object) -> str | None:
    """``value`` if it names a start method this platform has (or is None), else a clear error.

    Raises:
        ValueError: ``value`` is not one of ``"fork"``, ``"forkserver"``, ``"spawn"`` or
            None, or this platform lacks it.
    """
    if value is None:
        return None
    if not isinstance(value, str) or value not in START_METHODS:
        raise ValueError(
            f"start_method must be None (choose for me), 'fork', 'forkserver' or 'spawn', "
            f"got {value!r}"
        )
    if value not in mp.get_all_start_methods():
        raise ValueError(
            f"start_method={value!r} is not available on this platform; choose one of "
            f"{', '.join(repr(m) for m in mp.get_all_start_methods())}"
        )
    return value


def python_threads() -> int:
    """The Python threads this process runs (the main one included).

    Native pools are not counted: NumPy's OpenBLAS runs one from its import on
    and prepares it for a fork itself, and each worker runs torch on one thread
    (see :mod:`covey.sim._worker`). Python threads are what hold the locks of
    logging handlers, queues and streams.
    """
    return threading.active_count()


class _Discard:
    def write(self, data: Any) -> int:
        return memoryview(data).nbytes  # bytes, or a PickleBuffer of a large array


class _Pickler(pickle.Pickler):
    """Pickles into nothing and notes the functions and classes it names in ``__main__``."""

    def __init__(self) -> None:
        super().__init__(_Discard(), protocol=pickle.HIGHEST_PROTOCOL)
        self.in_main: list[str] = []

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type | types.FunctionType) and obj.__module__ == "__main__":
            self.in_main.append(obj.__qualname__)
        return NotImplemented


def _name(client_fn: object) -> str:
    if isinstance(client_fn, functools.partial):
        return f"functools.partial({_name(client_fn.func)}, ...)"
    name = getattr(client_fn, "__qualname__", None) or type(client_fn).__qualname__
    module = getattr(client_fn, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def unsendable(client_fn: object, method: str) -> str | None:
    """Why ``client_fn`` cannot reach a worker started with ``method``, or None if it can.

    It must pickle, and whatever it names in ``__main__`` must be importable by a
    new interpreter: a script's ``__main__`` is (the worker runs the script's
    top level again), a notebook's or the interactive prompt's is not.
    """
    pickler = _Pickler()
    try:
        pickler.dump(client_fn)
    except Exception as exc:  # noqa: BLE001 - whatever pickle raises, the reason is reported
        return (
            f"client_fn {_name(client_fn)} cannot be sent to worker processes started with "
            f"start_method={method!r}: it does not pickle ({type(exc).__name__}: {exc}); a "
            f"lambda or a function defined inside another function never does; {_ADVICE}"
        )
    main = sys.modules.get("__main__")
    if pickler.in_main and getattr(main, "__file__", None) is None:
        names = ", ".join(dict.fromkeys(pickler.in_main))
        return (
            f"client_fn {_name(client_fn)} cannot be sent to worker processes started with "
            f"start_method={method!r}: it needs {names}, defined in __main__ of a notebook or "
            f"the interactive prompt, which a new worker process cannot import; {_ADVICE}"
        )
    return None


_UNGUARDED = (
    "the script {path} starts the simulation at its top level, not under "
    '`if __name__ == "__main__":`, and a worker started afresh imports the script again'
)


def _guarded(path: str, line: int) -> bool:
    """Whether ``line`` of the script ``path`` is inside ``if __name__ == "__main__":``."""
    try:
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return False  # cannot tell: taken as unguarded, which forks as before
    for node in ast.walk(tree):
        if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
            continue
        sides = [node.test.left, *node.test.comparators]
        names = {side.id for side in sides if isinstance(side, ast.Name)}
        texts = {side.value for side in sides if isinstance(side, ast.Constant)}
        if names == {"__name__"} and texts == {"__main__"}:
            body_end = max(getattr(n, "end_lineno", 0) or 0 for n in node.body)
            if node.lineno <= line <= body_end:
                return True
    return False


def unguarded_main() -> str | None:
    """The path of the main script if this call comes from its unguarded top level, else None.

    A worker started by ``forkserver`` or ``spawn`` imports the main script
    again; one that starts the simulation at its top level would start it again
    there (and fail). A notebook or the interactive prompt has no script to import.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not isinstance(path, str) or os.path.basename(path) == "__main__.py":
        return None  # multiprocessing never imports a package's __main__.py again
    frame: types.FrameType | None = sys._getframe(1)  # the stack tells where the run starts
    while frame is not None:
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            return None if _guarded(path, frame.f_lineno) else path
        frame = frame.f_back
    return None


def preload(ctx: Any) -> None:
    """Have the fork server import the worker's modules once, before it starts.

    Each worker is then forked from a server that has covey and NumPy loaded,
    instead of importing them anew. A server already running keeps what it has;
    modules the application asked it to preload stay.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    modules = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if "covey.sim._worker" not in modules and getattr(server, "_forkserver_pid", 0) is None:
        ctx.set_forkserver_preload([*modules, "covey.sim._worker"])


_warned_threads = False


def choose(start_method: str | None, client_fn: object) -> str:
    """The start method of a pool: ``start_method`` if given (once ``client_fn`` can use it).

    Raises:
        ValueError: the method is unknown, ``client_fn`` cannot reach its workers, or
            the main script starts the simulation at its top level (a worker started
            afresh would import it and start the simulation again).
    """
    method = check_start_method(start_method)
    if method is None:
        if "fork" in mp.get_all_start_methods():
            _warn_of_threads()
            return "fork"
        method = "spawn"
    if method != "fork":
        why = unsendable(client_fn, method)
        script = unguarded_main() if why is None else None
        if script is not None:
            why = (
                f"{_UNGUARDED.format(path=script)}; guard it, or pass start_method='fork'"
                f" (start_method={method!r} was asked for)"
            )
        if why is not None:
            raise ValueError(why)
    return method


def _warn_of_threads() -> None:
    """Warn once per process if other Python threads run as the workers are forked."""
    global _warned_threads
    if _warned_threads or python_threads() == 1:
        return
    _warned_threads = True
    here = threading.current_thread()
    names = sorted(t.name for t in threading.enumerate() if t is not here)
    logger.warning(
        "the process backend forks its workers while this process runs %d other threads "
        "(%s): a lock one of them holds as it forks stays held in the workers, and a client "
        "that takes it hangs; pass start_method='forkserver' to start the workers from a "
        "process without them (client_fn must then be importable by the workers)",
        len(names),
        ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""),
    )


def start_method_refusal(value: object, backend: str, process: str) -> str | None:
    """Why a command takes no ``value`` as its start method, or None.

    Args:
        value: The start method given (None: covey picks).
        backend: The backend the command runs.
        process: How the command names the process backend's setting, e.g.
            ``"--backend process"``.
    """
    if value is not None and backend != "process":  # it would be left unused
        return f"applies to {process} only (the backend is {backend!r})"
    try:
        check_start_method(value)
    except ValueError as exc:
        if "platform" in str(exc):
            return str(exc)
        return "choose 'fork', 'forkserver' or 'spawn', or leave it out (covey picks)"
    return None
