"""SCAFFOLD: the client's control variate, its persistence, and drift correction that pays off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import clients
from covey.data import load_digits, shards
from covey.models import logistic_evaluate, logistic_grad, logistic_init

DATA = load_digits(seed=0)
NUM_CLIENTS = 20
PARTS = shards(DATA.y_train, NUM_CLIENTS, shards_per_client=1, seed=0)  # one label per client
EPOCHS, LR, BATCH = 20, 0.1, 16


class SkewedClient(covey.Client):
    """Many local SGD steps on one label; with SCAFFOLD each gradient gets ``c - c_i`` added."""

    def __init__(self, cid: int, use_scaffold: bool) -> None:
        self.cid, self.use_scaffold = cid, use_scaffold
        self.x, self.y = DATA.client(PARTS[cid])
        self.control = clients.ControlVariate()

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        correction = self.control.correction(weights, config) if self.use_scaffold else None
        w = {k: np.array(v) for k, v in weights.items()}
        steps = 0
        for epoch in range(EPOCHS):
            order = np.random.default_rng([self.cid, config["round"], epoch]).permutation(
                len(self.y)
            )
            for start in range(0, len(order), BATCH):
                idx = order[start : start + BATCH]
                g = logistic_grad(w, self.x[idx], self.y[idx])
                for k in w:
                    w[k] -= LR * (g[k] + (correction[k] if correction is not None else 0.0))
                steps += 1
        if self.use_scaffold:
            return self.control.fit_result(w, num_examples=len(self.y), steps=steps, lr=LR)
        return covey.FitResult(weights=w, num_examples=len(self.y))


def accuracy(weights: covey.Weights) -> float:
    return logistic_evaluate(weights, DATA.x_test, DATA.y_test)[1]


def run(use_scaffold: bool, rounds: int = 8, **kwargs: Any) -> covey.sim.SimulationResult:
    strategy = (
        covey.Scaffold(num_clients=NUM_CLIENTS, fraction_evaluate=0.0)
        if use_scaffold
        else covey.FedAvg(fraction_evaluate=0.0)
    )
    return covey.simulate(
        lambda cid: SkewedClient(cid, use_scaffold),
        NUM_CLIENTS,
        rounds,
        strategy,
        logistic_init(64, 10),
        **kwargs,
    )


def test_scaffold_beats_fedavg_on_a_label_skewed_split() -> None:
    fedavg = accuracy(run(False).weights)
    with_scaffold = accuracy(run(True).weights)
    assert with_scaffold > fedavg + 0.05, (with_scaffold, fedavg)


def test_client_state_is_kept_per_client_in_the_process_backend_too() -> None:
    inline = run(True, rounds=3)
    process = run(True, rounds=3, backend="process", num_workers=2)
    for name in inline.weights:
        np.testing.assert_array_equal(inline.weights[name], process.weights[name])


def make_round(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2), "n": np.arange(2)}
    c = {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2), "n": np.zeros(2, dtype=int)}
    return x, c


def test_control_variate_follows_option_two() -> None:
    rng = np.random.default_rng(0)
    control = clients.ControlVariate()
    c_i = {"W": np.zeros((3, 2)), "b": np.zeros(2)}
    for rnd in range(1, 4):
        x, c = make_round(rng)
        correction = control.correction(x, {"round": rnd, "extras": {"scaffold_c": c}})
        for k in ("W", "b"):
            np.testing.assert_allclose(correction[k], c[k] - c_i[k])
        np.testing.assert_array_equal(correction["n"], [0, 0])
        y = {k: (v + rng.normal(size=v.shape)) if v.dtype.kind == "f" else v for k, v in x.items()}
        result = control.fit_result(y, num_examples=7, steps=5, lr=0.1, metrics={"a": 1.0})
        assert result.num_examples == 7
        assert result.metrics == {"a": 1.0}
        assert result.delta is not None
        dc = result.extras["scaffold_delta_c"]
        for k in ("W", "b"):
            new = c_i[k] - c[k] + (x[k] - y[k]) / (5 * 0.1)
            np.testing.assert_allclose(result.delta[k], y[k] - x[k])
            np.testing.assert_allclose(dc[k], new - c_i[k], atol=1e-12)
            c_i[k] = new
        np.testing.assert_array_equal(dc["n"], [0, 0])
        assert control.value is not None
        np.testing.assert_allclose(control.value["W"], c_i["W"], atol=1e-12)


def test_option_one_uses_the_given_gradient() -> None:
    rng = np.random.default_rng(1)
    x, c = make_round(rng)
    control = clients.ControlVariate()
    control.correction(x, {"extras": {"scaffold_c": c}})
    grad = {k: np.full(v.shape, 2.0) for k, v in x.items()}
    result = control.fit_result(x, num_examples=1, steps=1, lr=1.0, full_gradient=grad)
    np.testing.assert_allclose(result.extras["scaffold_delta_c"]["W"], np.full((3, 2), 2.0))


def test_a_deployed_client_keeps_its_control_variate_on_disk(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "state" / "scaffold.bin"
    x, c = make_round(rng)
    first = clients.ControlVariate(path)
    first.correction(x, {"extras": {"scaffold_c": c}})
    y = {k: v + 1 if v.dtype.kind == "f" else v for k, v in x.items()}
    first.fit_result(y, num_examples=1, steps=2, lr=0.5)
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["scaffold.bin"]  # no temporary left
    restarted = clients.ControlVariate(path)
    assert first.value is not None
    assert restarted.value is not None
    for k in first.value:
        np.testing.assert_array_equal(restarted.value[k], first.value[k])
    other = {"W": np.zeros((4, 2)), "b": np.zeros(2), "n": np.arange(2)}
    with pytest.raises(covey.WeightsError, match="delete"):
        restarted.correction(other, {"extras": {"scaffold_c": other}})


def test_a_control_variate_file_of_an_earlier_version_is_read_as_c_i(tmp_path: Path) -> None:
    # An earlier version's file holds c_i alone, by name (no rounds before it).
    from covey.core._codec import encode

    path = tmp_path / "scaffold.bin"
    x, _ = make_round(np.random.default_rng(4))
    path.write_bytes(bytes(encode({k: v + 1 for k, v in x.items()})))
    control = clients.ControlVariate(path)
    assert control.value is not None
    assert control.value.keys() == x.keys()
    for k, v in x.items():
        np.testing.assert_array_equal(control.value[k], v + 1)


def test_a_control_variate_built_again_from_its_file_rewinds_a_round_sent_again(
    tmp_path: Path,
) -> None:
    # The c_i before each of the last rounds is in the file too: a client built again
    # from it (a simulation resumed after a kill) starts round 1 again from zeros.
    path = tmp_path / "scaffold.bin"
    x, c = make_round(np.random.default_rng(5))
    first = clients.ControlVariate(path)
    for rnd in (1, 2):
        first.correction(x, {"round": rnd, "extras": {"scaffold_c": c}})
        first.fit_result({k: v + rnd for k, v in x.items()}, num_examples=1, steps=1, lr=1.0)
    again = clients.ControlVariate(path)
    correction = again.correction(x, {"round": 1, "extras": {"scaffold_c": c}})
    for k, v in x.items():
        want = c[k] if v.dtype.kind == "f" else np.zeros_like(v)
        np.testing.assert_array_equal(correction[k], want)


def test_helpful_errors() -> None:
    control = clients.ControlVariate()
    x, c = make_round(np.random.default_rng(3))
    with pytest.raises(ValueError, match=r"covey\.Scaffold"):
        control.correction(x, {"round": 1})
    with pytest.raises(RuntimeError, match="before fit_result"):
        control.fit_result(x, num_examples=1, steps=1, lr=0.1)
    control.correction(x, {"extras": {"scaffold_c": c}})
    with pytest.raises(ValueError, match="steps must be"):
        control.fit_result(x, num_examples=1, steps=-1, lr=0.1)
    moved = {**x, "b": x["b"] + 1.0}
    with pytest.raises(ValueError, match=r"steps=0 .* weight 'b' changed"):
        control.fit_result(moved, num_examples=1, steps=0, lr=0.1)


def test_clients_without_the_control_update_fail_by_name() -> None:
    # Each such client's fit fails, saying what it lacks; with none left the run
    # stops as any run whose clients all failed (before: the round kept the model
    # and the run went on, every round the same).
    class Plain(covey.Client):
        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            assert "scaffold_c" in config["extras"]
            return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)

    with pytest.raises(covey.FederationError) as info:
        covey.simulate(
            lambda cid: Plain(),
            3,
            1,
            covey.Scaffold(num_clients=3, fraction_evaluate=0.0),
            {"w": np.zeros(1)},
        )
    assert "0 of 3 sampled clients replied" in str(info.value)
    assert "it sent no 'scaffold_delta_c' extra" in str(info.value)
    record = info.value.history[1]
    np.testing.assert_array_equal(info.value.weights["w"], [0.0])
    assert record.fit_participants == []


def test_a_client_without_the_control_update_is_no_participant() -> None:
    # Its update was left out of the aggregate, yet it was listed among the round's
    # participants, its examples and metrics counted.
    class Mixed(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            delta = {"w": np.full(2, float(self.cid))}
            extras = {} if self.cid == 0 else {"scaffold_delta_c": {"w": np.zeros(2)}}
            return covey.FitResult(
                delta=delta,
                num_examples=10 * (self.cid + 1),
                metrics={"m": float(self.cid)},
                extras=extras,
            )

    result = covey.simulate(
        Mixed, 3, 1, covey.Scaffold(num_clients=3, fraction_evaluate=0.0), {"w": np.zeros(2)}
    )
    record = result.history[1]
    assert record.aggregated
    assert record.fit_participants == [1, 2]
    assert record.fit_examples == 50
    assert record.fit_metrics["m"] == pytest.approx((20 * 1 + 30 * 2) / 50)
    (failure,) = record.fit_failures
    assert failure.cid == 0
    assert "left out by the aggregation: it sent no 'scaffold_delta_c' extra" in failure.error
    assert record.aggregate_info["scaffold_missing"] == [0]
    np.testing.assert_allclose(result.weights["w"], [1.5, 1.5])


def test_a_dropping_step_says_which_client_it_dropped_and_why() -> None:
    from covey.aggregate import Begin, Contribution, Dropped, skip_nonfinite

    step = skip_nonfinite()
    params = {"w": np.zeros(1)}
    state, _ = step.feed(step.init(params), Begin(1, params))
    bad = Contribution(7, 1, delta={"w": np.array([np.inf])})
    state, out = step.feed(state, bad)
    assert out == (Dropped(7, "its update or extras hold a NaN or an infinity (skip_nonfinite())"),)
    good = Contribution(8, 1, delta={"w": np.ones(1)})
    assert step.feed(state, good)[1] == (good,)
