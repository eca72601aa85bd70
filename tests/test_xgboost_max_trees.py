"""covey.xgboost: ``max_trees`` bounds the booster bagging or cyclic training grows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey

xgb = pytest.importorskip("xgboost")

from covey.aggregate import chain, skip_nonfinite  # noqa: E402
from covey.aggregate._base import run_hooks, step_hooks  # noqa: E402
from covey.xgboost import (  # noqa: E402
    XGBoostBagging,
    XGBoostClient,
    XGBoostCyclic,
    bagging,
    cyclic,
    evaluate_booster,
    from_weights,
    initial_model,
    num_trees,
    round_robin,
)

BINARY = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 2, "nthread": 1}
MULTI = {**BINARY, "objective": "multi:softprob", "num_class": 3}
CLIENTS, LOCAL = 3, 2


def _cancer() -> tuple[list[tuple[Any, Any]], Any, Any]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order].astype(np.float64)
    cut = int(0.75 * len(y))
    shares = [(x[s], y[s]) for s in np.array_split(np.arange(cut), CLIENTS)]
    return shares, x[cut:], y[cut:]


def _run(
    strategy: covey.Strategy,
    params: dict[str, Any],
    shares: list[tuple[Any, Any]],
    rounds: int,
    start: Any = None,
    run_dir: Path | None = None,
    resume: bool = False,
) -> covey.sim.SimulationResult:
    """An XGBoost run of ``strategy`` from ``start`` (an empty booster), kept in ``run_dir``."""
    if start is None:
        start = initial_model(params, num_features=shares[0][0].shape[1], capacity=1 << 21)
    return covey.simulate(
        lambda cid: XGBoostClient(*shares[cid], params, local_rounds=LOCAL),
        len(shares),
        rounds,
        strategy,
        start,
        backend="inline",
        seed=0,
        run_dir=run_dir,
        resume=resume,
    )


def _in_run_dir(
    strategy: covey.Strategy,
    shares: list[tuple[Any, Any]],
    start: Any,
    run_dir: Path,
    rounds: int,
    resume: bool,
) -> covey.sim.SimulationResult:
    """A binary XGBoost run of ``strategy`` from ``start`` kept in ``run_dir``."""
    return _run(strategy, BINARY, shares, rounds, start, run_dir, resume)


def _stopped_after(result: covey.sim.SimulationResult, round: int, cap: int) -> None:
    """``result``'s run stopped after ``round``, whose booster left no room for another's trees."""
    assert [r.round for r in result.history.rounds] == list(range(round + 1))
    info = [r.aggregate_info for r in result.history.rounds[1:]]
    assert [i.get("max_trees_full", False) for i in info] == [False] * (round - 1) + [True]
    assert not any(i.get("max_trees_reached") for i in info)  # no round trained for nothing
    reason = result.history.stopped_reason or ""
    assert reason.startswith(f"max_trees={cap} reached: after round {round} the booster has no")


def test_max_trees_bounds_the_bagged_booster_over_rounds_and_it_stays_accurate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shares, x_test, y_test = _cancer()
    per_round = CLIENTS * LOCAL  # 6 trees a round
    free = _run(XGBoostBagging(local_rounds=LOCAL, fraction_evaluate=0.0), BINARY, shares, 6)
    caplog.set_level(logging.INFO, logger="covey")
    capped = _run(
        XGBoostBagging(local_rounds=LOCAL, fraction_evaluate=0.0, max_trees=23), BINARY, shares, 6
    )
    assert num_trees(from_weights(free.weights)) == 6 * per_round
    # Whole rounds only: three rounds (18 trees) fit under 23, a fourth would not, so the
    # run stops before it: no client trains for trees that would be left out.
    assert num_trees(from_weights(capped.weights)) == 3 * per_round
    assert not capped.history.failures()
    _stopped_after(capped, 3, 23)
    assert any(
        r.levelno == logging.INFO and "stopping before round 4: max_trees=23 reached" in r.message
        for r in caplog.records
    )
    _, free_metrics = evaluate_booster(free.weights, x_test, y_test, nthread=1)
    loss, metrics = evaluate_booster(capped.weights, x_test, y_test, nthread=1)
    assert float(metrics["accuracy"]) > 0.9
    assert float(metrics["accuracy"]) >= float(free_metrics["accuracy"]) - 0.05
    assert loss < 0.3
    strategy = XGBoostBagging(max_trees=23)
    assert strategy.describe()["hyperparameters"]["max_trees"] == 23
    assert XGBoostBagging().describe()["hyperparameters"]["max_trees"] is None


def test_the_bagging_step_alone_stops_the_run_as_its_preset_does() -> None:
    # A Strategy of one's own with the step, alone or in a chain, stops before the
    # round whose trees would be left out, as XGBoostBagging does.
    shares, _, _ = _cancer()
    for step in (
        bagging(local_rounds=LOCAL, max_trees=23),
        chain(skip_nonfinite(), bagging(local_rounds=LOCAL, max_trees=23)),
    ):
        own = covey.Strategy(aggregator=step, fraction_evaluate=0.0)
        capped = _run(own, BINARY, shares, 6)
        assert num_trees(from_weights(capped.weights)) == 3 * CLIENTS * LOCAL
        assert not capped.history.failures()
        _stopped_after(capped, 3, 23)
    # The preset's strategy carries the hook once, through its step.
    preset = XGBoostBagging(max_trees=23)
    assert run_hooks(preset.hooks, preset.aggregator) == step_hooks(preset.aggregator)
    assert len(step_hooks(preset.aggregator)) == 1
    assert step_hooks(bagging()) == ()


def test_the_cyclic_step_alone_stops_the_run_and_its_resume(tmp_path: Path) -> None:
    shares, _, _ = _cancer()
    start = initial_model(BINARY, num_features=shares[0][0].shape[1], capacity=1 << 21)

    own = covey.Strategy(
        aggregator=cyclic(local_rounds=LOCAL, max_trees=4),
        selector=round_robin,
        fraction_fit=0.0,
        min_fit_clients=0,
        fraction_evaluate=0.0,
    )

    def run(rounds: int, resume: bool) -> covey.sim.SimulationResult:
        return _in_run_dir(own, shares, start, tmp_path / "run", rounds, resume)

    _stopped_after(run(5, False), 2, 4)
    resumed = run(6, True)  # the step's hook reads the mark from the run's history
    _stopped_after(resumed, 2, 4)
    assert num_trees(from_weights(resumed.weights)) == 4


def test_a_capped_step_in_an_asynchronous_strategy_is_refused_naming_max_trees() -> None:
    # FedBuff runs no hook: the cap could not stop the run.
    with pytest.raises(ValueError, match=r"max_trees\) need synchronous rounds"):
        covey.Strategy(aggregator=bagging(max_trees=10), buffer_size=2, fraction_evaluate=0.0)
    covey.Strategy(aggregator=bagging(), buffer_size=2, fraction_evaluate=0.0)  # no cap, no hook


def test_max_trees_bounds_the_cyclic_booster_as_the_bagged_one() -> None:
    shares, x_test, y_test = _cancer()
    capped = _run(
        XGBoostCyclic(local_rounds=LOCAL, fraction_evaluate=0.0, max_trees=7), BINARY, shares, 6
    )
    # LOCAL trees a round, one client: three rounds (6 trees) fit under 7, a fourth would not.
    assert num_trees(from_weights(capped.weights)) == 3 * LOCAL
    assert not capped.history.failures()
    _stopped_after(capped, 3, 7)
    _, metrics = evaluate_booster(capped.weights, x_test, y_test, nthread=1)
    assert float(metrics["accuracy"]) > 0.85
    recorded = XGBoostCyclic(max_trees=7).describe()["hyperparameters"]
    assert recorded == {"max_trees": 7, "local_rounds": 1}


def test_a_booster_filled_to_max_trees_exactly_stops_the_run_and_its_resume(
    tmp_path: Path,
) -> None:
    shares, _, _ = _cancer()
    start = initial_model(BINARY, num_features=shares[0][0].shape[1], capacity=1 << 21)

    preset = XGBoostCyclic(local_rounds=LOCAL, fraction_evaluate=0.0, max_trees=4)

    def run(rounds: int, resume: bool) -> covey.sim.SimulationResult:
        return _in_run_dir(preset, shares, start, tmp_path / "run", rounds, resume)

    # Two rounds fill the booster to 4 trees: the run stops before a third.
    _stopped_after(run(5, False), 2, 4)
    # Resumed, it stops again at once: no client trains.
    resumed = run(6, True)
    _stopped_after(resumed, 2, 4)
    assert num_trees(from_weights(resumed.weights)) == 4


def test_max_trees_counts_every_class_tree() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(180, 4))
    y = ((x[:, 0] > 0).astype(int) + (x[:, 1] > 0.3)).astype(np.float64)
    shares = [(x[i::CLIENTS], y[i::CLIENTS]) for i in range(CLIENTS)]
    # 3 clients x 2 local rounds x 3 classes = 18 trees a round.
    strategy = XGBoostBagging(local_rounds=LOCAL, fraction_evaluate=0.0, max_trees=40)
    result = _run(strategy, MULTI, shares, 4)
    assert num_trees(from_weights(result.weights)) == 36
    assert [r.aggregated for r in result.history.rounds[1:]] == [True] * 2
    assert (result.history.stopped_reason or "").startswith("max_trees=40 reached")


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "max_trees must be at least 1"),
        (-5, ValueError, "max_trees must be at least 1"),
        (True, TypeError, "max_trees must be an int .* got bool True"),
        (2.5, TypeError, "max_trees must be an int .* got float 2.5"),
        ("10", TypeError, "max_trees must be an int .* got str '10'"),
    ],
)
def test_nonsense_max_trees_is_refused_naming_it(
    value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        XGBoostBagging(max_trees=value)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        bagging(max_trees=value)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        XGBoostCyclic(max_trees=value)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        cyclic(max_trees=value)  # type: ignore[arg-type]


def test_a_start_past_max_trees_or_a_cap_below_one_iteration_is_refused_before_round_1() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] > 0).astype(np.float64)
    built: list[int] = []

    def client_fn(cid: int) -> XGBoostClient:
        built.append(cid)
        return XGBoostClient(x, y, BINARY)

    grown = XGBoostClient(x, y, BINARY, local_rounds=5).fit(
        initial_model(BINARY, 4, capacity=1 << 16), {"round": 1}
    )
    assert grown.weights is not None
    multi = initial_model(MULTI, 4, capacity=1 << 16)
    for kind in (XGBoostBagging, XGBoostCyclic):
        with pytest.raises(covey.WeightsError, match=r"holds 5 trees, more than max_trees=4"):
            covey.simulate(client_fn, 2, 1, kind(max_trees=4), grown.weights)
        with pytest.raises(
            covey.WeightsError, match=r"max_trees=2 holds no boosting iteration.* 3 "
        ):
            covey.simulate(client_fn, 2, 1, kind(max_trees=2), multi)
    assert built == []


def test_covey_server_says_why_a_run_stopped_before_its_rounds() -> None:
    # `covey server --rounds 10` of a run max_trees stopped after round 2 printed only
    # "run finished after round 2": the reason was in history.json and `covey runs show`.
    from covey.deploy._cli import _endings
    from covey.deploy._console import ServerConsole

    shares, _, _ = _cancer()
    result = _run(XGBoostBagging(local_rounds=LOCAL, max_trees=15), BINARY, shares, 10)
    _stopped_after(result, 2, 15)
    lines: list[str] = []
    _endings(result.history, ServerConsole(lines.append, 3, {}))
    said = " ".join(lines)
    assert "stopped early after round 2: max_trees=15 reached: after round 2 the booster" in said
