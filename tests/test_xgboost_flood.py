"""covey.xgboost: a reply adds exactly the round's ``local_rounds`` of trees, no more, no less."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.aggregate import Aggregate, AggregationError, Begin, Contribution, End
from covey.core import Config

xgb = pytest.importorskip("xgboost")

from covey.xgboost import (  # noqa: E402
    XGBoostBagging,
    XGBoostClient,
    XGBoostCyclic,
    bagging,
    cyclic,
    empty_booster,
    from_weights,
    initial_model,
    num_trees,
    to_weights,
)

BINARY = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 2, "nthread": 1}
MULTI = {
    "objective": "multi:softprob",
    "num_class": 3,
    "base_score": 0.5,
    "max_depth": 2,
    "nthread": 1,
}
CLIENTS, ROUNDS, LOCAL = 3, 3, 2


def _data(seed: int, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] > 0) * 1.0 if classes == 2 else np.digitize(x[:, 0], [-0.4, 0.4]) * 1.0
    return x, y


class _Boosting(XGBoostClient):
    """A client that boosts ``rounds`` rounds whatever the fit config asks."""

    def __init__(self, cid: int, params: dict[str, Any], rounds: int) -> None:
        super().__init__(*_data(cid, int(params.get("num_class", 2))), params)
        self.rounds = rounds

    def fit(self, weights: covey.Weights, config: Config) -> covey.FitResult:
        return super().fit(weights, {**config, "local_rounds": self.rounds})


class _Failing(XGBoostClient):
    """A client whose fit fails: the reference run without the hostile client's trees."""

    def fit(self, weights: covey.Weights, config: Config) -> covey.FitResult:
        raise RuntimeError("this client does not train")


def _run(
    strategy: covey.Strategy, odd: type | None, rounds: int = 0, params: dict[str, Any] = BINARY
) -> covey.sim.SimulationResult:
    """``CLIENTS`` clients boosting the config's local rounds; client 1 as ``odd`` says."""
    classes = int(params.get("num_class", 2))

    def client(cid: int) -> XGBoostClient:
        if cid == 1 and odd is _Boosting:
            return _Boosting(cid, params, rounds)
        if cid == 1 and odd is _Failing:
            return _Failing(*_data(cid, classes), params)
        return XGBoostClient(*_data(cid, classes), params)

    return covey.simulate(
        client,
        num_clients=CLIENTS,
        rounds=ROUNDS,
        strategy=strategy,
        initial_weights=initial_model(params, 4, capacity=1 << 18),
        backend="inline",
        seed=0,
    )


def _strategy(name: str) -> covey.Strategy:
    kind = XGBoostBagging if name == "bagging" else XGBoostCyclic
    return kind(local_rounds=LOCAL, fraction_evaluate=0.0)


@pytest.mark.parametrize("name", ["bagging", "cyclic"])
@pytest.mark.parametrize(("rounds", "added"), [(3 * LOCAL, 6), (1, 1)])
def test_a_reply_adding_another_number_of_trees_is_refused_alone(
    name: str, rounds: int, added: int
) -> None:
    # Before: client 1's 6 trees (or its 1) were merged as any other client's, a hostile
    # client thus bloating the global booster, and crowding out the other clients' trees
    # once the booster neared its byte capacity or max_trees.
    hostile = _run(_strategy(name), _Boosting, rounds)
    without = _run(_strategy(name), _Failing)
    failures = [f for r in hostile.history.rounds[1:] for f in r.fit_failures]
    assert failures
    assert {f.cid for f in failures} == {1}
    said = f"adds {added} trees to the global model, {LOCAL} expected: local_rounds={LOCAL}"
    assert all(said in f.error for f in failures), failures[0].error
    assert all("error" not in r.aggregate_info for r in hostile.history.rounds[1:])
    # The global model is the one of the run where client 1 sent nothing.
    assert from_weights(hostile.weights) == from_weights(without.weights)
    trees = ROUNDS * (CLIENTS - 1) * LOCAL if name == "bagging" else (ROUNDS - 1) * LOCAL
    assert num_trees(from_weights(hostile.weights)) == trees


