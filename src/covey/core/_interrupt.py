"""Ctrl-C as Ctrl-C, even when the code it interrupted turned it into another error.

SIGINT raises ``KeyboardInterrupt`` wherever the main thread is. If that is the
initialization of a compiled module (matplotlib's, say, imported as a run draws
its first plot), the module's loader reports an ``ImportError("initialization
failed")`` caused by the interrupt. A run stopped that way was interrupted, not
failed: :func:`interrupt_in` finds the interrupt behind such an error, and
:func:`as_interrupt` gives the ``KeyboardInterrupt`` to record and raise in its place.

The command line's runs take SIGTERM as Ctrl-C too (:func:`stop_on_sigterm`), as
``KeyboardInterrupt("SIGTERM")``. A run stopped either way is recorded as
``failed`` with the reason ``interrupted (SIGINT)`` or ``interrupted (SIGTERM)``,
and shown as ``interrupted`` (:func:`shown_status`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

__all__ = [
    "INTERRUPTED_REASONS",
    "SAME_STOP",
    "as_interrupt",
    "interrupt_in",
    "interrupts_as_such",
    "shown_status",
    "stop_on_sigterm",
    "stopping_on_sigterm",
]


def interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` that is ``exc`` or that caused it, else None.

    Followed is the chain Python prints under a traceback: each error's
    ``__cause__`` (``raise ... from``), else its ``__context__`` (the error being
    handled as it was raised) unless that was hidden (``raise ... from None``).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            current = current.__context__
    return None


INTERRUPTED_REASONS: Final = ("interrupted (SIGINT)", "interrupted (SIGTERM)")
"""The reasons a simulation's ``run.json`` and a served run's history record for a run
stopped by Ctrl-C or SIGTERM (an interrupt without args is Ctrl-C's)."""


def shown_status(status: str, reason: object) -> str:
    """The status to show of a run recorded as ``status`` that stopped for ``reason``.

    A run stopped by Ctrl-C or SIGTERM is recorded as ``failed`` (older covey did
    the same, so the files are read alike); it is shown as ``interrupted``: whoever
    stopped it saw no failure. Any other status or reason is shown as it is.

    Example:
        >>> shown_status("failed", "interrupted (SIGINT)")
        'interrupted'
        >>> shown_status("failed", "ValueError: bad input")
        'failed'
    """
    return "interrupted" if status == "failed" and reason in INTERRUPTED_REASONS else status


def as_interrupt(exc: BaseException) -> BaseException:
    """``exc``, or a ``KeyboardInterrupt`` (with the interrupt's args) if one caused it.

    The new interrupt's ``__cause__`` is ``exc``, so its traceback shows where it landed.
    """
    found = interrupt_in(exc)
    if found is None or found is exc:
        return exc
    stop = KeyboardInterrupt(*found.args)  # args: "SIGTERM" for a stop by SIGTERM
    stop.__cause__ = exc
    return stop


@contextlib.contextmanager
def interrupts_as_such() -> Iterator[None]:
    """Raise a ``KeyboardInterrupt`` in place of an error an interrupt caused in the block."""
    try:
        yield
    except Exception as caught:
        exc = as_interrupt(caught)
        if exc is caught:
            raise
        raise exc from caught


def stop_on_sigterm(on_stop: Callable[[], None] | None = None) -> None:
    """Make SIGTERM (``docker stop``, ``systemctl stop``, a batch scheduler) stop as Ctrl-C does.

    The first SIGTERM calls ``on_stop`` (if given), then raises
    ``KeyboardInterrupt("SIGTERM")`` in the main thread:
    a run ends marked, its clients or workers are told, its folder is let go. A second
    one ends the process at once, as SIGTERM does by default, unless it comes
    within :data:`SAME_STOP` seconds of the first: GNU ``timeout`` signals its
    command and then the command's whole process group, so one stop arrives twice.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers are the main thread's: a command run elsewhere keeps SIGTERM's

    def terminated(signum: int, frame: Any) -> None:
        first = time.monotonic()

        def again(signum: int, frame: Any) -> None:
            if time.monotonic() - first < SAME_STOP:
                return  # the same stop, delivered twice
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, again)
        if on_stop is not None:
            on_stop()
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, terminated)


@contextlib.contextmanager
def stopping_on_sigterm() -> Iterator[None]:
    """:func:`stop_on_sigterm` for the block; the SIGTERM handler before it is put back after.

    A command run in a process that goes on (a test's, a notebook's) leaves it as it was,
    unless SIGTERM stopped it: the process is then ending, and the same stop sent again
    (see :data:`SAME_STOP`) must not kill it before it has said so.
    """
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    stop_on_sigterm()
    stopped = False
    try:
        yield
    except KeyboardInterrupt as exc:
        stopped = exc.args == ("SIGTERM",)
        raise
    finally:
        if main and not stopped:
            signal.signal(signal.SIGTERM, before)


SAME_STOP = 1.0
"""Seconds after a first SIGTERM within which another is taken for the same stop."""
