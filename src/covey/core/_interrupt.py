"""Ctrl-C as Ctrl-C, even when the code it interrupted turned it into another error.

SIGINT raises ``KeyboardInterrupt`` wherever the main thread is. If that is the
initialization of a compiled module (matplotlib's, say, imported as a run draws
its first plot), the module's loader reports an ``ImportError("initialization
failed")`` caused by the interrupt. A run stopped that way was interrupted, not
failed: :func:`interrupt_in` finds the interrupt behind such an error, and
:func:`as_interrupt` gives the ``KeyboardInterrupt`` to record and raise in its place.

The command line's runs take SIGTERM and SIGHUP (the terminal closed) as Ctrl-C
too (:func:`stop_on_sigterm`), as ``KeyboardInterrupt("SIGTERM")`` or
``KeyboardInterrupt("SIGHUP")``. A run stopped any of these ways is recorded as
``failed`` with the reason ``interrupted (SIGINT)``, ``interrupted (SIGTERM)`` or
``interrupted (SIGHUP)``, shown as ``interrupted`` (:func:`shown_status`), and the
command exits with 128 plus the signal's number (:func:`exit_code`): 130, 143, 129.
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
    "STOP_SIGNALS",
    "as_interrupt",
    "exit_code",
    "interrupt_in",
    "interrupted_how",
    "interrupts_as_such",
    "shown_status",
    "stop_on_sigterm",
    "stop_signals",
    "stopping_on_sigterm",
    "take_sigint",
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


STOP_SIGNALS: Final = ("SIGTERM", "SIGHUP")
"""The signals besides SIGINT that the command line's runs take as Ctrl-C: a service
manager's or a scheduler's stop, and the terminal they ran in closed."""

INTERRUPTED_REASONS: Final = tuple(f"interrupted ({n})" for n in ("SIGINT", *STOP_SIGNALS))
"""The reasons a simulation's ``run.json`` and a served run's history record for a run
stopped by Ctrl-C, SIGTERM or SIGHUP (an interrupt without args is Ctrl-C's)."""


def _signal_name(exc: BaseException) -> str:
    """The signal that stopped a run by ``exc``, an interrupt: ``"SIGINT"`` unless it names one."""
    return str(exc.args[0]) if exc.args and exc.args[0] in STOP_SIGNALS else "SIGINT"


def exit_code(exc: BaseException) -> int:
    """The exit status of a command stopped by the interrupt ``exc``: 128 plus its signal's number.

    Example:
        >>> exit_code(KeyboardInterrupt()), exit_code(KeyboardInterrupt("SIGHUP"))
        (130, 129)
    """
    return 128 + int(getattr(signal, _signal_name(exc), signal.SIGINT))


def interrupted_how(exc: BaseException) -> str:
    """How a command stopped by the interrupt ``exc`` says so: Ctrl-C's is plain ``interrupted``.

    Example:
        >>> interrupted_how(KeyboardInterrupt()), interrupted_how(KeyboardInterrupt("SIGTERM"))
        ('interrupted', 'interrupted (SIGTERM)')
    """
    name = _signal_name(exc)
    return "interrupted" if name == "SIGINT" else f"interrupted ({name})"


def shown_status(status: str, reason: object) -> str:
    """The status to show of a run recorded as ``status`` that stopped for ``reason``.

    A run stopped by Ctrl-C, SIGTERM or SIGHUP is recorded as ``failed`` (older covey did
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


def stop_signals() -> list[signal.Signals]:
    """:data:`STOP_SIGNALS` as this platform has them (Windows has no SIGHUP)."""
    return [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]


def stop_on_sigterm(on_stop: Callable[[str], None] | None = None) -> None:
    """Make SIGTERM and SIGHUP stop as Ctrl-C does.

    SIGTERM is the stop of ``docker stop``, ``systemctl stop``, a batch scheduler;
    SIGHUP, of the terminal the command ran in, closed. The first such signal calls
    ``on_stop`` (if given) with its name, then raises ``KeyboardInterrupt(name)``
    (``KeyboardInterrupt("SIGTERM")``, say) in the main thread: a run ends marked,
    its clients or workers are told, its folder is let go. A second one ends the
    process at once, as the signal does by default, unless it comes within
    :data:`SAME_STOP` seconds of the first: GNU ``timeout`` signals its command and
    then the command's whole process group, so one stop arrives twice.

    A signal the process was started ignoring stays ignored: ``nohup`` ignores SIGHUP
    so that a command goes on once its terminal is closed. SIGINT is taken all the same
    (:func:`take_sigint`).
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers are the main thread's: a command run elsewhere keeps theirs
    take_sigint()
    signals = [sig for sig in stop_signals() if signal.getsignal(sig) is not signal.SIG_IGN]

    def stopped(signum: int, frame: Any) -> None:
        first = time.monotonic()

        def again(signum: int, frame: Any) -> None:
            if time.monotonic() - first < SAME_STOP:
                return  # the same stop, delivered twice
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

        for sig in signals:
            signal.signal(sig, again)
        name = signal.Signals(signum).name
        if on_stop is not None:
            on_stop(name)
        raise KeyboardInterrupt(name)

    for sig in signals:
        signal.signal(sig, stopped)


def take_sigint() -> None:
    """Make SIGINT raise ``KeyboardInterrupt`` (Ctrl-C's stop) in a process started ignoring it.

    A non-interactive shell starts its background jobs (``covey server ... &`` in a
    script) with SIGINT ignored, and Python keeps it so: ``kill -INT PID`` did nothing,
    where Ctrl-C in a terminal stops the command gracefully. Nobody asks for that on
    purpose (``nohup`` ignores SIGHUP, not SIGINT), so SIGINT is taken back. Called
    in the main thread only.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def stopping_on_sigterm() -> Iterator[None]:
    """:func:`stop_on_sigterm` for the block; the handlers before it are put back after.

    A command run in a process that goes on (a test's, a notebook's) leaves it as it was,
    unless SIGTERM or SIGHUP stopped it: the process is then ending, and the same stop
    sent again (see :data:`SAME_STOP`) must not kill it before it has said so.
    """
    main = threading.current_thread() is threading.main_thread()
    watched = (*stop_signals(), signal.SIGINT)
    before = {sig: signal.getsignal(sig) for sig in watched} if main else {}
    stop_on_sigterm()
    stopped = False
    try:
        yield
    except KeyboardInterrupt as exc:
        stopped = bool(exc.args) and exc.args[0] in STOP_SIGNALS
        raise
    finally:
        if not stopped:
            for sig, handler in before.items():
                signal.signal(sig, handler)


SAME_STOP = 1.0
"""Seconds after a first SIGTERM or SIGHUP within which another is taken for the same stop."""
