"""Update compression: round trips, unbiasedness, error feedback and convergence.

Each scheme round-trips its encoding, stochastic quantization is unbiased,
top-k's error feedback keeps what it drops, and compressed FedAvg still learns
the digits within a stated margin of the uncompressed run.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import pytest
from sklearn.datasets import load_digits

import covey
from covey.compress import (
    Cast,
    Encoded,
    Identity,
    Quantize,
    TopK,
    scheme_named,
    scheme_spec,
    topk_with_feedback,
)
from covey.core import WeightsSpec
from covey.models import logistic_sgd_epoch

RNG = np.random.default_rng(0)
MODEL: dict[str, np.ndarray] = {
    "W": RNG.standard_normal((13, 7)),
    "b": RNG.standard_normal(7).astype(np.float32),
    "steps": np.arange(3, dtype=np.int64),
}
SPEC = WeightsSpec.of(MODEL)


@pytest.mark.parametrize("name", ["none", "float16", "bfloat16", "q8", "q4", "topk"])
def test_every_scheme_round_trips_its_encoding(name: str) -> None:
    scheme = scheme_named(name)
    parts = scheme.encode(MODEL, np.random.default_rng(1))
    out = scheme.decode(parts, SPEC)
    assert SPEC.conforms(out)
    np.testing.assert_array_equal(out["steps"], MODEL["steps"])  # integers travel raw
    for key in ("W", "b"):
        x, y = np.asarray(MODEL[key], np.float64), np.asarray(out[key], np.float64)
        scale = np.abs(x).max()
        if name == "none":
            np.testing.assert_array_equal(y, x)
        elif name == "float16":
            assert np.abs(y - x).max() <= scale * 2.0**-11
        elif name == "bfloat16":
            assert np.abs(y - x).max() <= scale * 2.0**-8
        elif name in ("q8", "q4"):
            levels = 255 if name == "q8" else 15
            assert np.abs(y - x).max() <= (x.max() - x.min()) / levels + 1e-12
        else:
            sent = np.flatnonzero(y.reshape(-1))
            assert sent.size == TopK().k(x.size)
            np.testing.assert_array_equal(y.reshape(-1)[sent], x.reshape(-1)[sent])
            # what it sent are the largest magnitudes
            assert np.abs(x).reshape(-1)[sent].min() >= np.delete(np.abs(x).reshape(-1), sent).max()


def test_exactly_representable_values_survive_the_casts() -> None:
    w = {"w": np.array([0.5, -2.0, 1.25, 0.0, 1024.0])}
    spec = WeightsSpec.of(w)
    for scheme in (Cast("float16"), Cast("bfloat16"), Identity(), TopK(1.0)):
        out = scheme.decode(scheme.encode(w, np.random.default_rng(0)), spec)
        np.testing.assert_array_equal(out["w"], w["w"])


@pytest.mark.parametrize("bits", [8, 4])
def test_stochastic_quantization_is_unbiased(bits: int) -> None:
    x = {"w": np.random.default_rng(3).standard_normal(64)}
    spec = WeightsSpec.of(x)
    scheme = Quantize(bits)
    trials = 3000
    total = np.zeros(64)
    for seed in range(trials):
        total += scheme.decode(scheme.encode(x, np.random.default_rng(seed)), spec)["w"]
    mean = total / trials
    step = (x["w"].max() - x["w"].min()) / ((1 << bits) - 1)
    # Each decoded value is x plus a zero-mean error in [-step, step] (std <= step / 2):
    # the mean of 3000 trials is within 5 standard errors of x.
    bound = 5 * (step / 2) / np.sqrt(trials)
    assert np.abs(mean - x["w"]).max() < bound
    # Nearest rounding would be biased by up to step / 2: the test can tell the two apart.
    assert bound < step / 4


def test_error_feedback_accumulates_what_topk_drops() -> None:
    rng = np.random.default_rng(5)
    scheme = TopK(0.1)
    spec = WeightsSpec.of({"w": np.zeros(50)})
    residual: dict[str, np.ndarray] | None = None
    sent_total = np.zeros(50)
    delta_total = np.zeros(50)
    for _ in range(6):
        delta = {"w": rng.standard_normal(50)}
        corrected = delta["w"] + (residual["w"] if residual is not None else 0.0)
        parts, new_residual = topk_with_feedback(scheme, delta, residual, spec)
        sent = scheme.decode(parts, spec)["w"]
        # the new residual is exactly what this round did not send
        np.testing.assert_array_equal(new_residual["w"], corrected - sent)
        assert np.count_nonzero(sent) == scheme.k(50)
        residual = new_residual
        sent_total += sent
        delta_total += delta["w"]
    # nothing is lost: what was sent plus what is still held is every update
    assert residual is not None
    np.testing.assert_allclose(sent_total + residual["w"], delta_total, atol=1e-12)


@pytest.mark.parametrize("subclass", [False, True])
def test_an_update_overflowing_with_its_residual_is_named_so(subclass: bool) -> None:
    """A finite update plus a finite residual past float32's range: not "NaN or Inf" in it.

    Before: NumPy's overflow warning from covey's own code (an error under ``-W error``),
    then the update refused as holding non-finite values, which it did not.
    """

    class Sub(TopK):
        pass

    scheme = Sub(0.25) if subclass else TopK(0.25)
    spec = WeightsSpec.of({"w": np.zeros(4, np.float32)})
    delta = {"w": np.array([3e38, 1.0, 1.0, 3e38], np.float32)}
    _, residual = topk_with_feedback(scheme, delta, None, spec)  # keeps one 3e38 back
    with pytest.raises(ValueError, match="update plus what top-k's error feedback") as caught:
        topk_with_feedback(scheme, delta, residual, spec)
    assert str(caught.value) == (
        "'w': this round's update plus what top-k's error feedback kept back from earlier "
        "rounds overflows float32 (largest 3.403e+38), though the update itself is finite"
    )
    with pytest.raises(ValueError, match="non-finite values"):  # one that holds an inf is so
        topk_with_feedback(scheme, {"w": np.full(4, np.inf, np.float32)}, residual, spec)


def test_topk_sends_bool_and_integer_arrays_whole_and_keeps_no_residual_for_them() -> None:
    rng = np.random.default_rng(3)
    delta = {
        "w": rng.standard_normal(40),
        "mask": rng.random(7) < 0.5,
        "count": np.arange(5, dtype=np.int64),
    }
    spec = WeightsSpec.of(delta)
    residual: dict[str, np.ndarray] | None = None
    for _ in range(2):
        parts, residual = topk_with_feedback(TopK(0.1), delta, residual, spec)
        sent = TopK(0.1).decode(parts, spec)
        np.testing.assert_array_equal(sent["mask"], delta["mask"])
        np.testing.assert_array_equal(sent["count"], delta["count"])
        assert not residual["mask"].any()
        assert residual["mask"].dtype == np.bool_
        assert not residual["count"].any()
        assert np.count_nonzero(residual["w"]) > 0


def test_topk_error_feedback_of_a_0d_array_empties_once_sent() -> None:
    # The sum of two 0-d arrays is a NumPy scalar: the residual must still be zeroed
    # where it was sent, or every later round sends all earlier updates again.
    spec = WeightsSpec.of({"s": np.array(0.0), "w": np.zeros(8)})
    residual: dict[str, np.ndarray] | None = None
    for _ in range(4):
        delta = {"s": np.array(1.5), "w": np.arange(8.0)}
        parts, residual = topk_with_feedback(TopK(0.25), delta, residual, spec)
        assert TopK(0.25).decode(parts, spec)["s"] == 1.5
        assert isinstance(residual["s"], np.ndarray)
        assert residual["s"] == 0.0


def test_topk_simulation_of_a_0d_weight_matches_plain_fedavg() -> None:
    class Scalar(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            delta = {"s": np.array(1.0 + self.cid), "w": np.arange(8.0)}
            return covey.FitResult(delta=delta, num_examples=1)

    init = {"s": np.array(0.0), "w": np.zeros(8)}
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    result = covey.simulate(Scalar, 2, 4, strategy, init, compression="topk:1.0")
    assert result.weights["s"] == 4 * 1.5


def test_decode_refuses_malformed_encodings() -> None:
    w = {"w": np.zeros(10)}
    spec = WeightsSpec.of(w)
    parts = TopK(0.2).encode({"w": np.arange(10.0)}, np.random.default_rng(0))
    parts["w"]["index"] = np.array([3, 99], dtype=np.uint32)
    with pytest.raises(covey.WeightsError, match="out of range"):
        TopK(0.2).decode(parts, spec)
    q = Quantize(8).encode(w, np.random.default_rng(0))
    q["w"]["codes"] = q["w"]["codes"][:5]
    with pytest.raises(covey.WeightsError, match="codes"):
        Quantize(8).decode(q, spec)
    with pytest.raises(covey.WeightsError, match="names"):
        Quantize(8).decode({"v": q["w"]}, spec)


# -- in a run ---------------------------------------------------------------------------

N = 10
ROUNDS = 10


class DigitsClient(covey.Client):
    def __init__(self, k: int, x: np.ndarray, y: np.ndarray) -> None:
        self.k, self.x, self.y = k, x, y

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        order = np.random.default_rng(self.k + config["round"]).permutation(len(self.y))
        new = logistic_sgd_epoch(weights, self.x, self.y, lr=0.1, batch_size=32, order=order)
        return covey.FitResult(weights=new, num_examples=len(self.y))


def _run(compression: Any) -> covey.History:
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    parts = np.array_split(np.arange(1437), N)

    def evaluate(rnd: int, w: Any) -> tuple[float, dict[str, float]]:
        logits = x[1437:] @ w["W"] + w["b"]
        return 0.0, {"accuracy": float(np.mean(logits.argmax(axis=1) == y[1437:]))}

    result = covey.simulate(
        lambda k: DigitsClient(k, x[parts[k]], y[parts[k]]),
        N,
        ROUNDS,
        covey.FedAvg(fraction_fit=1.0, min_fit_clients=N, fraction_evaluate=0.0),
        {"W": np.zeros((64, 10)), "b": np.zeros(10)},
        evaluate,
        compression=compression,
    )
    return result.history


@pytest.fixture(scope="module")
def baseline() -> float:
    return _run(None).rounds[-1].central_metrics["accuracy"]  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("compression", "margin"),
    [("float16", 0.02), ("bfloat16", 0.02), ("q8", 0.02), ("q4", 0.03), (TopK(0.1), 0.05)],
)
def test_compressed_fedavg_converges_on_digits(
    baseline: float, compression: Any, margin: float
) -> None:
    history = _run(compression)
    accuracy = float(history.rounds[-1].central_metrics["accuracy"])
    assert baseline > 0.85
    assert accuracy >= baseline - margin
    model_bytes = (64 * 10 + 10) * 8
    fit = history.rounds[1]
    assert fit.bytes_sent == N * model_bytes  # the broadcast is not compressed
    assert fit.bytes_received is not None
    assert 0 < fit.bytes_received < N * model_bytes / 3


def test_history_records_bytes_both_ways_and_keeps_them_in_json() -> None:
    history = _run("none")
    model_bytes = (64 * 10 + 10) * 8
    for record in history.rounds[1:]:
        assert record.bytes_sent == N * model_bytes
        assert record.bytes_received == N * model_bytes
    again = covey.History.from_json(json.dumps(history.to_dict()))
    assert again.rounds[2].bytes_received == N * model_bytes
    assert history.config["compression"] == "none"


class BadEncoder(covey.Client):
    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.full(4, np.inf)}, num_examples=1)


def test_a_non_finite_compressed_update_is_a_recorded_failure() -> None:
    result = covey.simulate(
        lambda cid: BadEncoder() if cid == 0 else _Good(),
        3,
        1,
        covey.FedAvg(min_fit_clients=2, fraction_evaluate=0.0),
        {"w": np.zeros(4)},
        compression="float16",
    )
    record = result.history.rounds[1]
    assert [f.cid for f in record.fit_failures] == [0]
    assert "non-finite" in record.fit_failures[0].error
    np.testing.assert_allclose(result.weights["w"], 1.0)


class _Good(covey.Client):
    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(4)}, num_examples=1)


def test_encoded_counts_its_bytes() -> None:
    enc = Encoded("q8", {"w": {"codes": np.zeros(10, np.uint8), "lo": np.zeros(1)}}, 3)
    assert enc.nbytes == 18


class _Step(covey.Client):
    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(4)}, num_examples=1)


@pytest.mark.parametrize("spec", [None, "q8", "topk:0.5"])
def test_compressed_fits_take_simulated_time_and_stragglers_miss_the_deadline(
    spec: str | None,
) -> None:
    # Before: a compressed fit task was not seen as training, so it took no simulated
    # time, no round recorded a clock, and clients slower than the deadline took part.
    result = covey.simulate(
        lambda cid: _Step(),
        6,
        2,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(4)},
        compression=spec,
        client_durations=lambda cid, rng: float(cid),
        round_deadline=3.5,
    )
    for record in result.history.rounds[1:]:
        assert record.fit_participants == [0, 1, 2, 3]
        assert [f.cid for f in record.fit_failures] == [4, 5]
        assert all("straggler" in f.error for f in record.fit_failures)
        assert record.aggregate_info["clock"] == 3.5 * record.round


class _Evaluates(_Step):
    def evaluate(self, weights: Any, config: dict[str, Any]) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=1.0, num_examples=1)


def test_bytes_sent_leave_out_offline_clients_and_keep_stragglers() -> None:
    # Before: the model counted as sent to every sampled client, also to those the
    # simulated availability had offline, which never received it.
    result = covey.simulate(
        lambda cid: _Evaluates(),
        6,
        2,
        covey.FedAvg(min_fit_clients=2, min_evaluate_clients=1, min_available_clients=2),
        {"w": np.zeros(4)},
        compression="none",
        availability=lambda cid, rnd: cid not in (1, 3),
        client_durations=lambda cid, rng: float(cid),
        round_deadline=3.5,
    )
    model = 4 * 8
    for record in result.history.rounds[1:]:
        assert record.fit_participants == [0, 2]
        offline = [f.cid for f in record.fit_failures if "offline" in f.error]
        assert offline == [1, 3]
        # fit: the model to 0, 2 and the stragglers 4, 5; evaluate: to 0, 2, 4, 5
        assert record.bytes_sent == 2 * 4 * model
        assert record.bytes_received == 2 * model


class _Extras(_Evaluates):
    """Sends new weights and one model-shaped extra besides them."""

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(
            weights={"w": weights["w"] + 1}, num_examples=1, extras={"e": {"w": np.ones(4)}}
        )


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_an_uncompressed_run_counts_its_bytes_as_a_none_compressed_one(backend: Any) -> None:
    # Before: only a run given compression= counted; a plain simulate() recorded None.
    def run(compression: str | None, client: Any) -> covey.History:
        return covey.simulate(
            lambda cid: client(),
            6,
            2,
            covey.FedAvg(min_fit_clients=2, min_evaluate_clients=1, min_available_clients=2),
            {"w": np.zeros(4)},
            compression=compression,
            availability=lambda cid, rnd: cid not in (1, 3),
            backend=backend,
        ).history

    model = 4 * 8
    plain, counted = run(None, _Evaluates), run("none", _Evaluates)
    for record, same in zip(plain.rounds[1:], counted.rounds[1:], strict=True):
        # fit to the 4 online clients, evaluate to them again; offline ones are sent nothing
        assert (record.bytes_sent, record.bytes_received) == (2 * 4 * model, 4 * model)
        assert (record.bytes_sent, record.bytes_received) == (same.bytes_sent, same.bytes_received)
    for record in run(None, _Extras).rounds[1:]:
        assert record.bytes_received == 4 * 2 * model  # the weights and the extra


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_an_uncompressed_asynchronous_run_counts_the_bytes_of_each_update(
    backend: Literal["inline", "process"],
) -> None:
    # Before: only a compressed FedBuff simulation counted bytes; an uncompressed one
    # recorded None in every update, so its traffic could not be compared with one.
    result = covey.simulate(
        lambda cid: _Step(),
        4,
        3,
        covey.FedBuff(buffer_size=2, fraction_evaluate=0.0),
        {"w": np.zeros(4)},
        backend=backend,
        num_workers=2,
    )
    model = 4 * 8
    first = result.history.rounds[0]
    assert (first.bytes_sent, first.bytes_received) == (0, 0)  # round 0: no exchange
    for record in result.history.rounds[1:]:
        assert len(record.fit_participants) == 2
        # each update: the two tasks of the replies it took in, and those two replies
        assert (record.bytes_sent, record.bytes_received) == (2 * model, 2 * model)


@pytest.mark.parametrize(
    ("fraction", "size", "k"), [(0.07, 100, 7), (0.14, 100, 14), (0.55, 100, 55), (0.07, 101, 8)]
)
def test_topk_sends_the_fraction_it_is_written_as(fraction: float, size: int, k: int) -> None:
    # Before: k = ceil(0.07 * 100) = ceil(7.000000000000001) = 8 entries.
    scheme = scheme_named(f"topk:{fraction}")
    again = scheme_named(scheme_spec(scheme))  # type: ignore[arg-type]
    delta = {"w": np.arange(1.0, size + 1.0)}
    parts = scheme.encode(delta, np.random.default_rng(0))
    assert parts["w"]["index"].size == k
    out = again.decode(parts, WeightsSpec.of(delta))  # the receiving side agrees on k
    assert np.count_nonzero(out["w"]) == k


@pytest.mark.parametrize("spec", ["none", "float16", "q8", "topk:0.5"])
def test_every_scheme_encodes_a_big_endian_delta_into_what_it_decodes(spec: str) -> None:
    # Before: Identity and top-k passed a big-endian array through, which their own
    # decode refused ("must be 4 values of float64 ..., got ... of >f8").
    scheme = scheme_named(spec)
    delta = {"w": np.arange(4, dtype=">f8"), "n": np.arange(3, dtype=">i4")}
    model: dict[str, np.ndarray] = {"w": np.zeros(4), "n": np.zeros(3, np.int32)}
    decoded = scheme.decode(scheme.encode(delta, np.random.default_rng(0)), WeightsSpec.of(model))
    assert decoded["n"].tolist() == [0, 1, 2]
    assert decoded["w"].dtype == np.float64
    if spec in ("none", "float16"):
        assert decoded["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_identity_takes_no_name() -> None:
    # Its name travels as its spec: Identity("q8") would have clients encode with q8
    # while the server decoded raw arrays, refusing every update.
    with pytest.raises(TypeError):
        Identity("q8")  # type: ignore[call-arg]
    assert Identity().name == "none"
    assert scheme_spec(Identity()) == "none"
    assert scheme_named(scheme_spec(Identity()) or "") == Identity()


class _Controlled(covey.Client):
    """A SCAFFOLD client: its update, and its control variate's change as an extra."""

    def __init__(self) -> None:
        self.control = covey.clients.ControlVariate()

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        correction = self.control.correction(weights, config)
        new = {k: v - 0.1 * (1.0 + correction[k]) for k, v in weights.items()}
        return self.control.fit_result(new, num_examples=1, steps=1, lr=0.1)


def test_scaffold_s_control_variates_travel_uncompressed_and_are_counted() -> None:
    # c goes out with each fit task and Delta c_i comes back as an extra, both model-sized
    # and uncompressed: the bytes of each round count them beside the q8 update.
    size, clients = 1000, 4
    history = covey.simulate(
        lambda cid: _Controlled(),
        clients,
        2,
        covey.Scaffold(num_clients=clients, fraction_evaluate=0.0),
        {"w": np.zeros(size)},
        compression="q8",
    ).history
    model = 8 * size
    q8 = size + 2 * 8  # a code per value, its min and step
    for record in history.rounds[1:]:
        assert record.bytes_sent == clients * (model + model)  # the weights and c
        assert record.bytes_received == clients * (q8 + model)  # the codes and Delta c_i
