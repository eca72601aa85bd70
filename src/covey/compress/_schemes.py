"""Update compression schemes: how a client's update becomes fewer bytes, and back.

A scheme encodes one update (a mapping of names to arrays, the client's delta)
into an :class:`Encoded` of small arrays, and decodes it given the model's
layout. Only floating-point arrays are compressed; integer and boolean arrays
travel as they are. Every scheme here is stateless except :class:`TopK`, whose
error feedback (what it did not send) is kept by the caller on the client and
passed back in with the next update.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from covey.compress._batch import (
    SMALL,
    all_increasing,
    check_indices,
    densify,
    dequantize_all,
    fits,
    quantize_all,
)
from covey.compress._kernels import (
    _bf16_to_float16,
    _dequantize,
    _flat,
    _from_bf16,
    _to_bf16,
    _to_f16,
    _top_indices,
    index_dtype,
)
from covey.core._weights import Array, Weights, WeightsError, WeightsSpec

Parts = dict[str, dict[str, Array]]


@dataclass(frozen=True)
class Encoded:
    """One client's encoded update: per weight name, the arrays that travel.

    Args:
        scheme: The name of the scheme that encoded it.
        parts: For each weight name, named arrays (codes, indices, scales...).
        num_examples: The client's number of examples.
        metrics: The client's reported metrics.
        extras: Model-shaped arrays sent besides the update, uncompressed.
    """

    scheme: str
    parts: Parts
    num_examples: int
    metrics: dict[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Weights] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of array data this update puts on the wire (extras included)."""
        total = sum(a.nbytes for arrays in self.parts.values() for a in arrays.values())
        return total + sum(a.nbytes for w in self.extras.values() for a in w.values())


class Scheme(Protocol):
    """What a compression scheme provides."""

    @property
    def name(self) -> str:
        """The scheme's name, which each encoded update carries."""
        ...

    def encode(self, delta: Weights, rng: np.random.Generator) -> Parts:
        """Encode ``delta`` (float arrays compressed, others raw).

        Args:
            delta: The client's update by weight name (local minus global weights).
            rng: Random numbers for a stochastic encoding; the runtime seeds it
                with the run's seed, the round and the client's id.

        Returns:
            For each weight name of ``delta``, the named flat arrays that travel.

        Raises:
            ValueError: an array cannot be encoded (e.g. it holds NaN or Inf),
                naming it.
        """
        ...

    def decode(self, parts: Parts, spec: WeightsSpec) -> dict[str, Array]:
        """Rebuild the update from ``parts``, checked against the model's ``spec``.

        Args:
            parts: An encoded update, as :meth:`encode` made it and a peer sent it.
            spec: The names, shapes and dtypes of the model the task carried.

        Returns:
            The decoded update: an array of ``spec``'s shape and dtype per name.

        Raises:
            covey.WeightsError: ``parts`` does not fit ``spec`` (names, array
                sizes, dtypes or values no encoding makes), naming the array.
        """
        ...


