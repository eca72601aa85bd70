"""What a fit exchange or an aggregation step of one's own reports, as the round records it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _steps import Shift as _Shift
from _steps import reporting as _reporting
from covey.aggregate import Aggregate, Contribution, End, chain, mean
from covey.strategies import FitOutcome


def _init() -> dict[str, np.ndarray]:
    return {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


#: Per-client values as code of one's own writes them: int keys, tuples, NumPy values.
PER_CLIENT = {
    "by_client": {0: np.float32(0.5), 1: np.float32(0.25)},
    "pair": (1, 2),
    "all": np.array([1.0, 2.0], np.float32),
    "nested": {"counts": [np.int64(3), np.int64(4)]},
}

#: PER_CLIENT as history.json gives it back.
READ_BACK = {
    "by_client": {"0": 0.5, "1": 0.25},
    "pair": [1, 2],
    "all": [1.0, 2.0],
    "nested": {"counts": [3, 4]},
}


def _own_round(metrics: Any, info: Any) -> Any:
    """A fit exchange of one's own: every sampled client contributes a delta of ones."""

    def own_round(transport: Any, cids: Any, task: Any, timeout: Any) -> FitOutcome:
        ones = {k: np.ones_like(v) for k, v in task.weights.items()}
        contributions = tuple(Contribution(cid, 1, delta=ones) for cid in cids)
        return FitOutcome(contributions, tuple(cids), len(cids), metrics=metrics, info=info)

    return own_round


def _strategy(**options: Any) -> covey.Strategy:
    return covey.Strategy(fraction_evaluate=0.0, **options)


def test_a_fit_round_of_ones_own_refuses_a_fit_metrics_it_would_never_call() -> None:
    # Before: the strategy was made, and its fit_metrics silently never called (the
    # round recorded the fit_round's metrics instead).
    def gather(results: Any) -> dict[str, Any]:
        return {"n": len(results)}

    own_round = _own_round({}, {})
    said = (
        r"the strategy's fit_metrics .*gather would never be called: fit_round .*own_round "
        r"combines the round's fit metrics itself \(FitOutcome.metrics\)"
    )
    with pytest.raises(ValueError, match=said):
        covey.Strategy(fit_round=own_round, fit_metrics=gather)
    with pytest.raises(ValueError, match=said):
        dataclasses.replace(covey.FedAvg(fit_metrics=gather), fit_round=own_round)
    covey.Strategy(fit_round=own_round, evaluate_metrics=gather)  # evaluation is the loop's


def test_a_fit_rounds_metrics_and_info_read_the_same_live_and_loaded(tmp_path: Path) -> None:
    # Before: the live record kept the fit_round's int keys, tuples and NumPy values,
    # which history.json gives back as str keys, lists and numbers.
    strategy = _strategy(fit_round=_own_round(PER_CLIENT, {"mine": PER_CLIENT}))
    result = covey.simulate(_Shift, 2, 1, strategy, _init(), run_dir=tmp_path)
    live = result.history[1]
    assert live.fit_metrics == READ_BACK
    assert live.aggregate_info["mine"] == READ_BACK
    by_client: dict[str, Any] = live.fit_metrics["by_client"]
    assert type(by_client["0"]) is float
    loaded = covey.History.load(tmp_path)[1]
    assert (loaded.fit_metrics, loaded.aggregate_info) == (live.fit_metrics, live.aggregate_info)


@pytest.mark.parametrize(
    ("metrics", "info", "said"),
    [
        (
            {"meta": [{"__float__": "1"}]},
            {},
            r"fit_round .*own_round in round 1 returned a value the history cannot keep: its "
            r"metrics\['meta'\]\[0\] is a dict of the one key '__float__'",
        ),
        (
            {},
            {"meta": {"__bytes__": "zz"}},
            r"fit_round .*own_round: FitOutcome\(round=1\)\.info\['meta'\] is a dict of the one "
            r"key '__bytes__', the form history.json writes bytes",
        ),
        (
            {},
            {"seen": {1, 2}},
            r"fit_round .*own_round: FitOutcome\(round=1\)\.info\['seen'\]: cannot write a "
            r"value of type set",
        ),
    ],
)
def test_a_fit_round_reporting_what_the_history_cannot_keep_is_named(
    metrics: Any, info: Any, said: str
) -> None:
    # Before: recorded unchecked; a "__float__" dict was read back from history.json as
    # the float 1.0, a "__bytes__" one or a set failed only when the run was saved.
    strategy = _strategy(fit_round=_own_round(metrics, info))
    with pytest.raises(TypeError, match=said):
        covey.simulate(_Shift, 2, 1, strategy, _init())


@pytest.mark.parametrize("at", [End, Aggregate])
def test_a_steps_info_reads_the_same_live_and_loaded(at: type, tmp_path: Path) -> None:
    # Before: the live aggregate_info kept the step's int keys, tuples and NumPy values.
    steps = (_reporting({"mine": PER_CLIENT, 3: "three"}, at), mean())
    aggregator = chain(*(steps if at is End else steps[::-1]))
    result = covey.simulate(
        _Shift, 3, 1, _strategy(aggregator=aggregator), _init(), run_dir=tmp_path
    )
    live = result.history[1].aggregate_info
    assert live["mine"] == READ_BACK
    assert live["3"] == "three"
    assert covey.History.load(tmp_path)[1].aggregate_info == live


def _event(at: type, info: Any) -> Any:
    """An ``End`` or ``Aggregate`` of round 1 with ``info``."""
    return End(1, info=info) if at is End else Aggregate(1, 1, 1, delta=_init(), info=info)


@pytest.mark.parametrize("at", [End, Aggregate])
def test_a_steps_info_shaped_as_a_history_tag_is_named(at: type) -> None:
    # Before: accepted; a run folder failed to save the round ("fromhex() argument must be
    # str"), and history.json read {"__float__": "1"} back as the float 1.0.
    said = (
        rf"{at.__name__}\(round=1\)\.info\['meta'\]\[0\] is a dict of the one key '__float__', "
        "the form history.json writes bytes and NaN or infinite floats in"
    )
    meta = {"meta": [{"__float__": "1"}]}
    with pytest.raises(TypeError, match=said):
        _event(at, meta)
    steps = (_reporting({"meta": {"__bytes__": 1.0}}, at), mean())
    aggregator = chain(*(steps if at is End else steps[::-1]))
    with pytest.raises(covey.FederationError, match=r"info\['meta'\] is a dict of the one key"):
        covey.simulate(_Shift, 3, 1, _strategy(aggregator=aggregator), _init())
