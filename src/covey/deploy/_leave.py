"""How ``covey client`` and ``covey site`` leave on SIGTERM, SIGHUP or Ctrl-C: at once, saying so.

Both take a stop as an interrupt (``KeyboardInterrupt``, "SIGTERM" or "SIGHUP" in its
args for those), and also set :attr:`Leaving.stop`, which their connection loop watches:
an interrupt that lands where it is not passed on (in a finalizer gRPC runs on the
main thread as a channel is let go, say) still ends the session within a heartbeat
check. They then print what they left, flush their output and end the process
with ``os._exit`` (:func:`end_now`), as their normal end does: leaving through
Python's finalization waits on gRPC's own shutdown, which a connection being torn
down can hold for a minute. Should the main thread not get there within
:data:`LEAVE_GRACE` seconds of the stop (held where a signal cannot reach it), a
watchdog leaves in its place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from covey.core._interrupt import exit_code, interrupted_how, stop_on_sigterm, stop_signals

__all__ = ["LEAVE_GRACE", "Leaving", "end_now", "leaving"]

LEAVE_GRACE = 5.0
"""Seconds after a stop within which the command leaves, whatever its main thread does."""


def end_now(code: int) -> NoReturn:
    """Flush the output and end the process with ``code`` at once, as a command's last step.

    Python's finalization after a command that used gRPC waits on gRPC's own
    shutdown and the teardown of every module loaded: seconds on a busy machine,
    after the command's last line was printed.
    """
    with contextlib.suppress(Exception):
        logging.shutdown()  # log files the app opened are flushed and closed
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class Leaving:
    """A command's stop: the event its connection watches, and the one way out.

    Args:
        say: Prints what was left, given how it was stopped (``"interrupted (SIGTERM)"``).
        before_exit: Run (from whichever thread leaves) before the process ends: what
            must be finished first, within a bound of its own.
    """

    def __init__(
        self, say: Callable[[str], None], before_exit: Callable[[], object] | None = None
    ) -> None:
        self.stop = threading.Event()
        self.signal: str | None = None  # "SIGTERM", "SIGHUP" or "SIGINT", once one came
        self._say = say
        self._before_exit = before_exit
        self._once = threading.Lock()

    def stopped(self, name: str) -> None:
        """Note a stop by the signal ``name`` (in its handler); the watchdog starts."""
        if self.stop.is_set():
            return
        self.signal = name
        self.stop.set()
        threading.Thread(target=self._watchdog, name="covey-leave", daemon=True).start()

    def _watchdog(self) -> None:
        threading.Event().wait(LEAVE_GRACE)
        # the main thread may hold what saying it needs (the console's lock): bounded too
        saying = threading.Thread(target=self.leave, name="covey-leave-now", daemon=True)
        saying.start()
        saying.join(LEAVE_GRACE)
        os._exit(exit_code(KeyboardInterrupt(self.signal)))

    def leave(self, interrupt: BaseException | None = None) -> NoReturn:
        """Say how the command was stopped, flush, and end the process (exit 128 + the signal)."""
        self._once.acquire()  # one says it and leaves; another waits to be ended with it
        name = self.signal
        if name is None and interrupt is not None and interrupt.args:
            name = str(interrupt.args[0])
        stop = KeyboardInterrupt(name)
        try:
            if self._before_exit is not None:
                self._before_exit()
            self._say(interrupted_how(stop))
        finally:
            end_now(exit_code(stop))


@contextlib.contextmanager
def leaving(leave: Leaving) -> Iterator[Leaving]:
    """Take SIGTERM, SIGHUP and SIGINT as stops of ``leave`` for the block (in the main thread).

    Each still raises ``KeyboardInterrupt`` (see
    :func:`~covey.core._interrupt.stop_on_sigterm`). The handlers before are put back
    after, for a command run in a process that goes on (a test's).
    """
    if threading.current_thread() is not threading.main_thread():
        yield leave  # signal handlers are the main thread's
        return
    before = {sig: signal.getsignal(sig) for sig in (*stop_signals(), signal.SIGINT)}

    def interrupted(signum: int, frame: Any) -> None:
        leave.stopped("SIGINT")
        raise KeyboardInterrupt

    stop_on_sigterm(on_stop=leave.stopped)
    signal.signal(signal.SIGINT, interrupted)
    try:
        yield leave
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
