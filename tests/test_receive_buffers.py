"""A deployed client writes each task into the buffer of the task before, when nothing views it.

Reusing the buffer spares new memory each round; it must never change an array
the client still holds. These tests keep arrays (and views) of earlier rounds
and check that they stay as they were, check that a free buffer is reused, and
that an idle buffer's pages are given back for the kernel to reclaim.
"""

from __future__ import annotations

import gc
import mmap
import sys
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core._pages import referred, unshared
from covey.transport.grpc import _frames, _stream
from covey.transport.grpc._stream import Buffers

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

ROUNDS = 4
SIZE = 1 << 15


def test_unshared_sees_views_memoryviews_and_weak_references() -> None:
    kept: list[Any] = [np.zeros(8)]
    assert unshared(kept, 0)
    view = kept[0][2:4]
    assert referred(kept, 0)
    assert not unshared(kept, 0)
    del view
    memory = memoryview(kept[0])
    assert not unshared(kept, 0)
    del memory
    ref = weakref.ref(kept[0])
    assert not referred(kept, 0)
    assert not unshared(kept, 0)
    del ref
    assert unshared(kept, 0)


def test_a_buffer_is_reused_only_once_nothing_views_it() -> None:
    buffers = Buffers()
    first = buffers.take(4096)
    first[:] = b"\x01" * 4096
    view = np.frombuffer(first, np.uint8)
    del first
    second = buffers.take(4096)  # the first is still viewed: a new one
    assert np.frombuffer(second, np.uint8).sum() == 0
    second[:] = b"\x02" * 4096
    assert view.sum() == 4096  # the held view still reads its own bytes
    address = id(second)
    del second
    third = buffers.take(4096)  # nothing refers to the second any more
    assert id(third) == address
    assert bytes(third[:1]) == b"\x02"  # the caller writes it all before reading it
    assert len(buffers.take(8192)) == 8192  # another size replaces it
    del third


@pytest.mark.skipif(not hasattr(mmap, "MADV_FREE"), reason="MADV_FREE is Linux-only")
def test_an_idle_buffer_gives_its_pages_back_and_goes_after_keep_for() -> None:
    buffers = Buffers(keep_for=3600.0)
    buffer = buffers.take(1 << 20)
    buffer[:] = b"\x07" * (1 << 20)
    start = np.frombuffer(buffer, np.uint8).ctypes.data
    buffers.release()  # still held here: nothing happens
    assert _lazy_free_kib(start) == 0
    del buffer
    buffers.release()
    assert _lazy_free_kib(start) > 0  # the kernel may reclaim them; until then they stay
    reused = buffers.take(1 << 20)
    assert np.frombuffer(reused, np.uint8).ctypes.data == start
    del reused
    buffers.keep_for = 0.0
    buffers.release()
    gc.collect()
    assert buffers._kept == []
    assert _lazy_free_kib(start) == -1  # unmapped


def _lazy_free_kib(start: int) -> int:
    """The ``LazyFree`` kB of this process's mapping holding ``start``; -1 if none.

    The kernel may merge the buffer's mapping with an adjacent anonymous one (the
    test failed once so, finding no mapping that starts at ``start``): the mapping
    that holds the address is read.
    """
    found = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and ":" not in head:
                low, high = (int(part, 16) for part in head.split("-"))
                found = low <= start < high
            elif found and line.startswith("LazyFree:"):
                return int(line.split()[1])
    return -1


class Keeps(covey.Client):
    """Returns ``w + 1`` and keeps every array it received, with a copy of its values."""

    def __init__(self) -> None:
        self.kept: list[tuple[np.ndarray, np.ndarray]] = []

    def fit(self, weights: Mapping[str, np.ndarray], config: Any) -> covey.FitResult:
        w = weights["w"]
        self.kept.append((w[1:], w.copy()[1:]))  # a view of the received message
        return covey.FitResult(weights={"w": w + 1}, num_examples=1)


