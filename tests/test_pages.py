"""Folding a reply that views a mapped file gives its pages back block by block."""

from __future__ import annotations

import mmap
import sys
import tempfile
from collections.abc import Iterator

import numpy as np
import pytest

from covey.aggregate import Contribution, _mean, run_round, weighted_mean
from covey.core._pages import BLOCK, mapping_of, release_pages, sum_of_squares
from covey.core._weights import WeightsSpec

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="reads the mapping's resident size from /proc/self/smaps"
)


def resident_kib(array: np.ndarray) -> int:
    """Resident KiB of the mapping that holds ``array``'s first byte (/proc/self/smaps)."""
    address = array.ctypes.data
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(part, 16) for part in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("the mapping is not in /proc/self/smaps")


@pytest.fixture
def mapped() -> Iterator[np.ndarray]:
    """A read-only float32 array of three read blocks and a bit, viewing a mapped file."""
    values = (
        np.random.default_rng(3).normal(size=3 * max(BLOCK, _mean._BLOCK) + 777).astype(np.float32)
    )
    with tempfile.TemporaryFile() as f:
        f.write(values.tobytes())
        f.flush()
        mapping = mmap.mmap(f.fileno(), values.nbytes, access=mmap.ACCESS_READ)
        yield np.frombuffer(memoryview(mapping), dtype=np.float32)
    # The mapping closes with the last array viewing it.


def test_release_pages_gives_back_what_was_read(mapped: np.ndarray) -> None:
    assert mapping_of(mapped) is not None
    assert mapping_of(np.ravel(mapped)[10:]) is not None
    assert mapping_of(np.ones(4)) is None
    float(mapped.sum())  # read every page
    assert resident_kib(mapped) >= mapped.nbytes // 1024 - 8
    release_pages(mapped, 0, mapped.size // 2)
    assert resident_kib(mapped) <= mapped.nbytes // 2048 + 8
    release_pages(mapped, 0, mapped.size)
    assert resident_kib(mapped) <= 8
    assert float(mapped.sum()) == float(mapped.copy().sum())  # the bytes are all still there
    release_pages(np.ones(10), 0, 10)  # ordinary memory: nothing happens


def test_a_mapped_reply_is_folded_bit_for_bit_and_not_left_resident(mapped: np.ndarray) -> None:
    params = {"w": np.zeros(mapped.shape, np.float32)}
    other = {"w": np.full(mapped.shape, 0.5, np.float32)}
    in_memory = [
        Contribution(0, 3, weights={"w": mapped.copy()}),
        Contribution(1, 5, weights=other),
    ]
    from_file = [Contribution(0, 3, weights={"w": mapped}), Contribution(1, 5, weights=other)]
    step = weighted_mean()
    results = []
    for contributions in (in_memory, from_file, from_file[::-1]):
        float(mapped.sum())  # resident again before each fold
        _, agg = run_round(step, step.init(params), 1, params, contributions)
        assert agg is not None
        results.append(agg.apply(params)["w"])
        if contributions is not in_memory:  # folded block by block, each block given back
            assert resident_kib(mapped) <= 8
    assert results[0].tobytes() == results[1].tobytes()
    np.testing.assert_allclose(results[2], results[0], rtol=1e-6)  # other order, other rounding


def test_checking_a_mapped_reply_leaves_it_not_resident(mapped: np.ndarray) -> None:
    spec = WeightsSpec.of({"w": mapped})
    float(mapped.sum())
    assert spec.conforms({"w": mapped})
    assert resident_kib(mapped) <= 8  # the finiteness check read it block by block
    assert sum_of_squares(mapped) == pytest.approx(float(np.vdot(mapped, mapped)), rel=1e-4)
    bad = np.array(mapped)
    bad[-1] = np.nan
    assert not spec.conforms({"w": bad})
