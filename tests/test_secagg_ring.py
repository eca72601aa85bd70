"""The ring: widths that never wrap, loud range errors, bit-packing, fixed point, keystreams."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covey.secagg import _crypto, _ring
from covey.secagg._ring import RangeError


@settings(max_examples=80, deadline=None)
@given(bits=st.integers(2, 62), count=st.integers(0, 300), seed=st.integers(0, 2**32))
def test_pack_unpack_round_trip_at_any_width(bits: int, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**bits, size=count, dtype=np.uint64).astype(_ring.word(bits))
    packed = _ring.pack(values, bits)
    assert len(packed) == _ring.packed_size(count, bits) == -(-count * bits // 8)
    np.testing.assert_array_equal(_ring.unpack(packed, bits, count), values)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2000), bound=st.integers(0, 2**30))
def test_ring_holds_every_sum_of_n_bounded_values(n: int, bound: int) -> None:
    bits = _ring.ring_bits(n, bound)
    for extreme in (bound, -bound):
        total = np.zeros(1, dtype=_ring.word(bits))
        one = _ring.to_ring(np.array([extreme]), bits, bound)
        for _ in range(min(n, 50)):
            total += one
        expected = extreme * min(n, 50)
        assert _ring.from_ring(total, bits)[0] == expected
    assert n * bound < 2 ** (bits - 1)


def test_range_errors_are_loud_and_do_not_carry_the_value() -> None:
    with pytest.raises(RangeError, match="index 1") as info:
        _ring.to_ring(np.array([0, 12345]), 20, 100)
    assert "12345" not in str(info.value)
    with pytest.raises(RangeError, match="clipping range"):
        _ring.quantize(np.array([0.0, 1.5]), 1.0, 16)
    with pytest.raises(RangeError, match="non-finite"):
        _ring.quantize(np.array([np.nan]), 1.0, 16)
    with pytest.raises(RangeError, match="62"):
        _ring.ring_bits(10**6, 2**50)
    with pytest.raises(RangeError, match="bytes"):
        _ring.unpack(b"\x00" * 3, 13, 3)


def test_quantization_is_unbiased_and_within_one_step() -> None:
    x = np.full(200_000, 0.123456789)
    q = _ring.quantize(x, 1.0, 12)
    s = _ring.scale(1.0, 12)
    assert np.all(np.abs(q / s - x) < 1 / s)
    assert abs(float(np.mean(q / s)) - 0.123456789) < 0.05 / s
    edges = _ring.quantize(np.array([-1.0, 1.0]), 1.0, 12)
    assert edges.tolist() == [-(2**11 - 1), 2**11 - 1]


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_in_place_masks_equal_the_expanded_keystream(dtype: type) -> None:
    seed = os.urandom(32)
    acc: np.ndarray = np.arange(1000, dtype=dtype)
    _crypto.add_stream(acc, seed, +1)
    expected = np.arange(1000, dtype=dtype) + _crypto.expand(seed, 1000, dtype)
    np.testing.assert_array_equal(acc, expected)
    _crypto.add_stream(acc, seed, -1)
    np.testing.assert_array_equal(acc, np.arange(1000, dtype=dtype))
