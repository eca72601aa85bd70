"""A reply file made before a fit, for a client that trains in place (``writes_weights``).

Such a client may write into the weights it is given and return them. Given a
private copy of the read-only broadcast, it would train there and
:func:`covey.sim._shm.send_reply` would then copy its result into a new reply
file: two model-sized arrays per worker. Instead the worker makes the reply
file first, encodes the broadcast weights into it once, and hands the client
writable views of that mapping. When the client returns exactly those views
(the same memory, dtype and shape, under the same names, and no extras), the
reply names the file and nothing is copied again; any other result is sent as
before and the file removed. The server reads the file as any other reply
(:func:`covey.sim._shm.build_reply`), with the same checks.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.core import _codec
from covey.core._messages import Task
from covey.core._weights import Array
from covey.sim import _shm


class Room:
    """A reply file holding a copy of a task's weights, and writable views of them.

    Attributes:
        path: The file (named like every reply file of this worker).
        size: The encoding's size in bytes; the file is this, 64-byte aligned.
        weights: Writable arrays that view the file's mapping, by name.
    """

    __slots__ = ("_buffer", "path", "sent", "size", "weights")

    def __init__(self, path: str, size: int, buffer: memoryview, weights: dict[str, Array]):
        self.path = path
        self.size = size
        self.weights = weights
        self.sent = False
        self._buffer: memoryview | None = buffer

    def holds(self, arrays: Mapping[str, Any] | None) -> bool:
        """Whether ``arrays`` are this room's views themselves: same names, memory, dtype, shape."""
        if arrays is None or list(arrays) != list(self.weights):
            return False
        for name, view in self.weights.items():
            array = arrays[name]
            if (
                not isinstance(array, np.ndarray)
                or array.dtype != view.dtype
                or array.shape != view.shape
                or not array.flags.c_contiguous
                or array.__array_interface__["data"][0] != view.__array_interface__["data"][0]
            ):
                return False
        return True

    def seal(self) -> str:
        """Checksum what the client wrote and give the file up to the reply; returns its path."""
        if self._buffer is None:  # an invariant of the worker, not an input check
            raise RuntimeError("internal error: the reply room was released")
        _codec.reseal(self._buffer[: self.size])
        self.sent = True
        return self.path

    def release(self) -> None:
        """Drop this room's references to the mapping, removing the file unless it was sent.

        The mapping itself goes when the last array viewing it does (the
        client may keep some).
        """
        if not self.sent:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._buffer = None
        self.weights = {}


def for_task(client: Any, task: Task, prefix: str) -> Room | None:
    """A room for ``task`` when its client trains in place and its reply would go in a file.

    None for any other task, for weights whose reply travels in the message
    (at most :data:`covey.sim._shm.INLINE_BYTES`), and when the file cannot be
    made: the task then runs as before (the client gets a private copy).
    """
    weights = task.weights
    if (
        task.kind != "fit"
        or not weights
        or getattr(client, "writes_weights", False) is not True
        or not all(isinstance(a, np.ndarray) for a in weights.values())
    ):
        return None
    try:
        size = _codec.encoded_size(weights)
        if _shm.aligned(size) <= _shm.INLINE_BYTES:
            return None
        return _make(prefix, weights, size)
    except (OSError, ValueError):
        return None


def _make(prefix: str, weights: Mapping[str, Array], size: int) -> Room:
    total = _shm.aligned(size)
    with _shm.new_file(prefix, total) as (fd, path):
        mm = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | _shm.POPULATE)
        buffer = memoryview(mm)
        _codec.encode_into(weights, buffer[:size])
        views = _codec.decode(buffer[:size], verify=False)
        for view in views.values():
            view.flags.writeable = True  # over the writable mapping: the client's to change
    return Room(path, size, buffer, views)
