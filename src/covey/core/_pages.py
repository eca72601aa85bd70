"""Give back the memory of arrays that view a file mapping, once they have been read.

A large reply can reach the round loop as arrays viewing a mapped file (a
spilled upload, a worker's reply in shared memory). Reading it brings its
pages into the process; folding it block by block and dropping each block's
pages as soon as it is folded keeps about one block resident instead of the
whole reply. The file keeps its bytes: a page read again is simply read again.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = [
    "BLOCK",
    "blocks",
    "mapping_of",
    "referred",
    "release_owned",
    "release_pages",
    "sum_of_squares",
    "trim_heap",
    "unshared",
]

BLOCK = 1 << 20
"""Elements read at once when a large array is read block by block."""


def blocks(size: int, step: int = BLOCK) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each block of ``step`` elements (:data:`BLOCK`) in ``size`` elements.

    Example:
        >>> list(blocks(BLOCK + 2))
        [(0, 1048576), (1048576, 1048578)]
    """
    for start in range(0, size, step):
        yield start, min(start + step, size)


_DONTNEED: int | None = getattr(mmap, "MADV_DONTNEED", None)


def mapping_of(array: Any) -> mmap.mmap | None:
    """The file mapping ``array`` views, following its bases; None for ordinary memory.

    Example:
        >>> import numpy as np
        >>> mapping_of(np.zeros(3)) is None
        True
    """
    obj = array
    for _ in range(32):  # a chain of views is short; never loop on a cycle
        if isinstance(obj, mmap.mmap):
            return obj
        if isinstance(obj, memoryview):
            obj = obj.obj
        elif isinstance(obj, np.ndarray):
            obj = obj.base
        else:
            return None
        if obj is None:
            return None
    return None


def release_pages(flat: np.ndarray, start: int, stop: int) -> None:
    """Let the kernel drop the pages of elements ``start:stop`` of ``flat``, if it views a mapping.

    Only whole pages inside the range are released, so a page shared with the
    elements before or after stays. Arrays in ordinary memory, and platforms
    without ``madvise``, are left alone.

    Args:
        flat: A 1-d C-contiguous array (e.g. ``np.ravel`` of a reply's array).
        start: First element of the range.
        stop: One past its last element.
    """
    if _DONTNEED is None or stop <= start or not flat.flags.c_contiguous:
        return
    mapping = mapping_of(flat)
    if mapping is None or mapping.closed:
        return
    origin = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
    first = flat.ctypes.data + start * flat.itemsize - origin
    last = flat.ctypes.data + stop * flat.itemsize - origin
    page = mmap.PAGESIZE
    lo = -(-first // page) * page
    hi = last // page * page
    if hi > lo:
        mapping.madvise(_DONTNEED, lo, hi - lo)


# np.vdot without its array-function dispatch (a Python frame per call).
_vdot: Any = getattr(np.vdot, "_implementation", np.vdot)


def sum_of_squares(array: np.ndarray) -> Any:
    """``vdot(array, array)``, read block by block (pages given back) if it views a mapping.

    Finite exactly when every value is, unless huge finite values overflow it,
    which is why callers settle a non-finite result with an exact check.
    """
    if array.size <= BLOCK or not array.flags.c_contiguous or mapping_of(array) is None:
        return _vdot(array, array)
    flat = array.reshape(-1)
    total = 0.0
    for start, stop in blocks(flat.size):
        part = flat[start:stop]
        total += _vdot(part, part)
        release_pages(flat, start, stop)
    return total


def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or None where it has none (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()


def _libc_madvise() -> Any:
    """The C library's ``madvise`` on Linux (where ``MADV_DONTNEED`` zero-fills), else None."""
    if not sys.platform.startswith("linux") or _DONTNEED is None:
        return None
    try:
        advise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - a libc without madvise
        return None
    advise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advise.restype = ctypes.c_int
    return advise


_MADVISE = _libc_madvise()
CAN_RELEASE_OWNED = _MADVISE is not None
"""Whether :func:`release_owned` gives pages back here (Linux); elsewhere it does nothing."""


def release_owned(array: np.ndarray, start: int, stop: int) -> None:
    """Give back the pages wholly inside bytes ``start:stop`` of ``array``'s own memory.

    For an array in ordinary memory that nothing will read again: those bytes
    read as 0 afterwards. Bytes before ``start`` are taken as given back already,
    so the page that holds ``start`` goes too unless it begins before the array
    (the allocator's own bytes).
    """
    if _MADVISE is None:
        return
    address = array.ctypes.data
    page = mmap.PAGESIZE
    first = -(-address // page) * page
    low = max((address + start) // page * page, first)
    high = (address + stop) // page * page
    if high > low:
        _MADVISE(low, high - low, _DONTNEED)


def trim_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``; else nothing).

    Receiving a large message passes many 2 MiB frames through the heap; once
    they are freed, glibc keeps most of those pages for later allocations, where
    they still count as the process's memory. Called after such a message is
    complete, this returns them at the cost of a walk over the heap's free
    blocks.
    """
    if _TRIM is not None:
        _TRIM(0)


def _count(items: list[Any], index: int) -> int:
    return sys.getrefcount(items[index])


# The count of an object only a list holds, measured the way unshared() measures it,
# so the check holds on interpreters that count the call's argument differently.
_ALONE = _count([object()], 0)


def referred(items: list[Any], index: int) -> bool:
    """Whether anything but ``items`` holds a (strong) reference to ``items[index]``."""
    return _count(items, index) != _ALONE


def unshared(items: list[Any], index: int) -> bool:
    """Whether ``items[index]`` is held by ``items`` alone, so its memory may be written over.

    Every NumPy array over a buffer, every ``memoryview`` of it and every view
    of those holds a reference to the buffer, so a reference count at the
    floor means nothing anyone still holds can see the buffer's bytes. An
    object with weak references is never unshared (a weak reference could
    reach it later).

    Example:
        >>> import numpy as np
        >>> kept = [np.zeros(4)]
        >>> unshared(kept, 0)
        True
        >>> view = kept[0][:2]
        >>> unshared(kept, 0)
        False
    """
    return not referred(items, index) and weakref.getweakrefcount(items[index]) == 0
