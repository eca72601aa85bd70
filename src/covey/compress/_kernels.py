"""The array work of the compression schemes, a slice at a time.

Encoders go through a large array in slices of :data:`CHUNK` values, so what
they hold besides their output is a few slices, not copies of the whole
array. They refuse what they cannot carry (NaN or Inf, values beyond a cast's
range) with an error naming the array and the cause.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from covey.core._weights import Array, WeightsError

CHUNK = 1 << 17
"""Values an encoder works on at a time: its temporaries are a few slices this long."""

UINT32_INDEXED = 1 << 32
"""The most values an array may have for top-k to send its indices as uint32 (else uint64)."""


def index_dtype(size: int) -> np.dtype[Any]:
    """The dtype of top-k's indices into an array of ``size`` values: uint32, or uint64 beyond.

    uint32 indices of an array of more than 2**32 values would wrap around.
    """
    return _UINT32 if size <= UINT32_INDEXED else _UINT64


_UINT32, _UINT64 = np.dtype(np.uint32), np.dtype(np.uint64)


def _flat(x: Array) -> Array:
    """``x`` in one dimension, C order and native byte order (a copy only if it is not so)."""
    dtype = x.dtype if x.dtype.isnative else x.dtype.newbyteorder("=")
    return np.ascontiguousarray(x, dtype=dtype).reshape(-1)


def _non_finite(name: str, scheme: str) -> ValueError:
    return ValueError(
        f"{name!r} has non-finite values (NaN or Inf): {scheme} cannot encode the update"
    )


def _to_f16(name: str, x: Array) -> Array:
    """``x`` as float16, refused if a value is not finite or beyond float16's range."""
    with np.errstate(over="ignore", invalid="ignore"):
        out: Array = np.asarray(x).astype(np.float16).reshape(-1)
    if not all(bool(np.isfinite(out[i : i + CHUNK]).all()) for i in range(0, out.size, CHUNK)):
        for start in range(0, out.size, CHUNK):
            if not bool(np.isfinite(_flat(x)[start : start + CHUNK]).all()):
                raise _non_finite(name, "float16")
        raise ValueError(
            f"{name!r} has values beyond float16's range (largest 65504): "
            "use bfloat16, which keeps float32's range"
        )
    return out


def _to_bf16(name: str, x: Array) -> Array:
    """The upper 16 bits of float32, rounded to nearest even, a slice at a time.

    A wider value goes to float32 rounded to odd (toward zero, the last bit set
    if anything was dropped), so the rounding to bfloat16 is the only one: float32
    keeps more than two bits beyond bfloat16's, so the result is the value rounded
    once to nearest even.

    References:
        Boldo and Melquiond, "Emulation of FMA and Correctly Rounded Sums: Proved
        Algorithms Using Rounding to Odd", IEEE Transactions on Computers 2008.
    """
    flat = _flat(x)
    out = np.empty(flat.size, dtype=np.uint16)
    for start in range(0, flat.size, CHUNK):
        seg = flat[start : start + CHUNK]
        if not bool(np.isfinite(seg).all()):
            raise _non_finite(name, "bfloat16")
        with np.errstate(over="ignore"):
            y = seg.astype(np.float32)
        u = y.view(np.uint32)
        if seg.dtype.itemsize > 4:
            _round_to_odd(y, seg)
        u += np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
        u >>= np.uint32(16)
        bits = u.astype(np.uint16)
        if bool(((bits & np.uint16(0x7F80)) == np.uint16(0x7F80)).any()):
            raise ValueError(
                f"{name!r} has values beyond bfloat16's range (float32's, about 3.39e38)"
            )
        out[start : start + seg.size] = bits
    return out


def _round_to_odd(y: Array, wide: Array) -> None:
    """Make ``y`` (``wide`` rounded to float32 to nearest) ``wide`` rounded to odd, in place."""
    with np.errstate(over="ignore", invalid="ignore"):
        back = y.astype(wide.dtype)
    away = np.abs(back) > np.abs(wide)
    np.copyto(y, np.nextafter(y, np.float32(0)), where=away)
    bits = y.view(np.uint32)
    bits |= (back != wide).astype(np.uint32)


def _from_bf16(bits: Array, dtype: np.dtype[Any]) -> Array:
    """bfloat16 ``bits`` as values of ``dtype``, a slice at a time."""
    out = np.empty(bits.size, dtype=dtype)
    for start in range(0, bits.size, CHUNK):
        wide = bits[start : start + CHUNK].astype(np.uint32)
        wide <<= np.uint32(16)
        out[start : start + wide.size] = wide.view(np.float32)
    return out


_BF16_65536 = 0x4780
"""The bfloat16 bits of 65536, what float16's values from 65408 up round to."""
_BF16_INF = 0x7F80
"""The bfloat16 bits of Inf (magnitudes from here on are Inf and NaN)."""


def _bf16_to_float16(name: str, bits: Array) -> Array:
    """bfloat16 ``bits`` of a float16 array as float16, within float16's range.

    A float16 value of 65408 or more rounds to 65536 in bfloat16, beyond float16's
    range: it is read back as 65504, float16's largest. A larger finite value,
    which no float16 array encodes to, is refused (NaN and Inf decode as they
    are, for the server's check of non-finite updates to refuse).
    """
    mag = bits & np.uint16(0x7FFF)
    if bool(((mag > _BF16_65536) & (mag < _BF16_INF)).any()):
        raise WeightsError(
            f"encoded update: {name!r} has bfloat16 values beyond float16's range "
            "(65504), which no float16 array encodes to"
        )
    with np.errstate(over="ignore"):  # 65536 overflows float16: set to 65504 below
        out = _from_bf16(bits, np.dtype(np.float16))
    top = mag == _BF16_65536
    out[top] = np.copysign(np.float16(65504.0), out[top])
    return out


