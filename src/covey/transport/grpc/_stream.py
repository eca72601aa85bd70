"""Bulk data on a stream: weights and extra arrays cut into chunks, and put back together.

Both sides of the gRPC transport use these. A message's arrays travel as the
codec's encoding of the weights, then of the extra arrays, back to back, in
chunks of at most :data:`CHUNK_BYTES`.
"""

from __future__ import annotations

import mmap
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from covey.core import _codec
from covey.transport.grpc import _wire

CHUNK_BYTES = 2 * 1024 * 1024


def chunks(*blobs: _codec.Encoded | None) -> Iterator[bytes]:
    """The bytes of ``blobs``, back to back, in pieces of :data:`CHUNK_BYTES` (the last shorter).

    Each piece is built from views of the arrays as it is needed, so only one
    chunk is ever copied at a time.
    """
    pending = bytearray()
    for blob in blobs:
        if blob is None:
            continue
        for segment in blob.segments:
            view = memoryview(segment).cast("B")
            while len(view):
                if not pending and len(view) >= CHUNK_BYTES:
                    yield bytes(view[:CHUNK_BYTES])
                    view = view[CHUNK_BYTES:]
                    continue
                take = min(CHUNK_BYTES - len(pending), len(view))
                pending += view[:take]
                view = view[take:]
                if len(pending) == CHUNK_BYTES:
                    yield bytes(pending)
                    pending.clear()
    if pending:
        yield bytes(pending)


SPILL_BYTES = 16 * 1024 * 1024


class Upload:
    """Receives the weights and extra arrays of one message, chunk by chunk.

    Large messages go straight to an unlinked temporary file and are mapped when
    complete, so replies waiting for their turn in the aggregation occupy the
    page cache rather than the process's memory. Checksums are verified as the
    bytes arrive, so nothing is read back before it is used.
    """

    def __init__(self, weights_size: int, extras_size: int, *, spill: bool) -> None:
        self.sizes = (weights_size, extras_size)
        self.size = weights_size + extras_size
        self.filled = 0
        self.checks = (_codec.StreamCheck(), _codec.StreamCheck())
        self.file: Any = (
            tempfile.TemporaryFile(prefix="covey-upload-")  # noqa: SIM115 - closed by decode/discard
            if spill
            else None
        )
        self.buffer = None if spill else bytearray(self.size)

    @property
    def complete(self) -> bool:
        return self.filled == self.size

    def write(self, data: bytes) -> bool:
        """Append ``data``; False if it runs past the announced size."""
        end = self.filled + len(data)
        if end > self.size:
            return False
        split = self.sizes[0]
        view = memoryview(data)
        if self.filled < split:
            self.checks[0].update(view[: split - self.filled])
        if end > split:
            self.checks[1].update(view[max(0, split - self.filled) :])
        if self.buffer is not None:
            self.buffer[self.filled : end] = data
        else:
            self.file.write(data)
        self.filled = end
        return True

    def decode(self) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]] | None]:
        """The decoded weights and extras (views of the received bytes)."""
        if self.buffer is not None:
            view = memoryview(self.buffer)
        else:
            self.file.flush()
            mapped = mmap.mmap(self.file.fileno(), self.size, access=mmap.ACCESS_READ)
            self.file.close()
            view = memoryview(mapped)
        for size, check in zip(self.sizes, self.checks, strict=True):
            if size and not check.ok():
                raise _codec.CodecError("corrupt payload (checksum mismatch)")
        return split_blobs(view, *self.sizes, verify=False)

    def discard(self) -> None:
        """Release the buffer or file of an unfinished message."""
        if self.file is not None:
            self.file.close()
        self.buffer = None


def split_blobs(
    buffer: bytearray | memoryview | None,
    weights_size: int,
    extras_size: int,
    *,
    verify: bool = True,
) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]] | None]:
    """Decode the weights and the extra arrays received back to back in ``buffer``."""
    if buffer is None:
        return None, None
    view = memoryview(buffer)
    weights = _codec.decode(view[:weights_size], verify=verify) if weights_size else None
    extras = (
        _wire.unflatten_extras(
            _codec.decode(view[weights_size : weights_size + extras_size], verify=verify)
        )
        if extras_size
        else None
    )
    return weights, extras


class Skipped:
    """The bytes of a reply nobody asked for: counted against its announced size, not kept."""

    def __init__(self, size: int) -> None:
        """Skip ``size`` announced bytes."""
        self.size = size
        self.filled = 0

    @property
    def complete(self) -> bool:
        """Whether every announced byte has arrived."""
        return self.filled == self.size

    def write(self, data: bytes) -> bool:
        """Count ``data``; False if it runs past the announced size."""
        self.filled += len(data)
        return self.filled <= self.size


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
