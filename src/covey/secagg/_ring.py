"""The ring ``Z_{2^w}`` that masked vectors live in: width, fixed-point, bit-packing.

Clients' integer vectors are summed modulo ``2^w``; the width ``w`` is chosen so
that the sum of ``n`` vectors with entries in ``[-bound, bound]`` never wraps
(``n * bound < 2^(w-1)``), so the unmasked sum read as a signed integer is
exact. Values outside their declared range are refused loudly, never wrapped or
clipped. Masked vectors travel bit-packed, ``w`` bits an entry.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np

MAX_BITS = 62
"""The widest ring: sums are computed in 64-bit words."""


class RangeError(ValueError):
    """A value outside its declared range, or a ring too narrow for the sum it must hold."""


def ring_bits(n: int, bound: int) -> int:
    """The least ring width whose signed range holds a sum of ``n`` entries in ``[-bound, bound]``.

    Args:
        n: How many entries are summed, at least 1.
        bound: The largest magnitude of an entry, at least 0.

    Raises:
        RangeError: If that needs more than :data:`MAX_BITS` bits.

    Example:
        >>> ring_bits(100, 2**15 - 1)
        23
    """
    if n < 1 or bound < 0:
        raise ValueError(f"need n >= 1 and bound >= 0, got n={n}, bound={bound}")
    largest = n * bound
    bits = max(largest.bit_length() + 1, 2)
    if bits > MAX_BITS:
        raise RangeError(
            f"the sum of {n} values in [-{bound}, {bound}] needs a {bits}-bit ring, more than "
            f"{MAX_BITS}: lower the quantization bits, the example-count bound or the clients"
        )
    return bits


def word(bits: int) -> np.dtype[np.unsignedinteger]:
    """The machine word that holds ring elements of ``bits`` bits (uint32 or uint64)."""
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def to_ring(values: np.ndarray, bits: int, bound: int) -> np.ndarray:
    """Signed integers in ``[-bound, bound]`` as ring elements (two's complement, ``bits`` wide).

    Raises:
        RangeError: If a value lies outside ``[-bound, bound]``.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        raise RangeError(f"secure-sum inputs must be integers, got dtype {values.dtype}")
    if values.size and (int(values.max()) > bound or int(values.min()) < -bound):
        bad = int(np.argmax(np.abs(values.astype(np.int64)) > bound))
        # The value itself stays out of the message: errors travel to the server.
        raise RangeError(f"the input value at index {bad} is outside [-{bound}, {bound}]")
    # Two's complement wraps modulo the word; the ring keeps the low ``bits`` bits.
    return values.astype(word(bits), casting="unsafe")


def from_ring(elements: np.ndarray, bits: int) -> np.ndarray:
    """Ring elements read as signed integers in ``[-2^(bits-1), 2^(bits-1))``."""
    u = np.asarray(elements).astype(np.uint64) & np.uint64((1 << bits) - 1)
    signed = u.astype(np.int64)
    signed[u >= np.uint64(1 << (bits - 1))] -= np.int64(1) << np.int64(bits)
    return signed


def packed_size(count: int, bits: int) -> int:
    """Bytes of ``count`` entries packed at ``bits`` bits each."""
    return -(-count * bits // 8)


def pack(elements: np.ndarray, bits: int) -> bytes:
    """Bit-pack ring elements, ``bits`` bits each, little-endian.

    Sixty-four entries fill exactly ``bits`` 64-bit words, so the entries are
    processed as 64 columns, each shifted into place in one vectorized step.
    """
    count = elements.size
    rows = -(-count // 64)
    vals = np.zeros(rows * 64, dtype=np.uint64)
    vals[:count] = elements
    mask = np.uint64((1 << bits) - 1)
    vals &= mask
    if bits % 8 == 0:  # whole bytes: keep the low bytes of each little-endian word
        low = vals[:count].astype("<u8").view(np.uint8).reshape(count, 8)[:, : bits // 8]
        return low.tobytes()
    cols = np.ascontiguousarray(vals.reshape(rows, 64).T)  # cols[j]: entry j of every group
    out = np.zeros((bits + 1, rows), dtype=np.uint64)
    for j in range(64):
        w, shift = divmod(j * bits, 64)
        out[w] |= cols[j] << np.uint64(shift)
        if shift and shift + bits > 64:
            out[w + 1] |= cols[j] >> np.uint64(64 - shift)
    data = np.ascontiguousarray(out[:bits].T).astype("<u8").tobytes()
    return data[: packed_size(count, bits)]


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    """Undo :func:`pack`: ``count`` ring elements in the word type of ``bits``.

    Raises:
        RangeError: If ``data`` does not have exactly the packed size.
    """
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise RangeError(f"a packed vector has {len(data)} bytes, expected {expected}")
    if bits % 8 == 0:
        table = np.zeros((count, 8), dtype=np.uint8)
        table[:, : bits // 8] = np.frombuffer(data, dtype=np.uint8).reshape(count, bits // 8)
        return table.view("<u8").reshape(count).astype(word(bits))
    rows = -(-count // 64)
    buf = np.zeros(rows * bits * 8, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    words = np.zeros((bits + 1, rows), dtype=np.uint64)
    words[:bits] = buf.view("<u8").reshape(rows, bits).T
    mask = np.uint64((1 << bits) - 1)
    vals = np.empty((64, rows), dtype=np.uint64)
    for j in range(64):
        w, shift = divmod(j * bits, 64)
        col = words[w] >> np.uint64(shift)
        if shift and shift + bits > 64:
            col |= words[w + 1] << np.uint64(64 - shift)
        vals[j] = col & mask
    return np.ascontiguousarray(vals.T).reshape(-1)[:count].astype(word(bits))


def out_of_range(name: str, array: Any, exc: RangeError) -> RangeError:
    """``exc`` of the array ``name`` (the model's ``array``), naming it and what to do."""
    if np.asarray(array).dtype.kind not in "iu":
        return RangeError(f"{name!r}: {exc}")
    return RangeError(
        f"{name!r} is an integer array whose change lies outside the clipping range: a "
        "counter, such as BatchNorm's num_batches_tracked that grows by the batches of a "
        "round? Keep integer state out of the model (BatchNorm(track_running_stats=False), "
        "or a non-persistent buffer) rather than raising clip_range, which would cost every "
        "float weight precision"
    )


def quantize(values: np.ndarray, clip: float, bits: int) -> np.ndarray:
    """Fixed-point integers for floats in ``[-clip, clip]``: ``bits`` bits, unbiased rounding.

    ``x`` maps to ``x * s`` with ``s = (2^(bits-1) - 1) / clip``, rounded up or
    down at random with the probabilities that make the rounding unbiased (the
    randomness from the OS's CSPRNG). The error of one value is below ``1 / s``.

    Raises:
        RangeError: If a value is not finite or lies outside ``[-clip, clip]``.
    """
    x = np.asarray(values, dtype=np.float64)
    if not np.isfinite(x).all():
        raise RangeError("cannot quantize a non-finite value (NaN or infinity)")
    if x.size and float(np.abs(x).max()) > clip:
        bad = int(np.argmax(np.abs(x)))
        raise RangeError(
            f"the value at index {bad} is outside the clipping range [-{clip}, {clip}]: "
            "raise clip_range or clip the update yourself"
        )
    rng = np.random.default_rng(np.frombuffer(os.urandom(16), dtype=np.uint64))
    # floor(v) + 1 with probability frac(v): floor(v + U) would round v + U to the
    # next integer for U within half a unit in the last place of 1, so that an
    # integer v far from 0 (48 bits) was sometimes stepped up.
    scaled = x * scale(clip, bits)
    low = np.floor(scaled)
    scaled -= low
    low += rng.random(x.shape) < scaled
    scaled = low
    top = (1 << (bits - 1)) - 1
    np.clip(scaled, -top, top, out=scaled)  # only float rounding at exactly +-clip can step past
    return scaled.astype(np.int64)


def scale(clip: float, bits: int) -> float:
    """The fixed-point scale: quantized units per unit of value."""
    if not clip > 0 or not np.isfinite(clip):
        raise ValueError(f"clip range must be a positive finite number, got {clip!r}")
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 2 <= bits <= 48:
        raise ValueError(f"quantization bits must be an int in [2, 48], got {bits!r}")
    units = float((1 << (bits - 1)) - 1)
    if not math.isfinite(units / clip):  # a subnormal range: the scale overflows a float
        raise ValueError(
            f"clip range {clip!r} is too small for {bits}-bit fixed point: "
            f"{units:g} / {clip!r} overflows a float64; use a range of at least "
            f"{smallest_range(bits):g} (rescale the values if they are that small)"
        )
    return units / clip


def smallest_range(bits: int) -> float:
    """A range just above the least one whose ``bits``-bit fixed-point scale is finite."""
    return float(f"{float((1 << (bits - 1)) - 1) / sys.float_info.max * 1.1:.2g}")