class KeepsInPlace(Keeps):
    """Trains in the received arrays (``writes_weights``) and keeps them after training."""

    writes_weights = True

    def fit(self, weights: Mapping[str, np.ndarray], config: Any) -> covey.FitResult:
        w = weights["w"]
        w += 1
        self.kept.append((w, w.copy()))
        return covey.FitResult(weights={"w": w}, num_examples=1)


class Forgets(covey.Client):
    """Returns ``w + 1`` and keeps nothing."""

    def fit(self, weights: Mapping[str, np.ndarray], config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 1}, num_examples=1)


def _run(client: Any) -> np.ndarray:
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, ROUNDS, initial_weights={"w": np.arange(SIZE, dtype=np.float64)})
    joined = Joined(served.port, client=client, name="site")
    result = served.join()
    joined.join()
    assert all(not r.fit_failures for r in result.history.rounds[1:])
    return np.asarray(result.weights["w"])


@pytest.mark.parametrize("cls", [Keeps, KeepsInPlace])
def test_a_client_keeping_earlier_rounds_arrays_sees_them_unchanged(cls: type[Keeps]) -> None:
    client = cls()
    final = _run(client)
    np.testing.assert_array_equal(final, np.arange(SIZE) + ROUNDS)
    assert len(client.kept) == ROUNDS
    for rnd, (array, values) in enumerate(client.kept):
        np.testing.assert_array_equal(array, values)
        expected = np.arange(SIZE) + rnd + (1 if cls is KeepsInPlace else 0)
        np.testing.assert_array_equal(array, expected[-array.size :])


class ForgetsInPlace(covey.Client):
    """Trains in the received arrays and keeps nothing."""

    writes_weights = True

    def fit(self, weights: Mapping[str, np.ndarray], config: Any) -> covey.FitResult:
        w = weights["w"]
        w += 1
        return covey.FitResult(weights={"w": w}, num_examples=1)


@pytest.mark.parametrize(("cls", "buffers"), [(ForgetsInPlace, 1), (Forgets, ROUNDS)])
def test_an_in_place_client_receives_every_task_into_one_buffer(
    monkeypatch: pytest.MonkeyPatch, cls: type[covey.Client], buffers: int
) -> None:
    """A client returning new arrays frees its buffer at once: it never holds two models."""
    made: list[int] = []
    lock = threading.Lock()
    lazy_buffer = _stream.lazy_buffer

    def counting(size: int) -> Any:
        caller = type(sys._getframe(1).f_locals.get("self")).__name__
        if caller in ("Buffers", "Download"):  # a client's receive buffer
            with lock:
                made.append(size)
        return lazy_buffer(size)

    monkeypatch.setattr(_stream, "lazy_buffer", counting)
    monkeypatch.setattr(_frames, "lazy_buffer", counting)
    final = _run(cls())
    np.testing.assert_array_equal(final, np.arange(SIZE) + ROUNDS)
    assert len(made) == buffers  # in place: rounds 2 to 4 were written into round 1's buffer


def test_a_download_checks_the_checksums_as_its_chunks_arrive() -> None:
    from covey.core import _codec
    from covey.transport.grpc._frames import Download, frames
    from covey.transport.grpc.proto import covey_pb2 as pb

    blob = _codec.Encoded({"w": np.arange(3 << 18, dtype=np.float32)})  # a few chunks
    extras = _codec.Encoded({"e": np.ones(5)})
    header = pb.TaskHeader(kind="fit", weights_size=len(blob), extras_size=len(extras))
    for corrupt in (None, len(blob) - 1, len(blob) + len(extras) - 1):
        buffers = Buffers()
        download = Download(header, len(blob) + len(extras), buffers)
        data = bytearray(b"".join(f[1:] for f in frames(blob, extras)))
        if corrupt is not None:
            data[corrupt] ^= 1  # the last byte of the weights' payload, or of the extras'
        done = [
            download.write(b"\x00" + bytes(data[i : i + (2 << 20)]))
            for i in range(0, len(data), 2 << 20)
        ]
        assert done[-1]
        assert download.intact is (corrupt is None)
