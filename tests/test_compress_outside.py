"""Update compression tried from outside: memory, refusals and references in plain NumPy.

The encoders, error feedback and the server's decoders work through large
arrays a slice at a time (few temporary copies, measured with
``tracemalloc``); an update they cannot carry (NaN or Inf, values beyond a
cast's range, another shape or dtype than the model's) is refused on the
client with an error naming the cause; quantization is unbiased per element,
against the exact rounding probabilities, and every scheme stays within its
round-trip bound; top-k with error feedback matches a reference loop; a
forged encoded update fails its client alone, with no warning on the server.
"""

from __future__ import annotations

import math
import tracemalloc
import warnings
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

import covey
from covey.compress import Cast, Quantize, TopK, _kernels, topk_with_feedback
from covey.compress._kernels import index_dtype
from covey.core import WeightsError, WeightsSpec

SIZE = 1 << 22  # 4M float64 values: 32 MB


def _peak(scheme: Cast | Quantize | TopK, x: np.ndarray) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        parts = scheme.encode({"w": x}, np.random.default_rng(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out = sum(a.nbytes for a in parts["w"].values())
    return peak - out


@pytest.mark.parametrize(
    "scheme", [Quantize(8), Quantize(4), Cast("bfloat16"), Cast("float16"), TopK(0.01)]
)
def test_encoders_make_no_full_size_temporary_copies(scheme: Cast | Quantize | TopK) -> None:
    x = np.random.default_rng(1).standard_normal(SIZE)
    # Besides its output, an encoder holds a few slices, not copies of the whole array
    # (before: 3 full float64 copies for q8 and q4, 2 for top-k, 1.5 for bfloat16).
    assert _peak(scheme, x) < x.nbytes // 4


def test_chunked_quantization_equals_the_whole_array_reference() -> None:
    x = np.random.default_rng(2).standard_normal(SIZE + 12345)
    levels = 255
    lo, hi = x.min(), x.max()
    step = (hi - lo) / levels
    ref = np.clip(np.floor((x - lo) / step + np.random.default_rng(7).random(x.size)), 0, levels)
    parts = Quantize(8).encode({"w": x}, np.random.default_rng(7))["w"]
    np.testing.assert_array_equal(parts["codes"], ref.astype(np.uint8))
    assert parts["lo"][0] == lo
    assert parts["step"][0] == step


def test_chunked_bfloat16_equals_a_reference_rounding() -> None:
    x = np.random.default_rng(3).standard_normal(4000) * 10.0 ** np.arange(-20, 20, 0.01)
    bits = Cast("bfloat16").encode({"w": x}, np.random.default_rng(0))["w"]["bf16"]
    np.testing.assert_array_equal(bits, [_bf16_exact(float(v)) for v in x])


REFUSED = [
    (Quantize(8), np.array([1.0, np.nan, 2.0]), "non-finite"),
    (Quantize(4), np.array([1.0, np.inf]), "non-finite"),
    (Quantize(8), np.array([-1e308, 1e308]), "range"),
    # Before: encoded, then refused by the server as a forged scale ("levels overflow").
    (Quantize(8), np.array([np.finfo(np.float64).max, np.finfo(np.float64).max / 2]), "largest"),
    (Quantize(4), np.array([np.finfo(np.float64).max / 2, np.finfo(np.float64).max]), "largest"),
    (Cast("float16"), np.array([7e4, 1.0]), "65504"),
    (Cast("float16"), np.array([np.nan, 1.0]), "non-finite"),
    (Cast("bfloat16"), np.array([1e39, 1.0]), "bfloat16"),
    (Cast("bfloat16"), np.array([-np.inf]), "non-finite"),
    (TopK(0.5), np.array([1.0, np.nan, 3.0, 4.0]), "non-finite"),
]


@pytest.mark.parametrize(("scheme", "x", "words"), REFUSED)
def test_the_encoder_refuses_what_it_cannot_carry_naming_why(
    scheme: Cast | Quantize | TopK, x: np.ndarray, words: str
) -> None:
    # Before: silently inf (float16, bfloat16), NaN sent (top-k), or a misleading
    # "non-finite or negative scale" from the server (q8, q4), with RuntimeWarnings.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=words) as info:
            scheme.encode({"w": x}, np.random.default_rng(0))
    assert "'w'" in str(info.value)


def test_values_at_the_edge_of_a_cast_s_range_still_travel() -> None:
    x = {"w": np.array([65504.0, -65519.0, 3e-8, -0.0])}
    out = Cast("float16").decode(
        Cast("float16").encode(x, np.random.default_rng(0)), WeightsSpec.of(x)
    )["w"]
    np.testing.assert_array_equal(out, [65504.0, -65504.0, 2.0**-24, -0.0])
    assert np.signbit(out[3])
    big = {"w": np.array([3.3e38, -3.3e38], dtype=np.float32)}
    out = Cast("bfloat16").decode(
        Cast("bfloat16").encode(big, np.random.default_rng(0)), WeightsSpec.of(big)
    )["w"]
    np.testing.assert_allclose(out, big["w"], rtol=2**-8)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantization_rounds_up_with_exactly_the_unbiased_probability(bits: int) -> None:
    # Per element, not on average: a single huge outlier makes the step large, so the
    # small values round up rarely; the empirical rate over many seeds matches
    # frac((x - lo) / step) element by element.
    x = np.r_[np.random.default_rng(4).standard_normal(30), 1e3, np.full(3, 0.25)]
    levels = (1 << bits) - 1
    lo, step = x.min(), (x.max() - x.min()) / levels
    t = (x - lo) / step
    frac = t - np.floor(t)
    trials = 2000
    ups = np.zeros(x.size)
    spec = WeightsSpec.of({"w": x})
    for seed in range(trials):
        scheme = Quantize(bits)
        out = scheme.decode(scheme.encode({"w": x}, np.random.default_rng(seed)), spec)["w"]
        ups += np.round((out - lo) / step) > np.floor(t)
    rate = ups / trials
    se = np.sqrt(frac * (1 - frac) / trials) + 1e-9
    assert np.all(np.abs(rate - frac) <= 5 * se)


def test_topk_error_feedback_matches_a_reference_loop_over_many_rounds() -> None:
    rng = np.random.default_rng(6)
    size, fraction, rounds = 97, 0.07, 60
    k = int(np.ceil(fraction * size))
    scheme, spec = TopK(fraction), WeightsSpec.of({"w": np.zeros(size)})
    residual: dict[str, np.ndarray] | None = None
    ref_residual = np.zeros(size)
    sent_total, delta_total = np.zeros(size), np.zeros(size)
    for _ in range(rounds):
        delta = rng.standard_normal(size) * rng.uniform(0.1, 10.0)
        corrected = delta + ref_residual
        keep = np.argsort(-np.abs(corrected), kind="stable")[:k]
        ref_sent = np.zeros(size)
        ref_sent[keep] = corrected[keep]
        ref_residual = corrected - ref_sent
        parts, residual = topk_with_feedback(scheme, {"w": delta}, residual, spec)
        sent = scheme.decode(parts, spec)["w"]
        np.testing.assert_array_equal(sent, ref_sent)
        np.testing.assert_array_equal(residual["w"], ref_residual)
        sent_total += sent
        delta_total += delta
    assert residual is not None
    np.testing.assert_allclose(sent_total + residual["w"], delta_total, atol=1e-9)


@pytest.mark.parametrize(("lo", "step"), [(0.0, 1e307), (-1e308, 1e306), (1e308, 1e306)])
def test_a_forged_finite_scale_whose_levels_overflow_is_refused(lo: float, step: float) -> None:
    # Before: decoded into Inf with a RuntimeWarning on the server (an exception under
    # warnings-as-errors, outside the decoder's refusals), then refused as non-finite.
    x = {"w": np.zeros(6)}
    parts = {
        "w": {"codes": np.full(6, 255, np.uint8), "lo": np.array([lo]), "step": np.array([step])}
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(WeightsError, match="'w' has a scale whose levels"):
            Quantize(8).decode(parts, WeightsSpec.of(x))


@pytest.mark.parametrize("spec", ["none", "float16", "bfloat16", "q8", "q4", "topk:0.5"])
def test_empty_scalar_and_odd_layouts_go_through_a_compressed_run(spec: str) -> None:
    model = {
        "empty": np.zeros(0),
        "scalar": np.array(0.0),
        "fortran": np.asfortranarray(np.zeros((3, 5), dtype=np.float32)),
        "flags": np.zeros(3, dtype=bool),
        "steps": np.zeros(2, dtype=np.int32),
    }

    class Shift(covey.Client):
        def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
            delta = {n: np.ones_like(w) for n, w in weights.items()}
            delta["fortran"] = np.asfortranarray(np.arange(15.0, dtype=np.float32).reshape(3, 5))
            return covey.FitResult(delta=delta, num_examples=1)

    result = covey.simulate(
        lambda cid: Shift(), 2, 1, covey.FedAvg(fraction_evaluate=0.0), model, compression=spec
    )
    assert not result.history.rounds[1].fit_failures
    out = result.weights
    assert out["empty"].shape == (0,)
    assert out["scalar"].shape == ()
    assert out["scalar"] == 1.0
    np.testing.assert_array_equal(out["flags"], [True] * 3)
    np.testing.assert_array_equal(out["steps"], [1, 1])
    expected = np.arange(15.0).reshape(3, 5)
    if spec.startswith("topk"):
        expected = np.where(expected >= 7, expected, 0.0)  # the 8 largest of 15
    # q8 and q4 land within one step of the value (the range 0..14 over 255 or 15 levels)
    step = {"q8": 14 / 255, "q4": 14 / 15}.get(spec, 0.0)
    np.testing.assert_allclose(out["fortran"], expected, rtol=2**-8, atol=step)


def test_error_feedback_keeps_one_array_per_weight_and_makes_no_other_full_copy() -> None:
    x = {"w": np.random.default_rng(8).standard_normal(SIZE)}
    spec, scheme = WeightsSpec.of(x), TopK(0.01)
    _, residual = topk_with_feedback(scheme, x, None, spec)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        parts, residual = topk_with_feedback(scheme, x, residual, spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sent = sum(a.nbytes for a in parts["w"].values())
    # The new residual (one model) and what is sent; before: two more model copies
    # (the decoded dense update and delta + residual besides the new residual).
    assert peak - residual["w"].nbytes - sent < x["w"].nbytes // 4
    assert not np.shares_memory(residual["w"], x["w"])


FORGED: dict[str, tuple[str, Any]] = {
    "nan minimum": ("q8", lambda p: p.update({'["part", "w", "lo"]': np.array([np.nan])})),
    "overflowing step": ("q8", lambda p: p.update({'["part", "w", "step"]': np.array([1e307])})),
    "short codes": ("q4", lambda p: p.update({'["part", "w", "codes"]': np.zeros(2, np.uint8)})),
    "duplicate index": (
        "topk:0.5",
        lambda p: p.update({'["part", "w", "index"]': np.zeros(4, np.uint32)}),
    ),
    "nan value": ("topk:0.5", lambda p: p.update({'["part", "w", "value"]': np.full(4, np.nan)})),
    "another scheme": ("float16", lambda p: p.update({"scheme": "bfloat16"})),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_a_forged_update_fails_its_client_alone(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from covey.clients._client import _HANDLERS
    from covey.compress._runtime import _fit_compressed
    from covey.compress._task import KIND

    spec, forge = FORGED[case]

    class Ones(covey.Client):
        def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
            return covey.FitResult(delta={"w": np.ones(8)}, num_examples=1)

    def handler(client: Any, task: Any) -> Any:
        plain = _fit_compressed(client, task)
        if task.config["covey.compression"]["cid"] == 0:
            forge(plain)
        return plain

    monkeypatch.setitem(_HANDLERS, KIND, handler)  # covey's own kind: not register_task
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = covey.simulate(
            lambda cid: Ones(),
            3,
            1,
            covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=2),
            {"w": np.zeros(8)},
            compression=spec,
        )
    assert [f.cid for f in result.history.rounds[1].fit_failures] == [0]
    out = result.weights["w"]
    if spec.startswith("topk"):  # 4 of the 8 equal entries, from each honest client
        assert sorted(out.tolist()) == [0.0] * 4 + [1.0] * 4
    else:
        np.testing.assert_array_equal(out, np.ones(8))


@pytest.mark.parametrize("scheme", [Quantize(8), Quantize(4), Cast("bfloat16")])
def test_the_server_decodes_with_no_full_size_temporary(scheme: Cast | Quantize) -> None:
    x = {"w": np.random.default_rng(9).standard_normal(SIZE)}
    parts, spec = scheme.encode(x, np.random.default_rng(0)), WeightsSpec.of(x)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = scheme.decode(parts, spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Before: one more float64 model (q8, q4) or a float32 one (bfloat16) per reply.
    assert peak - out["w"].nbytes < x["w"].nbytes // 4


def test_round_trip_errors_stay_within_each_scheme_s_bound() -> None:
    rng = np.random.default_rng(10)
    # Normal float16 range (above 2**-14) up to near its top; 4,000 values over 9 decades.
    x = {"w": rng.choice([-1.0, 1.0], 4000) * 10.0 ** rng.uniform(-4, 4.8, 4000)}
    spec = WeightsSpec.of(x)
    bounds = {"float16": 2.0**-11, "bfloat16": 2.0**-8 * (1 + 2.0**-15)}  # half an ulp
    for scheme in (Cast("float16"), Cast("bfloat16")):
        out = scheme.decode(scheme.encode(x, np.random.default_rng(0)), spec)["w"]
        assert np.max(np.abs(out - x["w"]) / np.abs(x["w"])) <= bounds[scheme.name]
    for bits in (8, 4):
        scheme_q = Quantize(bits)
        out = scheme_q.decode(scheme_q.encode(x, np.random.default_rng(1)), spec)["w"]
        step = (x["w"].max() - x["w"].min()) / ((1 << bits) - 1)
        assert np.max(np.abs(out - x["w"])) <= step * (1 + 1e-12)  # one level at most


class _Misshapen(covey.Client):
    """Returns an update of the model's size but another shape, or another dtype."""

    def __init__(self, fault: str, form: str) -> None:
        self.fault, self.form = fault, form

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        if self.fault == "shape":
            update = np.arange(12.0).reshape(4, 3)
        else:
            update = np.arange(12.0, dtype=np.float32).reshape(3, 4)
        if self.form == "delta":
            return covey.FitResult(delta={"w": update}, num_examples=1)
        return covey.FitResult(weights={"w": update}, num_examples=1)


@pytest.mark.parametrize("form", ["delta", "weights"])
@pytest.mark.parametrize("fault", ["shape", "dtype"])
@pytest.mark.parametrize("spec", ["none", "float16", "bfloat16", "q8", "q4", "topk:0.5"])
def test_an_update_of_another_shape_or_dtype_fails_its_client_as_uncompressed(
    spec: str, fault: str, form: str
) -> None:
    # Before: none, float16, bfloat16, q8 and q4 flattened a (4, 3) update and the
    # server rebuilt it as (3, 4), and cast a float32 one, where an uncompressed
    # run refuses both.
    expected = {"shape": "has shape (4, 3), expected (3, 4)", "dtype": "has dtype float32"}
    result = covey.simulate(
        lambda cid: _Misshapen(fault, form) if cid == 0 else _Shift(),
        2,
        1,
        covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1),
        {"w": np.zeros((3, 4))},
        compression=spec,
    )
    failures = result.history.rounds[1].fit_failures
    assert [f.cid for f in failures] == [0]
    assert f"client 0's {form}: 'w' {expected[fault]}" in failures[0].error


class _Shift(covey.Client):
    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones((3, 4))}, num_examples=1)


def _bf16_exact(value: float) -> int:
    """bfloat16 bits of a float64 value, rounded once to nearest even, in exact arithmetic."""
    _, exponent = math.frexp(abs(value))  # abs(value) = m * 2**exponent, 0.5 <= m < 1
    ulp = Fraction(2) ** (max(exponent - 1, -126) - 7)  # 8 significant bits, subnormals fixed
    q = Fraction(abs(value)) / ulp
    n = math.floor(q)
    if q - n > Fraction(1, 2) or (q - n == Fraction(1, 2) and n % 2):
        n += 1
    rounded = float(n * ulp) * (-1.0 if math.copysign(1.0, value) < 0 else 1.0)
    return int(np.array([rounded], dtype=np.float32).view(np.uint32)[0] >> 16)


def test_bfloat16_rounds_a_float64_value_once() -> None:
    # Just above a bfloat16 tie, by less than float32 can hold: rounding to float32 first
    # lands on the tie, which then goes to even, down (before: 1.0, not 1 + 2**-7).
    above = [1 + 2**-8 + 2**-30, -(3 + 3 * 2**-7 + 2**-35), 2.0**-130 * (1 + 2**-8 + 2**-40)]
    below = [1 + 3 * 2**-8 - 2**-31, 2.0**100 * (1 + 2**-8 - 2**-33)]
    rng = np.random.default_rng(11)
    x = np.r_[above, below, rng.standard_normal(2000) * 10.0 ** rng.uniform(-40, 38, 2000)]
    bits = Cast("bfloat16").encode({"w": x}, np.random.default_rng(0))["w"]["bf16"]
    np.testing.assert_array_equal(bits, [_bf16_exact(float(v)) for v in x])


@pytest.mark.parametrize(
    ("dtype", "lo", "step"),
    [
        (np.float32, 1e300, 0.0),
        (np.float32, 0.0, 1e37),
        (np.float16, -1e5, 0.0),
        (np.float16, 0.0, 300.0),
    ],
)
def test_a_forged_scale_beyond_a_narrower_dtype_is_refused_without_a_warning(
    dtype: Any, lo: float, step: float
) -> None:
    # Before: finite in float64, so decoded into Inf with "overflow encountered in cast"
    # on the server (an exception under warnings-as-errors), then refused as non-finite.
    x = {"w": np.zeros(6, dtype=dtype)}
    parts = {
        "w": {"codes": np.full(6, 255, np.uint8), "lo": np.array([lo]), "step": np.array([step])}
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            WeightsError, match=f"'w' has a scale whose levels go beyond {dtype.__name__}"
        ):
            Quantize(8).decode(parts, WeightsSpec.of(x))


def test_bfloat16_carries_float16_s_largest_values_and_refuses_larger_ones() -> None:
    # Before: 65504 (or any float16 from 65408 up) rounds to bfloat16's 65536, which
    # the server decoded into Inf with a warning: an honest update refused as non-finite.
    x = {"h": np.array([65504.0, -65440.0, 65376.0, 1.0], dtype=np.float16)}
    spec = WeightsSpec.of(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = Cast("bfloat16").decode(Cast("bfloat16").encode(x, np.random.default_rng(0)), spec)
        np.testing.assert_array_equal(out["h"], [65504.0, -65504.0, 65280.0, 1.0])
        forged = {"h": {"bf16": np.array([0x4781, 0, 0, 0], dtype=np.uint16)}}  # 65792
        with pytest.raises(WeightsError, match="'h' has bfloat16 values beyond float16's range"):
            Cast("bfloat16").decode(forged, spec)


@pytest.mark.slow
def test_topk_indexes_an_array_of_more_than_2_to_the_32_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: the indices were cast to uint32, so those past 2**32 wrapped around: the
    # client sent the values at the wrapped positions, and the server refused the update
    # as one whose indices were not strictly increasing.
    size = (1 << 32) + 8
    assert (index_dtype(1 << 32), index_dtype(size)) == (np.uint32, np.uint64)
    try:
        x = np.zeros(size, dtype=np.float16)  # untouched pages: no memory taken
    except MemoryError:
        pytest.skip("no address space for an array of 2**32 float16 values")
    scheme = TopK(2 / size)
    # The server decodes indices past 2**32 at their place in the whole array.
    sent: dict[str, np.ndarray] = {"index": np.array([7, size - 3], np.uint64)}
    sent["value"] = np.array([1, 5], np.float16)
    out = scheme.decode({"w": sent}, WeightsSpec.of({"w": x}))["w"]
    assert (out[7], out[size - 3], out[5]) == (1.0, 5.0, 0.0)
    # The client encodes with the same index width: at the real size, scanning 2**32
    # values would take half a minute, so the width's limit is lowered for an array past it.
    monkeypatch.setattr(_kernels, "UINT32_INDEXED", 1 << 20)
    small = (1 << 20) + 8
    y = np.zeros(small, dtype=np.float16)
    y[7], y[small - 3] = 1.0, 5.0
    scheme = TopK(2 / small)
    parts = scheme.encode({"w": y}, np.random.default_rng(0))["w"]
    assert parts["index"].dtype == np.uint64
    assert parts["index"].tolist() == [7, small - 3]
    assert parts["value"].tolist() == [1.0, 5.0]
    out = scheme.decode({"w": parts}, WeightsSpec.of({"w": y}))["w"]
    assert (out[7], out[small - 3], out[5]) == (1.0, 5.0, 0.0)


def _decoded_by_own_scheme(scheme: Any, model: dict[str, np.ndarray]) -> Any:
    class Step(covey.Client):
        def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
            return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)

    return covey.simulate(
        lambda cid: Step(), 2, 1, covey.FedAvg(fraction_evaluate=0.0), model, compression=scheme
    )


def test_a_subclass_of_a_scheme_may_send_parts_of_its_own() -> None:
    # Before: the server expected the parts of the scheme subclassed, and refused every
    # update: "'w' carries ['codes', 'lo', 'step', 'tag'], expected ['codes', 'lo', 'step']".
    class Tagged(Quantize):
        @property
        def name(self) -> str:
            return "tagged-q8"

        def encode(self, delta: Any, rng: np.random.Generator) -> Any:
            parts = super().encode(delta, rng)
            for arrays in parts.values():
                arrays["tag"] = np.zeros(1, dtype=np.uint8)
            return parts

        def decode(self, parts: Any, spec: WeightsSpec) -> Any:
            return super().decode({n: _untagged(p) for n, p in parts.items()}, spec)

    result = _decoded_by_own_scheme(Tagged(8), {"w": np.zeros(8)})
    assert not result.history.rounds[1].fit_failures
    np.testing.assert_allclose(result.weights["w"], np.ones(8))


def _untagged(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k != "tag"}


def test_a_scheme_of_one_s_own_may_encode_integer_arrays() -> None:
    # Before: every integer array had to travel as "raw", whatever the scheme's decode read.
    class Narrow:
        name = "narrow"

        def encode(self, delta: Any, rng: np.random.Generator) -> Any:
            return {n: {"small": x.astype(np.int8).reshape(-1)} for n, x in delta.items()}

        def decode(self, parts: Any, spec: WeightsSpec) -> Any:
            return {
                n: parts[n]["small"].astype(d).reshape(s)
                for n, s, d in zip(spec.names, spec.shapes, spec.dtypes, strict=True)
            }

    model = {"w": np.zeros(4), "steps": np.zeros(3, dtype=np.int64)}
    result = _decoded_by_own_scheme(Narrow(), model)
    assert not result.history.rounds[1].fit_failures
    np.testing.assert_array_equal(result.weights["steps"], np.ones(3, dtype=np.int64))
