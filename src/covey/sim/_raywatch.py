"""The watchdog of a local Ray: it ends the Ray's processes once the process that started it died.

On Linux Ray ties most processes of a local Ray to the driver that started it:
the kernel ends its GCS server, raylet, monitors and workers with the driver,
even one killed with SIGKILL. Not all: the raylet's dashboard agent and
runtime-env agent live on for a minute or more, trying to report the raylet's
end to the GCS server that ended with it. This watchdog, a child of the driver
started with :func:`watch`, notes the Ray's processes while the driver lives
(the driver's children that name the Ray's session folder, and their
descendants, each by PID and start time, so that a PID used again by another
process is never signalled) and, once the driver is gone, ends those still
running: SIGTERM, then SIGKILL a few seconds later. A driver that stops its Ray
itself stops the watchdog with :func:`unwatch`.

Linux only (it reads ``/proc``). Run as a script, it imports nothing but the
standard library.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: Seconds between two looks at the driver and the Ray's processes.
POLL = 0.5
#: Seconds the Ray's processes are given to end on SIGTERM before SIGKILL.
GRACE = 3.0

_PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent PID, start time)`` of process ``pid``, or None if there is none."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and ')'
    try:
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _names(pid: int, session: str) -> bool:
    """Whether process ``pid``'s command line names the Ray's session folder."""
    try:
        return session in (_PROC / str(pid) / "cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return False


def _cluster(driver: int, session: str, me: int) -> dict[int, int]:
    """The Ray's processes now, ``{pid: start time}``.

    They are the driver's children that name ``session``, and all their descendants.
    """
    table: dict[int, tuple[int, int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat
    found = {
        pid: start
        for pid, (parent, start) in table.items()
        if parent == driver and pid != me and _names(pid, session)
    }
    grew = True
    while grew:
        more = {
            pid: start
            for pid, (parent, start) in table.items()
            if parent in found and pid not in found
        }
        found.update(more)
        grew = bool(more)
    return found


def _signal(processes: dict[int, int], signum: int) -> dict[int, int]:
    """Send ``signum`` to each of ``processes`` still running; those it was sent to."""
    sent = {}
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat is None or stat[1] != start:  # ended, or its PID is another process's now
            continue
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
            sent[pid] = start
    return sent


def main(driver: int, session: str) -> None:
    """Note the Ray's processes while ``driver`` lives; end them once it is gone."""
    me = os.getpid()
    seen: dict[int, int] = {}
    while os.getppid() == driver:  # the driver's child until it dies
        now = _cluster(driver, session, me)
        seen = {p: s for p, s in seen.items() if (_stat(p) or (0, -1))[1] == s}  # still running
        seen.update(now)
        time.sleep(POLL)
    left = _signal(seen, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {p: s for p, s in left.items() if (_stat(p) or (0, -1))[1] == s}
    _signal(left, signal.SIGKILL)


def watch(session: str) -> subprocess.Popen[bytes] | None:
    """Start the watchdog of the local Ray whose session folder is ``session``.

    None where it cannot watch (no ``/proc``): there the Ray's processes end as
    Ray ends them.
    """
    if not sys.platform.startswith("linux") or not _PROC.is_dir():
        return None
    return subprocess.Popen(  # noqa: S603 - this file, run by this Python
        [sys.executable, "-I", __file__, str(os.getpid()), session],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not ended by the terminal's Ctrl-C with the driver
    )


def unwatch(watchdog: subprocess.Popen[bytes] | None) -> None:
    """Stop ``watchdog``: the driver stopped its Ray itself."""
    if watchdog is None:
        return
    with contextlib.suppress(OSError):
        watchdog.kill()
    watchdog.wait()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