def test_every_class_tree_of_a_boosting_round_is_counted() -> None:
    honest = _run(XGBoostBagging(local_rounds=LOCAL, fraction_evaluate=0.0), None, params=MULTI)
    assert not honest.history.failures()
    assert num_trees(from_weights(honest.weights)) == ROUNDS * CLIENTS * LOCAL * 3
    hostile = _run(
        XGBoostBagging(local_rounds=LOCAL, fraction_evaluate=0.0), _Boosting, 3, params=MULTI
    )
    failures = [f for r in hostile.history.rounds[1:] for f in r.fit_failures]
    assert {f.cid for f in failures} == {1}
    assert "adds 9 trees to the global model, 6 expected" in failures[0].error
    assert "3 per class and target" in failures[0].error


def test_parallel_trees_count_as_the_initial_model_records_them() -> None:
    forest = {**BINARY, "num_parallel_tree": 2, "subsample": 0.8}
    honest = _run(XGBoostBagging(local_rounds=LOCAL, fraction_evaluate=0.0), None, params=forest)
    assert not honest.history.failures()
    assert num_trees(from_weights(honest.weights)) == ROUNDS * CLIENTS * LOCAL * 2
    # An initial model made without the clients' num_parallel_tree: named.
    said = r"adds 2 trees .*, 1 expected.*\(it grows num_parallel_tree=2, the global model 1"
    with pytest.raises(covey.FederationError, match=said):
        covey.simulate(
            lambda cid: XGBoostClient(*_data(cid), forest),
            num_clients=2,
            rounds=1,
            strategy=XGBoostBagging(fraction_evaluate=0.0),
            initial_weights=initial_model(BINARY, 4, capacity=1 << 18),
            backend="inline",
        )


def _two_rounds(kind: Any, **client: Any) -> None:
    """Two rounds of ``kind`` whose clients are given ``client``; each round grew its trees."""
    result = covey.simulate(
        lambda cid: XGBoostClient(*_data(cid), BINARY, **client),
        num_clients=CLIENTS,
        rounds=2,
        strategy=kind(local_rounds=LOCAL, fraction_evaluate=0.0),
        initial_weights=initial_model(BINARY, 4, capacity=1 << 18),
        backend="inline",
    )
    assert not result.history.failures()
    per_round = CLIENTS * LOCAL if kind is XGBoostBagging else LOCAL
    assert num_trees(from_weights(result.weights)) == 2 * per_round


