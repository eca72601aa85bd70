"""The round loop's rules as a researcher relies on them: selection, evaluation, failures.

Client selection (fractions, minimums, seeds), federated evaluation on a sample
weighted by examples, ``accept_failures``, rounds a robust rule cannot run, a
user's own Strategy subclass, the History a run leaves, and the same bits from
the process backend; then the regressions found by comparing with the papers.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import covey
from _reference_workload import INIT, Arrays, Model, local_update, run

SIZES = (3, 0, 4, 1, 5, 9, 2, 6, 5, 3)  # client 1 has no data


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="covey")


def participants(result: Any, kind: str = "fit") -> list[list[int]]:
    return [getattr(r, f"{kind}_participants") for r in result.history.rounds[1:]]


# -- selection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "least", "count"),
    [(0.3, 2, 3), (0.05, 2, 2), (0.25, 4, 4), (1.0, 2, 10), (0.0, 3, 3)],
)
def test_fraction_and_minimum_decide_how_many_train(
    fraction: float, least: int, count: int
) -> None:
    """``max(floor(fraction * available), min_fit_clients)``, distinct clients, every round."""
    strategy = covey.FedAvg(fraction_fit=fraction, min_fit_clients=least, fraction_evaluate=0)
    for cids in participants(run(strategy, SIZES, rounds=4)):
        assert len(cids) == len(set(cids)) == count
        assert cids == sorted(cids)
        assert set(cids) <= set(range(10))


def test_sampling_is_determined_by_the_seed_and_varies_by_round() -> None:
    def picks(seed: int) -> list[list[int]]:
        strategy = covey.FedAvg(fraction_fit=0.3, fraction_evaluate=0.3)
        result = run(strategy, SIZES, rounds=6, seed=seed)
        return participants(result) + participants(result, "evaluate")

    first = picks(7)
    assert picks(7) == first
    assert picks(8) != first
    assert len({tuple(c) for c in first[:6]}) > 1  # not the same clients every round


def test_min_available_clients_above_the_federation_is_a_clear_error() -> None:
    # It said what was wrong only ("min_available_clients=11 exceeds num_clients=10").
    said = (
        "min_available_clients=11 exceeds num_clients=10: no round would start; lower it "
        "to at most 10, or simulate more clients"
    )
    with pytest.raises(ValueError, match=re.escape(said)):
        run(covey.FedAvg(min_available_clients=11), SIZES, rounds=1)


def test_min_fit_clients_above_the_federation_says_what_to_do() -> None:
    # It ended at "... (min_fit_clients=11) but num_clients=10", with no way out.
    said = (
        "the strategy samples at least 11 clients per round (min_fit_clients=11) but "
        "num_clients=10: lower min_fit_clients to at most 10, or simulate more clients"
    )
    with pytest.raises(ValueError, match=re.escape(said)):
        run(covey.FedAvg(min_fit_clients=11), SIZES, rounds=1)
    said = "(FedBuff's concurrency, min_fit_clients=11) but num_clients=10: lower concurrency"
    with pytest.raises(ValueError, match=re.escape(said)):
        run(covey.FedBuff(buffer_size=2, concurrency=11, fraction_evaluate=0.0), SIZES, rounds=1)


# -- federated evaluation ---------------------------------------------------------------------


def test_federated_evaluation_is_weighted_by_examples() -> None:
    result = run(covey.FedAvg(fraction_fit=0.3), SIZES, rounds=2)
    n = np.asarray(SIZES, dtype=np.float64)
    cid = np.arange(10)
    for record in result.history.rounds[1:]:
        assert record.evaluate_participants == list(range(10))
        assert record.evaluate_examples == sum(SIZES)
        assert record.evaluate_loss == pytest.approx((n * cid**2).sum() / n.sum())
        assert record.evaluate_metrics["acc"] == pytest.approx((n * cid / 10).sum() / n.sum())
        assert record.evaluate_metrics["odd"] == 1.0  # over the clients that report it


def test_evaluation_on_a_sample_averages_over_that_sample() -> None:
    result = run(covey.FedAvg(fraction_evaluate=0.4, min_evaluate_clients=3), SIZES, rounds=3)
    for record in result.history.rounds[1:]:
        sample = record.evaluate_participants
        assert len(sample) == 4
        n = np.asarray([SIZES[c] for c in sample], dtype=np.float64)
        assert record.evaluate_examples == n.sum()
        loss = (n * np.asarray(sample, dtype=np.float64) ** 2).sum() / n.sum()
        assert record.evaluate_loss == pytest.approx(loss)


def test_evaluation_failures_are_recorded_and_left_out() -> None:
    """With accept_failures=False too: it governs training rounds, not evaluation."""
    sizes = (2, 3, 4)

    class Client(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Model, config: dict[str, Any]) -> covey.FitResult:
            return covey.FitResult(weights=weights, num_examples=sizes[self.cid])

        def evaluate(self, weights: Model, config: dict[str, Any]) -> covey.EvaluateResult:
            if self.cid == 1:
                raise RuntimeError("no test data")
            return covey.EvaluateResult(loss=float(self.cid), num_examples=sizes[self.cid])

    for accept in (True, False):
        strategy = covey.FedAvg(accept_failures=accept)
        record = covey.simulate(Client, 3, 1, strategy, INIT).history.rounds[1]
        assert record.evaluate_participants == [0, 2]
        assert [f.cid for f in record.evaluate_failures] == [1]
        assert record.evaluate_loss == pytest.approx((2 * 0 + 4 * 2) / 6)


# -- failures --------------------------------------------------------------------------------


def test_failed_clients_are_left_out_of_the_aggregate() -> None:
    result = run(covey.FedAvg(), SIZES[:5], rounds=2, fail=[2])
    w: Arrays = dict(INIT)
    for record in result.history.rounds[1:]:
        assert record.fit_participants == [0, 1, 3, 4]
        assert [f.cid for f in record.fit_failures] == [2]
        assert "this client always fails" in record.fit_failures[0].traceback
        ups = [local_update(c, record.round, w) for c in record.fit_participants]
        n = [SIZES[c] for c in record.fit_participants]
        for k, v in w.items():
            mean = np.average([u[k].astype(np.float64) for u in ups], axis=0, weights=n)
            w[k] = (np.rint(mean) if v.dtype.kind == "i" else mean).astype(v.dtype)
    for k, v in result.weights.items():
        np.testing.assert_allclose(v, w[k], rtol=1e-5)


def test_accept_failures_false_stops_at_the_first_failed_round() -> None:
    with pytest.raises(covey.FederationError, match="accept_failures=False") as caught:
        run(covey.FedAvg(accept_failures=False), SIZES[:5], fail=[3])
    assert caught.value.history.rounds[-1].round == 1
    np.testing.assert_array_equal(caught.value.weights["W"], INIT["W"])


def test_when_every_client_fails() -> None:
    """Below min_fit_clients the run stops; with min_fit_clients=0 the model is kept."""
    with pytest.raises(covey.FederationError, match="0 of 3 sampled clients replied"):
        run(covey.FedAdam(), (1, 2, 3), fail=[0, 1, 2])
    result = run(covey.FedAdam(min_fit_clients=0), (1, 2, 3), fail=[0, 1, 2])
    assert [r.aggregated for r in result.history.rounds[1:]] == [False] * 3
    assert all(len(r.fit_failures) == 3 for r in result.history.rounds[1:])
    for name, value in INIT.items():
        np.testing.assert_array_equal(result.weights[name], value)


@pytest.mark.parametrize(
    ("strategy", "needed"),
    [(covey.Krum(f=2), 7), (covey.MultiKrum(f=3), 9), (covey.Bulyan(f=1), 7)],
    ids=lambda x: getattr(x, "name", str(x)),
)
def test_a_robust_rule_short_of_contributions_keeps_the_model_and_says_why(
    strategy: covey.Strategy, needed: int
) -> None:
    # Enough clients are sampled (too few are refused before any round), but some fail:
    # only 5 contributions reach the rule.
    result = run(strategy, SIZES[:needed], rounds=2, fail=range(5, needed))
    for record in result.history.rounds[1:]:
        assert not record.aggregated
        error = record.aggregate_info["error"]
        assert f"= {needed} updates per round, but only 5 of the {needed} sampled" in error
    for name, value in INIT.items():
        np.testing.assert_array_equal(result.weights[name], value)


def test_clients_without_examples_leave_the_weighted_mean_undefined() -> None:
    result = run(covey.FedAvg(), (0, 0, 0), rounds=2)
    assert all("num_examples=0" in r.aggregate_info["error"] for r in result.history.rounds[1:])
    np.testing.assert_array_equal(result.weights["W"], INIT["W"])


# -- a strategy of one's own, History, backends ------------------------------------------------


@dataclass(frozen=True)
class EveryOther(covey.Strategy):
    """A user's strategy: the even clients train, each told its round's learning rate."""

    lr: float = 0.5

    def num_fit(self, available: int) -> int:
        return (available + 1) // 2

    def sample(self, available: Any, count: int, round: int, seed: int, purpose: int) -> list[int]:
        return [c for c in available if c % 2 == 0][:count]

    def fit_config(self, round: int) -> dict[str, Any]:
        return {"lr": self.lr / round}


def test_a_strategy_subclass_is_used_by_the_loop_on_every_backend() -> None:
    seen: list[tuple[int, float]] = []

    class Client(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Model, config: dict[str, Any]) -> covey.FitResult:
            seen.append((self.cid, config["lr"]))
            return covey.FitResult(weights={"w": weights["w"] + config["lr"]}, num_examples=1)

    strategy = EveryOther(lr=0.6, fraction_evaluate=0)
    inline = covey.simulate(Client, 6, 2, strategy, {"w": np.zeros(2)})
    assert participants(inline) == [[0, 2, 4], [0, 2, 4]]
    assert sorted(seen) == [(0, 0.3), (0, 0.6), (2, 0.3), (2, 0.6), (4, 0.3), (4, 0.6)]
    np.testing.assert_allclose(inline.weights["w"], [0.9, 0.9])
    process = covey.simulate(Client, 6, 2, strategy, {"w": np.zeros(2)}, backend="process")
    np.testing.assert_array_equal(process.weights["w"], inline.weights["w"])


def test_the_history_records_each_round() -> None:
    def central(rnd: int, weights: Model) -> tuple[float, dict[str, float]]:
        return float(np.sum(weights["W"] ** 2)), {"norm": float(np.abs(weights["W"]).sum())}

    strategy = covey.FedTrimmedAvg(beta=0.2, fraction_fit=0.5, fraction_evaluate=0.3)
    result = run(strategy, SIZES, rounds=3, evaluate_fn=central, seed=4)
    history = result.history
    assert [r.round for r in history.rounds] == [0, 1, 2, 3]
    assert history.rounds[0].fit_participants == []
    assert history.rounds[0].central_loss == 0.0
    for record in history.rounds[1:]:
        assert len(record.fit_participants) == 5
        assert len(record.evaluate_participants) == 3
        assert record.fit_examples == sum(SIZES[c] for c in record.fit_participants)
        assert record.aggregated
        # client 1's reply of 0 examples takes no part: 4 updates, of which none is cut
        empty = 1 in record.fit_participants
        expected = {"trimmed": 0, "no_examples": 1} if empty else {"trimmed": 1}
        assert record.aggregate_info == expected
    assert [r for r, _ in history.metric("norm")] == [0, 1, 2, 3]
    assert len(history.metric("loss", source="evaluate")) == 3
    config = json.loads(history.to_json())["config"]
    assert config["strategy"]["name"] == "FedTrimmedAvg"
    assert config["strategy"]["hyperparameters"] == {"beta": 0.2}
    assert config["seed"] == 4
    assert config["num_clients"] == 10
    again = covey.History.from_json(history.to_json())
    assert [r.fit_participants for r in again.rounds] == [r.fit_participants for r in history]


@pytest.mark.slow
@pytest.mark.parametrize(
    "make", [lambda: covey.FedMedian(fraction_fit=0.6), lambda: covey.FedYogi(fraction_fit=0.6)]
)
def test_the_process_backend_gives_the_same_bits(make: Any) -> None:
    inline = run(make(), SIZES, rounds=3, seed=2, delta=True)
    process = run(make(), SIZES, rounds=3, seed=2, delta=True, backend="process", num_workers=2)
    assert participants(process) == participants(inline)
    assert participants(process, "evaluate") == participants(inline, "evaluate")
    for name, value in inline.weights.items():
        np.testing.assert_array_equal(process.weights[name], value)
    for a, b in zip(inline.history.rounds, process.history.rounds, strict=True):
        assert a.evaluate_loss == b.evaluate_loss


# -- regressions: unsigned integer arrays and fractions of a count -----------------------

BYTES = {0: 3, 1: 4, 2: 6, 3: 200, 4: 2}
"""What each client sets a uint8 array to, from 5: one moves it far up, the rest a little."""


def _bytes_client(cid: int) -> covey.Client:
    class Client(covey.Client):
        def fit(self, weights: Model, config: dict[str, Any]) -> covey.FitResult:
            new = {"q": np.full(3, BYTES[cid], np.uint8), "w": weights["w"] + cid}
            return covey.FitResult(weights=new, num_examples=1)

    return Client()


@pytest.mark.parametrize(
    ("strategy", "want"),
    [
        (covey.FedMedian(fraction_evaluate=0), 4),  # median of 3, 4, 6, 200, 2
        (covey.FedTrimmedAvg(beta=0.2, fraction_evaluate=0), 4),  # mean of 3, 4, 6 rounded
        (covey.Krum(f=1, fraction_evaluate=0), 4),  # the update nearest the crowd
        (covey.Bulyan(f=0, fraction_evaluate=0), 43),  # mean of all five
        (covey.FedAvg(fraction_evaluate=0), 43),
    ],
    ids=lambda x: getattr(x, "name", str(x)),
)
def test_unsigned_integer_arrays_are_combined_by_their_values(
    strategy: covey.Strategy, want: int
) -> None:
    init: Arrays = {"q": np.full(3, 5, np.uint8), "w": np.zeros(1)}
    result = covey.simulate(_bytes_client, 5, 1, strategy, init)
    assert result.weights["q"].dtype == np.uint8
    assert result.weights["q"].tolist() == [want] * 3


def test_stale_updates_of_an_unsigned_array_are_scaled_and_averaged_by_value() -> None:
    """FedBuff scales stale updates (-6 and +2 here) by 1/sqrt(1 + tau), then averages them."""
    from covey.aggregate import Contribution, chain, run_round, staleness_weight, weighted_mean

    params = {"q": np.full(2, 9, np.uint8)}
    step = chain(staleness_weight(), weighted_mean())
    down = Contribution(0, 1, delta={"q": np.full(2, 250, np.uint8)}, staleness=3)  # 3 - 9
    up = Contribution(1, 1, delta={"q": np.full(2, 2, np.uint8)}, staleness=3)  # 11 - 9
    _, agg = run_round(step, step.init(params), 1, params, [down, up])
    assert agg is not None
    assert agg.apply(params)["q"].tolist() == [8, 8]  # 9 + (-3 + 1) / 2


@pytest.mark.parametrize(
    ("fraction", "clients", "want"), [(0.7, 90, 63), (0.29, 100, 29), (0.58, 50, 29)]
)
def test_a_fraction_of_the_clients_is_counted_exactly(
    fraction: float, clients: int, want: int
) -> None:
    """``fraction * n`` a hair below an integer in binary (0.7 * 90 = 62.99...) still counts it."""
    strategy = covey.FedAvg(fraction_fit=fraction, fraction_evaluate=fraction)
    assert strategy.num_fit(clients) == want
    assert strategy.num_evaluate(clients) == want


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_narrow_numpy_fraction_counts_as_the_decimal_it_was_written_as(dtype: Any) -> None:
    """np.float32(0.7) is 0.6999999881: 62 of 90 clients trained where 0.7 trains 63."""
    strategy = covey.FedAvg(fraction_fit=dtype(0.7), fraction_evaluate=dtype(0.58))
    assert (strategy.num_fit(90), strategy.num_evaluate(50)) == (63, 29)
    assert strategy.fraction_fit == 0.7
    assert type(strategy.fraction_fit) is float
    values = np.arange(20.0) ** 2
    results = [covey.FitResult(weights={"w": np.array([v])}, num_examples=1) for v in values]
    beta: Any = np.float32(0.45)  # what a float32 array of a sweep gives
    new = covey.FedTrimmedAvg(beta=beta).aggregate({"w": np.zeros(1)}, results)
    np.testing.assert_allclose(new["w"], [values[9:11].mean()])  # 9 cut from each end, not 8


def test_trimmed_mean_cuts_beta_n_values_computed_exactly() -> None:
    values = np.arange(100.0) ** 2
    results = [covey.FitResult(weights={"w": np.array([v])}, num_examples=1) for v in values]
    new = covey.FedTrimmedAvg(beta=0.29).aggregate({"w": np.zeros(1)}, results)
    np.testing.assert_allclose(new["w"], [values[29:71].mean()])  # 29 cut from each end


@pytest.mark.parametrize("beta", [0.4999999999999, 0.49999999999999994])
def test_a_trimming_fraction_just_below_one_half_keeps_a_value(beta: float) -> None:
    """Less than half of 2 values is none of them, however close beta is to 0.5."""
    results = [covey.FitResult(weights={"w": np.array([v])}, num_examples=1) for v in (1.0, 4.0)]
    new = covey.FedTrimmedAvg(beta=beta).aggregate({"w": np.zeros(1)}, results)
    np.testing.assert_allclose(new["w"], [2.5])


def test_a_client_without_examples_leaves_the_metric_averages_alone() -> None:
    """0 * nan is nan: a client weighted 0 that reports NaN made every average NaN."""
    sizes = (2, 0, 6)

    class Client(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def metrics(self) -> dict[str, Any]:
            n = sizes[self.cid]
            return {
                "acc": self.cid / n if n else float("nan"),
                "score": float("inf") if n == 0 else 1.0,
            }

        def fit(self, weights: Model, config: dict[str, Any]) -> covey.FitResult:
            return covey.FitResult(
                weights=weights, num_examples=sizes[self.cid], metrics=self.metrics()
            )

        def evaluate(self, weights: Model, config: dict[str, Any]) -> covey.EvaluateResult:
            return covey.EvaluateResult(
                loss=1.0, num_examples=sizes[self.cid], metrics=self.metrics()
            )

    record = covey.simulate(Client, 3, 1, covey.FedAvg(), INIT).history.rounds[1]
    want = {"acc": (2 * 0.0 + 6 * (2 / 6)) / 8, "score": 1.0}
    assert record.fit_metrics == pytest.approx(want)
    assert record.evaluate_metrics == pytest.approx(want)
    assert covey.strategies.weighted_metrics([(0, {"acc": float("nan")})]) == {}


@pytest.mark.parametrize(
    "make",
    [
        lambda: covey.FedAvg(fraction_evaluate=0.0),
        lambda: covey.FedAvgM(fraction_evaluate=0.0),
        lambda: covey.FedAdam(fraction_evaluate=0.0),
        lambda: covey.QFedAvg(q=0.0, loss_key="loss", fraction_evaluate=0.0),
    ],
)
def test_a_sum_that_overflows_keeps_the_model_without_a_warning(make: Any) -> None:
    """Warnings are errors here: an overflow warning used to stop the run instead."""

    class Client(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Model, config: dict[str, Any]) -> covey.FitResult:
            step = 1e308 if self.cid else 1.0
            delta = {k: np.full(v.shape, step, v.dtype) for k, v in weights.items()}
            return covey.FitResult(delta=delta, num_examples=3, metrics={"loss": 1.0})

    init = {"w": np.zeros(3)}
    result = covey.simulate(Client, 3, 2, make(), init)
    # The mean of finite updates is finite (the fold rescales a sum that overflows);
    # a model or server state past float64's range is refused, keeping the model.
    for r in result.history.rounds[1:]:
        assert r.aggregated or "non-finite" in r.aggregate_info["error"]
    assert np.isfinite(result.weights["w"]).all()