def _part(parts: Parts, name: str, key: str, size: int, dtype: np.dtype[Any]) -> Array:
    """``parts[name][key]`` as a flat array of ``size`` values of ``dtype``, or a clear error."""
    try:
        arr = parts[name][key]
    except (KeyError, TypeError):
        raise WeightsError(f"encoded update: {name!r} has no {key!r}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (size,):
        raise WeightsError(
            f"encoded update: {name!r}/{key!r} must be {size} values of {dtype} in one "
            f"dimension, got shape {getattr(arr, 'shape', '?')} of "
            f"{getattr(arr, 'dtype', type(arr).__name__)}"
        )
    return arr


def _native(spec: WeightsSpec) -> list[np.dtype[Any]]:
    """The spec's dtypes in native byte order: what encoding sends, and decoding gives back.

    A spec taken from a model in the other byte order (``'>f4'`` on x86) would
    otherwise refuse the update its own encoder made (``float32``, not ``>f4``).
    """
    return [d if d.isnative else d.newbyteorder("=") for d in spec.dtypes]


def _decode_layout(parts: Parts, spec: WeightsSpec) -> None:
    if not isinstance(parts, dict) or set(parts) != set(spec.names):
        raise WeightsError("encoded update: its names do not match the model")


def _raw(x: Array) -> dict[str, Array]:
    return {"raw": _flat(x)}


def _decode_raw(parts: Parts, name: str, shape: tuple[int, ...], dtype: Any) -> Array:
    size = math.prod(shape)
    return _part(parts, name, "raw", size, dtype).reshape(shape).copy()


@dataclass(frozen=True)
class Identity:
    """No compression: the update as it is (the baseline of byte counts)."""

    # Not an argument: a scheme's name travels with each update and, for the
    # built-in schemes, is the spec a client rebuilds it from.
    name: str = field(default="none", init=False)

    def encode(self, delta: Weights, rng: np.random.Generator) -> Parts:
        """Every array raw: flattened, in its own dtype.

        Args:
            delta: The client's update by weight name.
            rng: Unused: the encoding is deterministic (taken for :class:`Scheme`).
        """
        return {n: _raw(x) for n, x in delta.items()}

    def decode(self, parts: Parts, spec: WeightsSpec) -> dict[str, Array]:
        """Every array back in its shape (in native byte order).

        Args:
            parts: The encoded update, as a client sent it.
            spec: The names, shapes and dtypes of the model the task carried.

        Raises:
            covey.WeightsError: ``parts`` does not fit ``spec``, naming the array.
        """
        _decode_layout(parts, spec)
        return {
            n: _decode_raw(parts, n, s, d)
            for n, s, d in zip(spec.names, spec.shapes, _native(spec), strict=True)
        }


_CAST_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16"}
"""Other names of the casts' dtypes, named by :class:`Cast`'s error."""


@dataclass(frozen=True)
class Cast:
    """Floating-point arrays cast to 16 bits: ``"float16"`` or ``"bfloat16"``.

    bfloat16 keeps float32's exponent range with 8 bits of mantissa (rounded
    once to nearest even, from float64 too); float16 has more mantissa but
    overflows above 65504. An array with NaN or Inf, or with a value beyond
    the target's range, is refused by :meth:`encode` with a ValueError naming it.
    A float16 array's values from 65408 up round to 65536 in bfloat16 and are
    decoded as 65504, float16's largest.

    Args:
        dtype: ``"float16"`` or ``"bfloat16"``.
    """

    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.dtype not in ("float16", "bfloat16"):
            given = self.dtype.lower() if isinstance(self.dtype, str) else ""
            close = [_CAST_ALIASES[given]] if given in _CAST_ALIASES else []
            if not close and 0 < len(given) < 40:
                close = difflib.get_close_matches(given, ["float16", "bfloat16"], n=1)
            raise ValueError(
                f"Cast dtype must be 'float16' or 'bfloat16', got {self.dtype!r:.60}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
            )

    @property
    def name(self) -> str:
        """The scheme's name: the target dtype."""
        return self.dtype

    def encode(self, delta: Weights, rng: np.random.Generator) -> Parts:
        """Each float array to 16 bits; integer and boolean arrays raw.

        bfloat16 rounds to nearest even once, from the array's own dtype.

        Args:
            delta: The client's update by weight name.
            rng: Unused: the encoding is deterministic (taken for :class:`Scheme`).

        Raises:
            ValueError: a float array holds NaN or Inf, or (float16) a value
                beyond 65504, or (bfloat16) one beyond float32's range, naming it.
        """
        out: Parts = {}
        for n, x in delta.items():
            if x.dtype.kind != "f":
                out[n] = _raw(x)
            elif self.dtype == "float16":
                out[n] = {"f16": _to_f16(n, x)}
            else:
                out[n] = {"bf16": _to_bf16(n, x)}
        return out

    def decode(self, parts: Parts, spec: WeightsSpec) -> dict[str, Array]:
        """Each array back to its own dtype (a float16 array's 65536 as 65504).

        Args:
            parts: The encoded update, as a client sent it.
            spec: The names, shapes and dtypes of the model the task carried.

        Raises:
            covey.WeightsError: ``parts`` does not fit ``spec``, naming the array.
        """
        _decode_layout(parts, spec)
        out: dict[str, Array] = {}
        for n, s, d in zip(spec.names, spec.shapes, _native(spec), strict=True):
            size = math.prod(s)
            if d.kind != "f":
                out[n] = _decode_raw(parts, n, s, d)
            elif self.dtype == "float16":
                out[n] = _part(parts, n, "f16", size, np.dtype(np.float16)).astype(d).reshape(s)
            else:
                bits = _part(parts, n, "bf16", size, np.dtype(np.uint16))
                if d == np.float16:
                    out[n] = _bf16_to_float16(n, bits).reshape(s)
                else:
                    out[n] = _from_bf16(bits, d).reshape(s)
        return out


@dataclass(frozen=True)
class Quantize:
    """Uniform quantization to ``bits`` bits per value with stochastic rounding.

    Each float array is mapped onto ``2**bits`` levels between its minimum and
    maximum; a value between two levels is rounded up with probability equal
    to its distance from the lower one, so the decoded update is unbiased:
    ``E[decode(encode(x))] = x``, per element, in float64. The decoded value
    is then rounded to the array's own dtype (to nearest): for float32 that
    bias is below measurement, for a float16 array it is up to about one
    float16 unit in the last place (measured: 2% of a q8 step). 4-bit codes
    are packed two per byte.

    Args:
        bits: 8 or 4.

    References:
        Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient
        Quantization and Encoding", NeurIPS 2017; Suresh et al., "Distributed
        Mean Estimation with Limited Communication", ICML 2017.
    """

    bits: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in (4, 8):
            raise ValueError(f"Quantize bits must be 4 or 8, got {self.bits!r}")
        object.__setattr__(self, "bits", int(self.bits))

    @property
    def name(self) -> str:
        """The scheme's name, e.g. ``"q8"``."""
        return f"q{self.bits}"

    def encode(self, delta: Weights, rng: np.random.Generator) -> Parts:
        """Codes, minimum and step of each float array; integer and boolean arrays raw.

        Args:
            delta: The client's update by weight name.
            rng: Draws the stochastic rounding of each value, in order.

        Raises:
            ValueError: a float array holds NaN or Inf, or spans a range too
                wide for float64, naming it.
        """
        scaled = quantize_all(delta, (1 << self.bits) - 1, rng)
        out: Parts = {}
        for n, x in delta.items():
            if x.dtype.kind != "f":
                out[n] = _raw(x)
                continue
            lo, step, codes = scaled[n]
            out[n] = {"codes": codes, "lo": np.array([lo]), "step": np.array([step])}
        return out

    def decode(self, parts: Parts, spec: WeightsSpec) -> dict[str, Array]:
        """``lo + code * step`` per value, in each array's dtype.

        Args:
            parts: The encoded update, as a client sent it.
            spec: The names, shapes and dtypes of the model the task carried.

        Raises:
            covey.WeightsError: ``parts`` does not fit ``spec``, or a scale is not
                finite, is negative, or has levels beyond the array's dtype.
        """
        _decode_layout(parts, spec)
        out: dict[str, Array] = {}
        f64 = np.dtype(np.float64)
        levels = (1 << self.bits) - 1
        small: list[tuple[Array, int, float, float, np.dtype[Any]]] = []  # decoded together
        later: list[tuple[str, tuple[int, ...]]] = []
        for n, s, d in zip(spec.names, spec.shapes, _native(spec), strict=True):
            size = math.prod(s)
            if d.kind != "f":
                out[n] = _decode_raw(parts, n, s, d)
                continue
            packed = (size + 1) // 2 if self.bits == 4 else size
            codes = _part(parts, n, "codes", packed, np.dtype(np.uint8))
            lo = float(_part(parts, n, "lo", 1, f64)[0])
            step = float(_part(parts, n, "step", 1, f64)[0])
            if not (math.isfinite(lo) and math.isfinite(step) and step >= 0.0):
                raise WeightsError(f"encoded update: {n!r} has a non-finite or negative scale")
            top = levels * step  # the widest a code reaches: lo + top must be a float64
            if not (math.isfinite(top) and math.isfinite(lo + top)):
                raise WeightsError(
                    f"encoded update: {n!r} has a scale whose levels overflow float64 "
                    f"(minimum {lo:g}, step {step:g})"
                )
            if not fits(d, lo, lo + top):  # and the lowest and highest levels a d
                raise WeightsError(
                    f"encoded update: {n!r} has a scale whose levels go beyond {d}'s range "
                    f"(minimum {lo:g}, step {step:g})"
                )
            if size > SMALL:
                out[n] = _dequantize(codes, size, lo, step, d, four=self.bits == 4).reshape(s)
            else:
                out[n] = codes  # holds its place among the others until decoded below
                small.append((codes, size, lo, step, d))
                later.append((n, s))
        for (n, s), x in zip(later, dequantize_all(small, four=self.bits == 4), strict=True):
            out[n] = x.reshape(s)
        return out


@dataclass(frozen=True)
class TopK:
    """Top-k sparsification: only the largest ``fraction`` of each float array's values.

    Sends the indices (uint32; uint64 for an array of more than 2**32 values) and
    values of the ``ceil(fraction * size)`` entries of largest magnitude, the
    fraction taken as the decimal it is written as (``0.07`` of 100 values is 7,
    though ``0.07 * 100`` is 7.000000000000001 in floating point). With error
    feedback, what was not sent is added to the client's next update
    (:func:`topk_with_feedback`), so nothing
    is lost, only delayed.

    Args:
        fraction: The share of values sent, in (0, 1].

    References:
        Stich, Cordonnier and Jaggi, "Sparsified SGD with Memory", NeurIPS 2018;
        Lin et al., "Deep Gradient Compression", ICLR 2018.
    """

    fraction: float = 0.01

    def __post_init__(self) -> None:
        fraction: Any = self.fraction  # typed float, given any number
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.number)):
            raise ValueError(f"TopK fraction must be a number in (0, 1], got {fraction!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"TopK fraction must be in (0, 1], got {fraction!r}")
        # A Python float: the spec a scheme travels as is its repr ("np.float64(0.05)"
        # of a NumPy number would name no scheme to a client or a resumed run). A narrower
        # float is read as the decimal it is written as: float(np.float32(0.1)) is
        # 0.10000000149011612, which would send 11 of 100 values, not 10.
        if isinstance(fraction, np.floating) and fraction.dtype.itemsize < 8:
            fraction = str(fraction)
        object.__setattr__(self, "fraction", float(fraction))

    @property
    def name(self) -> str:
        """The scheme's name, e.g. ``"top0.01"``."""
        return f"top{self.fraction:g}"

    @functools.cached_property
    def _ratio(self) -> tuple[int, int]:
        """The fraction as the decimal its shortest repr writes, a ratio of integers."""
        return Fraction(repr(self.fraction)).as_integer_ratio()

    def k(self, size: int) -> int:
        """How many of ``size`` values are sent: ``ceil(fraction * size)``, at least 1.

        Args:
            size: The number of values of an array; 0 gives 0.

        Example:
            >>> TopK(0.07).k(100), TopK(0.07).k(101), TopK(0.01).k(10)
            (7, 8, 1)
        """
        if not size:
            return 0
        num, den = self._ratio
        return min(size, max(1, -(-num * size // den)))  # exact: no float rounding

    def encode(self, delta: Weights, rng: np.random.Generator) -> Parts:
        """Indices and values of the largest entries of each float array.

        Integer and boolean arrays travel raw. The indices are sorted; this
        encodes ``delta`` alone, without error feedback (see
        :func:`~covey.compress.topk_with_feedback`).

        Args:
            delta: The client's update by weight name.
            rng: Unused: the encoding is deterministic (taken for :class:`Scheme`).

        Raises:
            ValueError: a float array holds NaN or Inf, naming it.
        """
        out: Parts = {}
        for n, x in delta.items():
            if x.dtype.kind != "f":
                out[n] = _raw(x)
                continue
            flat = _flat(x)
            idx = _top_indices(n, flat, self.k(flat.size))
            out[n] = {"index": idx, "value": flat[idx]}
        return out

    def decode(self, parts: Parts, spec: WeightsSpec) -> dict[str, Array]:
        """A dense array, zero where nothing was sent.

        Args:
            parts: The encoded update, as a client sent it.
            spec: The names, shapes and dtypes of the model the task carried.

        Raises:
            covey.WeightsError: ``parts`` does not fit ``spec``, or its indices are
                out of range or not strictly increasing.
        """
        _decode_layout(parts, spec)
        out: dict[str, Array] = {}
        small: list[tuple[str, Array, int]] = []  # indices checked together, in order
        later: list[tuple[str, Array, Array, tuple[int, ...]]] = []
        try:
            for n, s, d in zip(spec.names, spec.shapes, _native(spec), strict=True):
                size = math.prod(s)
                if d.kind != "f":
                    out[n] = _decode_raw(parts, n, s, d)
                    continue
                k = self.k(size)
                idx = _part(parts, n, "index", k, index_dtype(size))
                small.append((n, idx, size)) if size <= SMALL else check_indices(n, idx, size)
                out[n] = value = _part(parts, n, "value", k, d)  # in its place until decoded
                later.append((n, idx, value, s))
        except WeightsError:
            for item in small:  # an earlier array's indices are named first
                check_indices(*item)
            raise
        if not all_increasing(small):
            for item in small:
                check_indices(*item)
        dense = densify([(idx, value, math.prod(s)) for _, idx, value, s in later])
        for (n, _, _, s), x in zip(later, dense, strict=True):
            out[n] = x.reshape(s)
        return out
