"""q8, q4 and top-k encode to the bytes they always did, and decode to the same values.

The encoders and decoders work on many small arrays at once; these tests hold
their output against the per-array kernels they replaced (a copy of which is
below, as it was) and against digests of the bytes those kernels made, for
models of float16, float32 and float64 arrays, 0-d, empty, tiny, strided,
big-endian and constant ones, beside integer and bool arrays and arrays large
enough to be worked on in slices.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest

from covey.compress import Quantize, TopK
from covey.compress._batch import fits
from covey.compress._feedback import topk_with_feedback
from covey.compress._plain import encoded_to_plain
from covey.compress._schemes import Encoded
from covey.core._weights import WeightsError, WeightsSpec

CHUNK = 1 << 17


def _old_flat(x: np.ndarray) -> np.ndarray:
    dtype = x.dtype if x.dtype.isnative else x.dtype.newbyteorder("=")
    return np.ascontiguousarray(x, dtype=dtype).reshape(-1)


def _old_pack4(q: np.ndarray) -> np.ndarray:
    if q.size % 2:
        q = np.concatenate([q, np.zeros(1, dtype=np.uint8)])
    return (q[0::2] | (q[1::2] << np.uint8(4))).astype(np.uint8)


def _old_quantize(x: np.ndarray, levels: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    flat = _old_flat(x)
    lo = float(flat.min()) if flat.size else 0.0
    hi = float(flat.max()) if flat.size else 0.0
    step = (hi - lo) / levels if hi > lo else 0.0
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
        if four:
            packed = _old_pack4(t.astype(np.uint8))
            codes[start // 2 : start // 2 + packed.size] = packed
        else:
            codes[start : start + seg.size] = t
    return {"codes": codes, "lo": np.array([lo]), "step": np.array([step])}


def _old_largest(values: np.ndarray, k: int) -> np.ndarray:
    if k >= values.size:
        return np.arange(values.size)
    return np.argpartition(values, values.size - k)[values.size - k :]


def _old_cut(idx: list[Any], mag: list[Any], k: int) -> tuple[list[Any], list[Any]]:
    all_idx, all_mag = np.concatenate(idx), np.concatenate(mag)
    keep = _old_largest(all_mag, k)
    return [all_idx[keep]], [all_mag[keep]]


def _old_top(x: np.ndarray, k: int) -> dict[str, np.ndarray]:
    flat = _old_flat(x)
    idx: list[Any] = []
    mag: list[Any] = []
    held = 0
    for start in range(0, flat.size, CHUNK):
        seg = np.abs(flat[start : start + CHUNK], dtype=np.float64)
        local = _old_largest(seg, k)
        idx.append(local + start)
        mag.append(seg[local])
        held += local.size
        if held > 2 * k:
            idx, mag = _old_cut(idx, mag, k)
            held = k
    if not idx:
        index = np.zeros(0, dtype=np.uint32)
    else:
        idx, mag = _old_cut(idx, mag, k)
        index = np.sort(idx[0]).astype(np.uint32)
    return {"index": index, "value": flat[index]}


def _old_encode(scheme: Any, delta: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for n, x in delta.items():
        if x.dtype.kind != "f":
            out[n] = {"raw": _old_flat(x)}
        elif isinstance(scheme, Quantize):
            out[n] = _old_quantize(x, (1 << scheme.bits) - 1, rng)
        else:
            out[n] = _old_top(x, scheme.k(x.size))
    return out


def _old_dequantize(parts: dict[str, np.ndarray], size: int, dtype: Any, four: bool) -> Any:
    codes, lo, step = parts["codes"], float(parts["lo"][0]), float(parts["step"][0])
    if four:
        q = np.empty(codes.size * 2, dtype=np.uint8)
        q[0::2] = codes & np.uint8(0x0F)
        q[1::2] = codes >> np.uint8(4)
        codes = q[:size]
    value = codes.astype(np.float64)
    value *= step
    value += lo
    out = np.empty(size, dtype=dtype)
    out[...] = value
    return out


def _model(seed: int) -> dict[str, np.ndarray]:
    """Float arrays of every kind a model has, among integer and bool ones."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((6, 8))
    out: dict[str, np.ndarray] = {
        "scalar": np.array(rng.standard_normal(), dtype=np.float32),
        "count": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "one": rng.standard_normal(1).astype(np.float64),
        "two": rng.standard_normal(2).astype(np.float16),
        "half": (rng.standard_normal(37) * 100).astype(np.float16),
        "mask": rng.random(5) > 0.5,
        "strided": base[:, ::3],
        "transposed": base.T,
        "big_endian": rng.standard_normal(33).astype(">f4"),
        "constant": np.full(9, -2.5, np.float32),
        "zeros": np.zeros(4, np.float64),
        "signed_zeros": np.array([0.0, -0.0, 0.0, -0.0], np.float32),
        "ints": np.arange(6, dtype=np.int32).reshape(2, 3),
        "wide": rng.standard_normal(5) * 1e300,
        "tiny": rng.standard_normal(7) * 1e-310,
    }
    for i in range(40):
        size = int(rng.integers(1, 3000))
        dtype = (np.float16, np.float32, np.float64)[i % 3]
        out[f"layer{i:02d}"] = (rng.standard_normal(size) * rng.uniform(0.01, 10)).astype(dtype)
    out["large"] = rng.standard_normal(CHUNK * 2 + 1001).astype(np.float32)
    out["after_large"] = rng.standard_normal(100).astype(np.float32)
    return out


