"""Why the server stops reading a client's stream: a protocol break, or its own disk.

The first is the client's fault: its stream is closed and its task fails. The
second is not: the reply it was sending cannot be kept (its spill file cannot
be written), so its task fails without blame, the rest of its stream is not
read, and the error is kept for the transport to raise from ``exchange``, which
stops the run naming it; the client stays connected to hear why.
"""

from __future__ import annotations

import logging
import weakref

from covey.core._messages import Reply
from covey.transport._base import ServerDiskError
from covey.transport.grpc._registry import Connection, Registry, Sink
from covey.transport.grpc._stream import Skipped, Upload, UploadBudget

__all__ = ["DiskFault", "ProtocolError"]

logger = logging.getLogger("covey")


class ProtocolError(Exception):
    """A client sent messages out of the protocol's order or over its limits.

    Args:
        message: What the client did wrong.
        failed: The reply that fails the client's task, and where it goes: handed
            on only once the refusal is recorded and the client dropped, so whoever
            reads the failed reply also finds the ``protocol-error`` event and the
            client gone.
    """

    def __init__(self, message: str, failed: tuple[Sink, Reply] | None = None) -> None:
        super().__init__(message)
        self.failed = failed


class DiskFault:
    """The first failure of the server's own disk while it received a reply, if any."""

    def __init__(self) -> None:
        """No failure yet."""
        self.error: ServerDiskError | None = None
        self.drained: weakref.WeakSet[Connection] = weakref.WeakSet()  # frames let be

    def failed(
        self,
        registry: Registry,
        budget: UploadBudget,
        conn: Connection,
        exc: ServerDiskError,
        upload: Upload | Skipped | None,
    ) -> None:
        """Keep ``exc`` (the first one), log it, and fail the tasks ``conn`` owes, saying why.

        The reply being received is let go (its bytes given back to ``budget``). The
        client stays connected (and is told why the run stopped, as it ends); what
        it still sends is not read.
        """
        if upload is not None:
            budget.settle(upload)
        conn.upload = None
        if self.error is None:
            self.error = exc
            registry.stopping = str(exc)  # other replies cut short are not their clients' doing
        self.drained.add(conn)
        got = "" if upload is None else f" ({upload.filled} of {upload.size} bytes received)"
        logger.error("client %s's reply%s cannot be kept: %s", conn.name, got, exc)
        with conn.lock:
            pending = list(conn.pending.values())
            conn.pending.clear()
        for sink, kind in pending:
            error = f"the server could not keep the reply{got}: {exc}"
            registry.route(sink, Reply(conn.cid, kind, error=error), conn.name)
