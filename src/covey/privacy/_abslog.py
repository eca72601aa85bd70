"""Keeping dp-accounting's absl log quiet, and the root logger as the caller left it.

dp-accounting logs through absl's module-level functions, and absl's ``log()``
calls :func:`logging.basicConfig` first whenever the root logger has no handler.
That would leave a ``StreamHandler`` on the root logger of the process that ran
the accounting (a notebook, an application that had not configured logging yet):
every later record went to it in ``WARNING:name:message`` form, and the
application's own ``logging.basicConfig(level=...)`` did nothing any more.
:func:`quiet` therefore also gives a root logger without handlers a stand-in
handler while the accounting works, which passes on what Python's last resort
would have printed, and takes it off again after.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

__all__ = ["quiet"]

_LOCK = threading.Lock()
_USERS = 0


class _BelowError(logging.Filter):
    """Drops the records below ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is an error (kept) or less (dropped)."""
        return record.levelno >= logging.ERROR


class _LastResort(logging.Handler):
    """A root handler that prints only what the last resort would have printed.

    A record reaches it when no other handler took it on its way up, or when one
    did; in that second case Python would not have used the last resort, so
    neither does this.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Pass ``record`` to :data:`logging.lastResort` if nothing else handled it."""
        resort = logging.lastResort
        if resort is None or record.levelno < resort.level or _handled(record.name):
            return
        resort.handle(record)


_STANDIN = _LastResort()


def _handled(name: str) -> bool:
    """Whether a logger on the way from ``name`` up to the root has a handler of its own."""
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        if any(h is not _STANDIN for h in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep dp-accounting's absl log quiet while it works.

    It logs each RDP order it drops as numerically unstable; the epsilon is still
    its own, and a run would otherwise print dozens of lines per round.

    Each call adds a filter of its own and removes it after: runs accounting in
    several threads at once leave the absl logger as they found it (saving and
    restoring its level would leave it at ERROR when two calls overlap, silencing
    absl for the rest of the process, e.g. an application's TensorFlow or JAX logs).
    A root logger with no handler gets the stand-in while any call runs.
    """
    global _USERS
    absl = logging.getLogger("absl")
    drop = _BelowError()
    absl.addFilter(drop)
    with _LOCK:
        _USERS += 1
        if not logging.root.handlers:
            logging.root.addHandler(_STANDIN)
    try:
        yield
    finally:
        absl.removeFilter(drop)
        with _LOCK:
            _USERS -= 1
            if not _USERS:
                logging.root.removeHandler(_STANDIN)