SCHEMES = [Quantize(8), Quantize(4), TopK(0.1), TopK(0.01), TopK(0.5), TopK(1.0)]


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for n in a:
        assert list(a[n]) == list(b[n]), n
        for key in a[n]:
            x, y = a[n][key], b[n][key]
            assert x.dtype == y.dtype, (n, key)
            assert x.shape == y.shape, (n, key)
            assert x.tobytes() == y.tobytes(), (n, key)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_the_encoding_is_the_per_array_kernels_bytes(scheme: Any, seed: int) -> None:
    delta = _model(seed)
    parts = scheme.encode(delta, np.random.default_rng(seed))
    _same(parts, _old_encode(scheme, delta, seed))


@pytest.mark.parametrize("bits", [8, 4])
def test_q_decodes_to_the_per_array_kernels_values(bits: int) -> None:
    delta = _model(3)
    scheme = Quantize(bits)
    spec = WeightsSpec.of(delta)
    parts = scheme.encode(delta, np.random.default_rng(3))
    decoded = scheme.decode(parts, spec)
    for n, x in delta.items():
        got = decoded[n]
        assert got.shape == x.shape
        assert got.dtype == x.dtype.newbyteorder("=")
        if x.dtype.kind == "f":
            want = _old_dequantize(parts[n], x.size, got.dtype, bits == 4)
            assert got.reshape(-1).tobytes() == want.tobytes(), n
        else:
            assert np.array_equal(got, x)


def test_topk_feedback_sends_and_keeps_what_it_did() -> None:
    scheme = TopK(0.05)
    model = _model(4)
    spec = WeightsSpec.of(model)
    residual = None
    noise = np.random.default_rng(4).standard_normal
    for _ in range(3):
        delta = {
            n: x if x.dtype.kind != "f" else np.asarray(x + noise(x.shape)).astype(x.dtype)
            for n, x in model.items()
        }
        corrected = {
            n: (x if x.dtype.kind != "f" or residual is None else np.asarray(x + residual[n]))
            for n, x in delta.items()
        }
        parts, residual = topk_with_feedback(scheme, delta, residual, spec)
        _same(parts, _old_encode(scheme, corrected, 0))
        for n, x in corrected.items():
            if x.dtype.kind != "f":
                continue
            kept = np.array(x, order="C").reshape(-1)
            kept[parts[n]["index"]] = 0
            assert residual[n].reshape(-1).tobytes() == kept.tobytes(), n
        decoded = scheme.decode(parts, spec)
        for n, x in corrected.items():
            if x.dtype.kind == "f":
                dense = np.zeros(x.size, x.dtype.newbyteorder("="))
                dense[parts[n]["index"]] = parts[n]["value"]
                assert decoded[n].reshape(-1).tobytes() == dense.tobytes(), n


