"""Bulk data on a stream: weights and extra arrays cut into chunks, and put back together.

Both sides of the gRPC transport use these. A message's arrays travel as the
codec's encoding of the weights, then of the extra arrays, back to back, in
chunks of at most :data:`CHUNK_BYTES`.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
import time
from collections.abc import Iterator
from typing import Any

from covey.core import _codec
from covey.core._pages import referred, unshared
from covey.transport.grpc._spill import Spill as Spill  # where the service takes them from
from covey.transport.grpc._spill import SpillFiles as SpillFiles
from covey.transport.grpc._spill import _temporary, spill_error
from covey.transport.grpc._spill import split_blobs as split_blobs

CHUNK_BYTES = 2 * 1024 * 1024


def chunks(*blobs: _codec.Encoded | None, prefix: bytes = b"") -> Iterator[bytes]:
    """The bytes of ``blobs``, back to back, in pieces of :data:`CHUNK_BYTES` (the last shorter).

    Each piece is built from views of the arrays as it is needed, so only one
    chunk is ever copied at a time, and it is copied once: ``prefix`` (a frame's
    tag) and the data go into the one ``bytes`` object yielded.
    """
    pending = bytearray(prefix)
    start = len(prefix)
    for blob in blobs:
        if blob is None:
            continue
        for segment in blob.segments:
            view = memoryview(segment).cast("B")
            while len(view):
                if len(pending) == start and len(view) >= CHUNK_BYTES:
                    yield prefix + view[:CHUNK_BYTES]
                    view = view[CHUNK_BYTES:]
                    continue
                take = min(CHUNK_BYTES + start - len(pending), len(view))
                pending += view[:take]
                view = view[take:]
                if len(pending) == CHUNK_BYTES + start:
                    yield bytes(pending)
                    del pending[start:]
    if len(pending) > start:
        yield bytes(pending)


def lazy_buffer(size: int) -> mmap.mmap | bytearray:
    """A zeroed, writable buffer of ``size`` bytes whose memory is taken only as it is written.

    A peer declares a message's size before it sends the bytes; a buffer that
    took the declared memory at once (``bytearray(size)`` writes every page)
    would let a peer make the receiver hold memory it never fills. An anonymous
    mapping commits a page when the first byte lands in it.

    Raises:
        MemoryError: the system cannot map ``size`` bytes.
    """
    if size == 0:
        return bytearray()
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    try:
        return mmap.mmap(-1, size, flags=flags) if flags else mmap.mmap(-1, size)
    except OSError as exc:
        raise MemoryError(f"cannot map a buffer of {size} bytes: {exc}") from None


class Buffers:
    """The receive buffer of the last message, written over by the next one of the same size.

    A fresh buffer takes new memory page by page as a message arrives, which some
    machines give out slowly; one written before does not. The buffer is reused
    only when nothing else refers to it (``covey.core._pages.unshared``): a
    client that keeps the arrays of a task, or views of them, gets a new buffer
    for the next one, and its arrays never change.

    Between tasks the kept buffer's pages are given to the kernel to take back
    whenever it needs memory (``MADV_FREE``): until it does, the next message is
    written into them without a page fault. One buffer is kept at most; a
    message of another size replaces it, and one unused for ``keep_for``
    seconds is let go.

    Args:
        keep_for: Seconds an unused buffer is kept.
    """

    def __init__(self, keep_for: float = 60.0) -> None:
        """An empty pool keeping a buffer for ``keep_for`` seconds of disuse."""
        self.keep_for = keep_for
        self._kept: list[mmap.mmap] = []
        self._used = 0.0
        self._idle = False  # whether the kept buffer's pages were given back (MADV_FREE)
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap | bytearray:
        """A buffer of ``size`` bytes: the kept one if it has that size and is free, else new.

        A new buffer is a :func:`lazy_buffer`, so the size must have been checked
        against the receiver's limits already. A reused one holds the bytes of the
        message before: the caller writes all ``size`` bytes before reading any.

        Raises:
            MemoryError: the system cannot map ``size`` bytes.
        """
        with self._lock:
            self._used = time.monotonic()
            if self._kept and len(self._kept[0]) == size and unshared(self._kept, 0):
                self._idle = False
                return self._kept[0]
            self._kept = []  # the old buffer goes with its last user
        buffer = lazy_buffer(size)
        with self._lock:
            self._kept = [buffer] if isinstance(buffer, mmap.mmap) else []
            self._idle = False
        return buffer

    def release(self) -> None:
        """Give the kept buffer's pages to the kernel to reclaim, once nothing else refers to it.

        Let go at once of a buffer that can never be reused (something holds a
        weak reference to it), and of one unused for ``keep_for`` seconds.
        """
        with self._lock:
            if not self._kept:
                return
            if time.monotonic() - self._used >= self.keep_for:
                self._kept = []
                return
            if self._idle or referred(self._kept, 0):
                return  # given back already, or still in use
            if not unshared(self._kept, 0):  # only weak references to it remain
                self._kept = []
                return
            if _FREE is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._kept[0].madvise(_FREE)
            self._idle = True

    def clear(self) -> None:
        """Let the kept buffer go."""
        with self._lock:
            self._kept = []


_FREE: int | None = getattr(mmap, "MADV_FREE", None)


SPILL_BYTES = 16 * 1024 * 1024


class Upload:
    """Receives the weights and extra arrays of one message, chunk by chunk.

    Large messages go straight to an unlinked temporary file, handed over as a
    :class:`Spill` when complete and mapped only while they are used, so replies
    waiting for their turn in the aggregation occupy the page cache rather than
    the process's memory. Checksums are verified as the bytes arrive, so nothing
    is read back before it is used. A file that cannot be made or written raises
    :class:`~covey.transport._base.ServerDiskError` (the server's disk, not the peer).
    """

    def __init__(self, weights_size: int, extras_size: int, *, spill: bool | SpillFiles) -> None:
        """An empty message of the announced sizes, in memory or in a file.

        Args:
            weights_size: Bytes of the encoded weights.
            extras_size: Bytes of the encoded extra arrays after them.
            spill: False to receive into memory; True for a new temporary file,
                or a :class:`SpillFiles` to take one from.
        """
        self.sizes = (weights_size, extras_size)
        self.size = weights_size + extras_size
        self.filled = 0
        self.checks = (_codec.StreamCheck(), _codec.StreamCheck())
        self.files = spill if isinstance(spill, SpillFiles) else None
        self.file: Any = None
        if self.files is not None:
            self.file = self.files.take()
        elif spill:
            self.file = _temporary()
        self.buffer = None if spill else lazy_buffer(self.size)
        self._bounce: bytearray | None = None  # what a spilled message is read through
        self.settled = False  # whether its reserved bytes were given back (UploadBudget.settle)

    @property
    def complete(self) -> bool:
        """Whether every announced byte has arrived."""
        return self.filled == self.size

    @property
    def spilled(self) -> bool:
        """Whether the message goes to a file rather than memory."""
        return self.file is not None

    def write(self, data: bytes | memoryview) -> bool:
        """Append ``data``; False if it runs past the announced size."""
        end = self.filled + len(data)
        if end > self.size:
            return False
        view = memoryview(data)
        self._check(view)
        if self.buffer is not None:
            self.buffer[self.filled : end] = view
        else:
            try:
                self.file.write(view)
            except OSError as exc:
                raise spill_error(None if self.files is None else self.files.folder, exc) from exc
        self.filled = end
        return True

    def _check(self, view: memoryview) -> None:
        feed(self.checks, self.sizes[0], self.filled, view)

    def space(self, size: int) -> memoryview:
        """Where the next ``size`` bytes are read into (from a data connection), for :meth:`wrote`.

        The message's own buffer when it is kept in memory, so the bytes land once;
        for a spilled message, a piece of memory reused for every read.
        """
        size = min(size, self.size - self.filled)
        if self.buffer is not None:
            return memoryview(self.buffer)[self.filled : self.filled + size]
        return _bounce(self, size)

    def wrote(self, view: memoryview) -> None:
        """Take the bytes just read into ``view`` (from :meth:`space`)."""
        if self.buffer is None:
            self.write(view)
            return
        self._check(view)
        self.filled += len(view)

    def verify(self) -> None:
        """Raise :class:`~covey.core._codec.CodecError` (the upload discarded) on a bad checksum."""
        for size, check in zip(self.sizes, self.checks, strict=True):
            if size and not check.ok():
                self.discard()
                raise _codec.CodecError("corrupt payload (checksum mismatch)")

    def decode(self) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]] | None]:
        """The decoded weights and extras (views of the received bytes, mapped if spilled)."""
        self.verify()
        if self.buffer is None:
            return self.spill().map()
        return split_blobs(memoryview(self.buffer), *self.sizes, verify=False)

    def spill(self) -> Spill:
        """The complete, verified file of a spilled message; the upload no longer owns it."""
        self.verify()
        file, self.file = self.file, None
        return Spill(file, self.sizes, self.files)

    def discard(self) -> None:
        """Release the buffer or file of an unfinished message."""
        file, self.file = self.file, None
        if file is not None:
            if self.files is not None:
                self.files.give(file)
            else:
                file.close()
        self.buffer = None


class Skipped:
    """The bytes of a reply nobody asked for: counted against its announced size, not kept."""

    def __init__(self, size: int) -> None:
        """Skip ``size`` announced bytes."""
        self.size = size
        self.filled = 0
        self._bounce: bytearray | None = None

    @classmethod
    def rest_of(cls, upload: Upload) -> Skipped:
        """The bytes of ``upload`` still to come, skipped: counted on from where it stopped."""
        skipped = cls(upload.size)
        skipped.filled = upload.filled
        return skipped

    @property
    def complete(self) -> bool:
        """Whether every announced byte has arrived."""
        return self.filled == self.size

    def write(self, data: bytes | memoryview) -> bool:
        """Count ``data``; False if it runs past the announced size."""
        self.filled += len(data)
        return self.filled <= self.size

    def space(self, size: int) -> memoryview:
        """A piece of memory to read the next ``size`` bytes into, and forget."""
        return _bounce(self, min(size, self.size - self.filled))

    def wrote(self, view: memoryview) -> None:
        """Count the bytes just read into ``view``."""
        self.filled += len(view)


def feed(
    checks: tuple[_codec.StreamCheck, _codec.StreamCheck], split: int, at: int, data: memoryview
) -> None:
    """Feed ``data``, a message's bytes from offset ``at`` on, to its two checksums.

    ``checks`` are those of the weights (the first ``split`` bytes) and of the
    extra arrays after them.
    """
    if at < split:
        checks[0].update(data[: split - at])
    if at + len(data) > split:
        checks[1].update(data[max(0, split - at) :])


def _bounce(owner: Any, size: int) -> memoryview:
    """``size`` bytes of memory ``owner`` keeps for reading pieces of a message through."""
    bounce = getattr(owner, "_bounce", None)
    if bounce is None or len(bounce) < size:
        bounce = owner._bounce = bytearray(size)
    return memoryview(bounce)[:size]


MAX_INFLIGHT_BYTES = 16 * 1024**3


class UploadBudget:
    """The bytes of replies being received at once, over all connections, kept under a cap.

    Args:
        total: Most bytes reserved at once.
    """

    def __init__(self, total: int) -> None:
        """An empty budget of ``total`` bytes."""
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) if the cap would be passed."""
        with self._lock:
            if self.used + size > self.total:
                return False
            self.used += size
            return True

    def release(self, size: int) -> None:
        """Give back ``size`` reserved bytes."""
        with self._lock:
            self.used = max(0, self.used - size)

    def settle(self, upload: Upload | Skipped) -> None:
        """Give back the bytes an upload reserved, once it completed or was abandoned (once)."""
        if isinstance(upload, Upload) and not upload.settled:
            upload.settled = True
            self.release(upload.filled)
            if not upload.complete:
                upload.discard()