@pytest.mark.parametrize("kind", [XGBoostBagging, XGBoostCyclic])
def test_a_client_left_at_the_default_local_rounds_is_not_warned(
    kind: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that chose no ``local_rounds`` boosts the strategy's without a warning."""
    caplog.set_level(logging.WARNING, logger="covey")
    _two_rounds(kind)
    assert not [r for r in caplog.records if "wins over this client's" in r.getMessage()]


@pytest.mark.parametrize("kind", [XGBoostBagging, XGBoostCyclic])
def test_the_strategys_local_rounds_win_over_the_clients_own(
    kind: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="covey")
    _two_rounds(kind, local_rounds=5)
    told = [r.getMessage() for r in caplog.records if "wins over this client's" in r.getMessage()]
    # Each client is told once (not every round) what it boosts and how to have its own;
    # cyclic training runs one client a round.
    assert len(told) == (CLIENTS if kind is XGBoostBagging else 2)
    assert f"the server's local_rounds={LOCAL} wins over this client's local_rounds=5" in told[0]
    assert "give the strategy local_rounds=5" in told[0]
    with pytest.raises(ValueError, match=r"on_fit_config set 'local_rounds' in round 1"):
        covey.simulate(
            lambda cid: XGBoostClient(*_data(cid), BINARY),
            num_clients=2,
            rounds=1,
            strategy=kind(on_fit_config=lambda r: {"local_rounds": 3}, fraction_evaluate=0.0),
            initial_weights=initial_model(BINARY, 4, capacity=1 << 18),
            backend="inline",
        )


def test_the_step_refuses_the_reply_and_merges_the_others() -> None:
    base = empty_booster(BINARY, 4)
    start = to_weights(base, 1 << 18)
    honest = XGBoostClient(*_data(0), BINARY).fit(start, {"local_rounds": LOCAL}).weights
    flood = XGBoostClient(*_data(1), BINARY).fit(start, {"local_rounds": 3 * LOCAL}).weights
    assert honest is not None
    assert flood is not None
    step = bagging(local_rounds=LOCAL)
    state = step.init(start)
    state, _ = step.update(state, Begin(1, start))
    with pytest.raises(AggregationError, match=r"adds 6 trees to the global model, 2 expected"):
        step.update(state, Contribution(1, 60, weights=flood))
    state, _ = step.update(state, Contribution(0, 60, weights=honest))
    _, out = step.update(state, End(1))
    aggregate = out[0]
    assert isinstance(aggregate, Aggregate)
    assert aggregate.weights is not None
    assert num_trees(from_weights(aggregate.weights)) == LOCAL
    one = cyclic(local_rounds=3 * LOCAL)
    state = one.init(start)
    state, _ = one.update(state, Begin(1, start))
    with pytest.raises(AggregationError, match=r"adds 2 trees to the global model, 6 expected"):
        one.update(state, Contribution(0, 60, weights=honest))


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "local_rounds must be at least 1"),
        (-2, ValueError, "local_rounds must be at least 1"),
        (True, TypeError, "local_rounds must be an int .* got bool True"),
        (2.0, TypeError, "local_rounds must be an int .* got float 2.0"),
        ("2", TypeError, "local_rounds must be an int .* got str '2'"),
        (None, TypeError, "local_rounds must be an int .* got NoneType None"),
    ],
)
def test_nonsense_local_rounds_is_refused_naming_it(
    value: object, error: type[Exception], message: str
) -> None:
    makers: tuple[Any, ...] = (XGBoostBagging, XGBoostCyclic, bagging, cyclic)
    for make in makers:
        with pytest.raises(error, match=message):
            make(local_rounds=value)


def test_local_rounds_is_recorded_and_a_resume_with_another_is_refused(tmp_path: Path) -> None:
    bagged = XGBoostBagging(local_rounds=3).describe()["hyperparameters"]
    assert bagged == {"weighted": True, "max_trees": None, "local_rounds": 3}
    cyclic = XGBoostCyclic(local_rounds=3).describe()["hyperparameters"]
    assert cyclic == {"max_trees": None, "local_rounds": 3}
    # 1, the default, is recorded too: a resume with another is refused as well.
    assert XGBoostCyclic().describe()["hyperparameters"] == {"max_trees": None, "local_rounds": 1}
    both = XGBoostBagging(local_rounds=3, max_trees=60).describe()["hyperparameters"]
    assert both == {"weighted": True, "max_trees": 60, "local_rounds": 3}
    run = tmp_path / "run"

    def simulate(rounds: int, local_rounds: int, resume: bool) -> covey.sim.SimulationResult:
        return covey.simulate(
            lambda cid: XGBoostClient(*_data(cid), BINARY),
            num_clients=2,
            rounds=rounds,
            strategy=XGBoostBagging(local_rounds=local_rounds, fraction_evaluate=0.0),
            initial_weights=initial_model(BINARY, 4, capacity=1 << 18),
            backend="inline",
            run_dir=run,
            resume=resume,
        )

    simulate(1, 2, False)
    for other in (1, 3):
        with pytest.raises(ValueError, match="cannot be resumed with other settings"):
            simulate(2, other, True)
    resumed = simulate(2, 2, True)
    assert num_trees(from_weights(resumed.weights)) == 2 * 2 * 2