def _digest(parts: dict[str, Any]) -> str:
    plain = encoded_to_plain(Encoded("x", parts, 1))
    h = hashlib.sha256()
    for key, value in plain.items():
        h.update(key.encode())
        if isinstance(value, np.ndarray):
            h.update(f"{value.dtype.str}{value.shape}".encode())
            h.update(value.tobytes())
    return h.hexdigest()


# The bytes the per-array kernels made of _model(5) (covey before many arrays were
# encoded together): a change of these is a change of the wire format.
DIGESTS = {
    "q8": "af77a60d7532156d5acc9e1bfd24d95022d2753f39000a0b13848d8fc3e43686",
    "q4": "1bff8fc76ee804d23588997799dfe19fd8e2c0b43895df956243199c06cde444",
    "top0.1": "23b95f2b924d8a0b9a196adc2632199fd682fecd1e274c0fc8382bb3a2487b3b",
    "top0.01": "7af4afd222d198ba1b60917c64e4f6efb3057c490b267eb3b55b2c14300bb485",
    "top0.5": "34e199d4cf4728772c1ec8ec8eae4274a2c13c9ba28e09fa4b185c23af346863",
    "top1": "217aad5275b9b94905cefd41e0195b30e161f21cc71c3f97f876bb7661110c3d",
}


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_the_bytes_are_those_covey_always_sent(scheme: Any) -> None:
    parts = scheme.encode(_model(5), np.random.default_rng([5, 1, 2]))
    assert _digest(parts) == DIGESTS[scheme.name]


def test_the_model_has_what_it_should() -> None:
    model = _model(0)
    assert any(x.ndim == 0 for x in model.values())
    assert any(x.size == 0 for x in model.values())
    assert any(not x.flags.c_contiguous for x in model.values())
    assert {x.dtype for x in model.values() if x.dtype.kind == "f"} >= {
        np.dtype(np.float16),
        np.dtype(np.float32),
        np.dtype(np.float64),
        np.dtype(">f4"),
    }
    assert all(math.isfinite(float(np.abs(x).max())) for x in model.values() if x.size)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_a_scale_fits_a_dtype_exactly_when_its_cast_is_finite(dtype: Any) -> None:
    top = float(np.finfo(dtype).max)
    edge = [top, math.nextafter(top, math.inf), 65519.99, 65520.0, 3.4028235677973366e38]
    edge += [math.nextafter(3.4028235677973366e38, 0), 1.7976931348623157e308, 0.0, 1e-300]
    edge += [math.nextafter(v, math.inf) for v in edge]
    for value in [v for v in edge + [-v for v in edge] if math.isfinite(v)]:  # as checked
        with np.errstate(over="ignore"):
            cast = bool(np.isfinite(np.array([value]).astype(dtype)).all())
        assert fits(np.dtype(dtype), value) == cast, value


@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        ({"a": "index_order"}, "'a' has indices not strictly increasing"),
        ({"a": "index_range", "b": "no_value"}, "'a' has an index out of range"),
        ({"a": "index_order", "big": "index_range"}, "'a' has indices not strictly"),
        ({"b": "no_value", "c": "index_order"}, "'b' has no 'value'"),
        ({"big": "index_order", "c": "index_range"}, "'big' has indices not strictly"),
        ({"c": "no_value"}, "'c' has no 'value'"),
    ],
)
def test_topk_names_the_first_malformed_array(spoil: dict[str, str], named: str) -> None:
    model = {
        "a": np.arange(1.0, 101.0),
        "b": np.arange(1.0, 51.0, dtype=np.float32),
        "big": np.arange(1.0, 6001.0),
        "c": np.arange(1.0, 31.0),
    }
    scheme = TopK(0.1)
    parts = scheme.encode(model, np.random.default_rng(0))
    for name, how in spoil.items():
        index = parts[name]["index"]
        if how == "index_order":
            index[[0, 1]] = index[[1, 0]]
        elif how == "index_range":
            index[-1] = model[name].size
        else:
            del parts[name]["value"]
    with pytest.raises(WeightsError, match=named):
        scheme.decode(parts, WeightsSpec.of(model))
