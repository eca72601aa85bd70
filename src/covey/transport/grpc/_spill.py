"""Replies kept in files rather than memory: where they go, and a disk that refuses them.

A reply of :data:`~covey.transport.grpc._stream.SPILL_BYTES` or more is written
to an unlinked file as it arrives (:class:`SpillFiles` hands out the files,
:class:`Spill` maps a complete one while it is folded). The files go to the
spill folder: the run folder of a deployed run that has one, else the system's
temporary folder (``TMPDIR``). A write there that fails (a full disk, a
file-size limit) is the server's own failure, raised as
:class:`~covey.transport._base.ServerDiskError` naming the folder.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

from covey.core import _codec
from covey.transport._base import ServerDiskError
from covey.transport.grpc import _wire

__all__ = ["Spill", "SpillFiles", "spill_error", "split_blobs"]


def spill_error(folder: str | Path | None, exc: OSError) -> ServerDiskError:
    """The error of a spill file that could not be made or written in ``folder``."""
    where = tempfile.gettempdir() if folder is None else str(folder)
    said = exc.strerror or str(exc) or type(exc).__name__
    code = f"[Errno {exc.errno}] " if exc.errno is not None else ""
    return ServerDiskError(
        f"the server could not write a reply to its spill folder {where}: {code}{said} "
        "(replies of 16 MiB or more are kept there until they are folded; free space there, "
        "or lift the limit, and resume the run)"
    )


def _temporary(folder: str | Path | None = None) -> Any:
    """A new unlinked temporary file for a spilled message, in ``folder`` (None: TMPDIR).

    Raises:
        ServerDiskError: the file cannot be made there.
    """
    try:
        return tempfile.TemporaryFile(prefix="covey-upload-", dir=folder)
    except OSError as exc:
        raise spill_error(folder, exc) from exc


class Spill:
    """A complete message in an unlinked file, mapped only between :meth:`map` and :meth:`unmap`.

    Args:
        file: The open file holding the message's bytes.
        sizes: Bytes of the encoded weights and of the extra arrays, back to back.
    """

    def __init__(self, file: Any, sizes: tuple[int, int], files: SpillFiles | None = None) -> None:
        """Take over ``file``; closed (or given back to ``files``) by :meth:`close` or with this.

        Raises:
            ServerDiskError: the file's last bytes cannot be written.
        """
        try:
            file.flush()
        except OSError as exc:
            raise spill_error(None if files is None else files.folder, exc) from exc
        self.file = file
        self.sizes = sizes
        self._map: mmap.mmap | None = None
        if files is None:
            self._closer = weakref.finalize(self, file.close)
        else:
            self._closer = weakref.finalize(self, functools.partial(files.give, file))

    @property
    def mapped(self) -> bool:
        """Whether the file is mapped now."""
        return self._map is not None

    def map(self) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]] | None]:
        """Map the file (once) and decode the weights and extras as views of the mapping."""
        if self._map is None:
            if self.file.closed:
                raise ValueError("the spilled message was closed")
            self._map = mmap.mmap(self.file.fileno(), sum(self.sizes), access=mmap.ACCESS_READ)
        return split_blobs(memoryview(self._map), *self.sizes, verify=False)

    def unmap(self) -> None:
        """Unmap the file; arrays still viewing it keep the mapping until they go."""
        mapped, self._map = self._map, None
        if mapped is not None:
            with contextlib.suppress(BufferError):  # arrays still view it: unmapped with them
                mapped.close()

    def close(self) -> None:
        """Unmap the file and close it or give it back (its bytes are gone: it was unlinked)."""
        self.unmap()
        self._closer()


class SpillFiles:
    """Unlinked temporary files for spilled messages, kept once released and written over again.

    Writing into pages the page cache already holds for a file costs a fraction
    of writing into new ones (which the kernel must allocate, zero and account),
    so the files of one round's replies receive the next round's. Stale bytes past
    a new message's end are never read: a message is mapped only up to its size.

    Args:
        keep: Most files kept.
        keep_bytes: Most bytes of kept files, in all; a file that would pass it is closed.
        folder: Where new files are made; None for the system's temporary folder.
    """

    def __init__(
        self, keep: int = 16, keep_bytes: int = 8 * 1024**3, folder: str | Path | None = None
    ) -> None:
        """An empty pool keeping at most ``keep`` files of ``keep_bytes`` bytes in all."""
        self.folder = folder
        self.keep = keep
        self.keep_bytes = keep_bytes
        self._files: list[tuple[Any, int]] = []
        self._lock = threading.Lock()
        self.closed = False

    def take(self) -> Any:
        """A file positioned at its start: a kept one, else a new one (ServerDiskError if not)."""
        with self._lock:
            file = self._files.pop()[0] if self._files else None
        if file is None:
            return _temporary(self.folder)
        file.seek(0)
        return file

    def give(self, file: Any) -> None:
        """Keep ``file`` for a later message, or close it if the pool is full or closed."""
        if file.closed:
            return
        size = os.fstat(file.fileno()).st_size
        with self._lock:
            kept = sum(s for _, s in self._files)
            if not self.closed and len(self._files) < self.keep and kept + size <= self.keep_bytes:
                self._files.append((file, size))
                return
        file.close()

    def close(self) -> None:
        """Close every kept file; files given back later are closed at once."""
        with self._lock:
            self.closed = True
            files, self._files = self._files, []
        for file, _ in files:
            file.close()


def split_blobs(
    buffer: bytearray | memoryview | mmap.mmap | None,
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