def _dequantize(
    codes: Array, size: int, lo: float, step: float, dtype: np.dtype[Any], *, four: bool
) -> Array:
    """``lo + code * step`` in float64, then as ``dtype``, a slice at a time.

    ``codes`` holds ``size`` codes, or with ``four`` 4-bit codes two per byte.
    """
    out = np.empty(size, dtype=dtype)
    for start in range(0, size, CHUNK):
        if four:  # CHUNK is even: a slice starts on a byte
            seg = _unpack4(codes[start // 2 : (start + CHUNK) // 2], min(CHUNK, size - start))
        else:
            seg = codes[start : start + CHUNK]
        value = seg.astype(np.float64)
        value *= step
        value += lo
        out[start : start + seg.size] = value
    return out


def _quantize(
    name: str, x: Array, levels: int, rng: np.random.Generator
) -> tuple[float, float, Array]:
    """``(lo, step, codes)`` of ``x`` on ``levels + 1`` levels, rounded stochastically.

    The random numbers are drawn slice by slice from ``rng``, the same stream one
    draw for the whole array would give. 4-bit codes (``levels == 15``) come
    packed two per byte, each slice packed as it is made.
    """
    flat = _flat(x)
    lo = float(flat.min()) if flat.size else 0.0
    hi = float(flat.max()) if flat.size else 0.0
    step = _scale(name, lo, hi, levels)
    four = levels == 15
    codes = np.empty((flat.size + 1) // 2 if four else flat.size, dtype=np.uint8)
    for start in range(0, flat.size, CHUNK):
        seg = flat[start : start + CHUNK]
        t = np.subtract(seg, lo, dtype=np.float64)
        if step > 0.0:
            t /= step
        else:
            t.fill(0.0)
        t += rng.random(seg.size)
        np.floor(t, out=t)
        np.clip(t, 0, levels, out=t)
        if four:  # CHUNK is even: a slice starts on a byte
            packed = _pack4(t.astype(np.uint8))
            codes[start // 2 : start // 2 + packed.size] = packed
        else:
            codes[start : start + seg.size] = t
    return lo, step, codes


def _scale(name: str, lo: float, hi: float, levels: int) -> float:
    """The step of ``levels`` levels from ``lo`` to ``hi``, refused if not finite."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise _non_finite(name, f"q{levels.bit_length()}")
    if not math.isfinite(hi - lo):
        raise ValueError(
            f"{name!r} spans a range wider than float64's ({lo:g} to {hi:g}): "
            "it cannot be quantized"
        )
    step = (hi - lo) / levels if hi > lo else 0.0
    if not math.isfinite(lo + levels * step):  # the highest level, as the decoder makes it
        raise ValueError(
            f"{name!r} reaches {hi:g}, so close to float64's largest value that its highest "
            "quantization level, rounded, overflows: it cannot be quantized"
        )
    return step


def _pack4(q: Array) -> Array:
    """Codes below 16 two per byte, the first in the low nibble (a zero pads an odd count)."""
    if q.size % 2:
        q = np.concatenate([q, np.zeros(1, dtype=np.uint8)])
    packed: Array = (q[0::2] | (q[1::2] << np.uint8(4))).astype(np.uint8)
    return packed


def _unpack4(packed: Array, size: int) -> Array:
    out = np.empty(packed.size * 2, dtype=np.uint8)
    out[0::2] = packed & np.uint8(0x0F)
    out[1::2] = packed >> np.uint8(4)
    return out[:size]


def _top_indices(name: str, flat: Array, k: int) -> Array:
    """The sorted indices (:func:`index_dtype`) of ``k`` entries of ``flat`` of largest magnitude.

    Works a slice at a time: each slice's ``k`` largest are candidates, and the
    candidates are cut back to ``k`` whenever they outgrow ``2k``,
    so the temporaries are slices and candidates, not copies of ``flat``.
    """
    if 0 < flat.size <= CHUNK:  # one slice: its k largest are the answer
        seg = np.abs(flat, dtype=np.float64)
        if not math.isfinite(np.maximum.reduce(seg)):  # NaN, or Inf, is the largest
            raise _non_finite(name, "top-k")
        found = _largest(seg, k)
        found.sort()
        return found.astype(index_dtype(flat.size))
    idx: list[Array] = []
    mag: list[Array] = []
    held = 0
    for start in range(0, flat.size, CHUNK):
        seg = np.abs(flat[start : start + CHUNK], dtype=np.float64)
        if not bool(np.isfinite(seg).all()):
            raise _non_finite(name, "top-k")
        local = _largest(seg, k)
        idx.append(local + start)
        mag.append(seg[local])
        held += local.size
        if held > 2 * k:
            idx, mag = _cut(idx, mag, k)
            held = k
    if not idx:  # an empty array
        return np.zeros(0, dtype=index_dtype(0))
    idx, mag = _cut(idx, mag, k)
    out: Array = np.sort(idx[0]).astype(index_dtype(flat.size))
    return out


def _cut(idx: list[Array], mag: list[Array], k: int) -> tuple[list[Array], list[Array]]:
    """The candidates cut back to the ``k`` of largest magnitude, as one array each."""
    all_idx, all_mag = np.concatenate(idx), np.concatenate(mag)
    keep = _largest(all_mag, k)
    return [all_idx[keep]], [all_mag[keep]]


def _largest(values: Array, k: int) -> Array:
    """Positions of the ``k`` largest of ``values`` (all of them if there are no more)."""
    if k >= values.size:
        return np.arange(values.size)
    found: Array = values.argpartition(values.size - k)[values.size - k :]
    return found
