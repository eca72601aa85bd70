"""The best round of a run by one metric, and a run's metrics as a pandas table."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

import covey
from covey import EvaluateResult, FitResult
from covey.core import MissingExtraError, RoundRecord


def history() -> covey.History:
    return covey.History(
        [
            RoundRecord(0, central_loss=2.0, central_metrics={"accuracy": 0.1}),
            RoundRecord(
                1,
                central_loss=1.0,
                central_metrics={"accuracy": 0.5, "note": "text"},
                evaluate_loss=0.7,
                evaluate_metrics={"accuracy": 0.6},
                fit_metrics={"train_loss": 0.9},
            ),
            RoundRecord(2, central_loss=1.5, central_metrics={"accuracy": 0.5, "loss": 9.0}),
            RoundRecord(3, central_loss=math.nan, central_metrics={"accuracy": 0.3}),
        ]
    )


def test_best_round_by_max_and_min_ties_to_the_earliest_and_skips_nan() -> None:
    h = history()
    assert h.best_round("accuracy") == (1, 0.5)  # round 2 ties: the earliest wins
    assert h.best_round("loss", mode="min") == (1, 1.0)  # round 3's NaN is left out
    assert h.best_round("loss", mode="max") == (0, 2.0)  # round 0, the initial model, counts
    assert h.best_round("accuracy", source="evaluate") == (1, 0.6)
    assert h.best_round("train_loss", mode="min", source="fit") == (1, 0.9)


def test_best_round_of_a_loss_picks_the_lowest_unless_told_otherwise() -> None:
    # The default was "max" whatever the metric: best_round("loss") gave the worst
    # round (here the initial model), silently.
    h = history()
    assert h.best_round("loss") == (1, 1.0)
    assert h.best_round("loss", source="evaluate") == h.best_round("loss", "min", "evaluate")
    assert h.best_round("train_loss", source="fit") == (1, 0.9)
    assert h.best_round("loss_metric") == (2, 9.0)
    assert h.best_round("loss", mode="max") == (0, 2.0)
    assert h.best_round("accuracy") == (1, 0.5)


def test_best_round_names_what_is_recorded_when_the_metric_is_not() -> None:
    h = history()
    with pytest.raises(
        ValueError, match=r"no round records 'f1'.*\['accuracy', 'loss', 'loss_metric', 'note'\]"
    ):
        h.best_round("f1")
    with pytest.raises(ValueError, match=r"'train_loss' is recorded from source='fit'"):
        h.best_round("train_loss")
    with pytest.raises(ValueError, match="mode must be 'max' or 'min', got 'best'"):
        h.best_round("accuracy", mode="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown metric source 'server'"):
        h.best_round("accuracy", source="server")  # type: ignore[arg-type]
    nan_only = covey.History([RoundRecord(1, central_metrics={"accuracy": math.nan})])
    with pytest.raises(ValueError, match=r"'accuracy' \(NaN aside\)"):
        nan_only.best_round("accuracy")


def test_best_round_of_a_metric_recorded_as_no_number_says_what_it_holds() -> None:
    # It said "no round records 'per_client' ...: it records ['per_client'] there".
    metrics: dict[str, Any] = {"per_client": [0.5, 0.7], "ok": True, "acc": 0.6}
    h = covey.History([RoundRecord(1, evaluate_metrics=metrics)])
    with pytest.raises(ValueError, match="per_client") as caught:
        h.best_round("per_client", source="evaluate")
    assert str(caught.value) == (
        "no round records 'per_client' as a number from source='evaluate': it holds list "
        "there, and History.metric and best_round read numbers (read it from "
        "history.rounds[i].evaluate_metrics)"
    )
    with pytest.raises(ValueError, match="'ok' as a number from source='evaluate': it holds bool"):
        h.best_round("ok", source="evaluate")
    nan_only = covey.History([RoundRecord(1, central_metrics={"accuracy": math.nan})])
    with pytest.raises(ValueError, match=r"\(NaN aside\) from source='central': it is NaN wher"):
        nan_only.best_round("accuracy")


def test_to_pandas_has_one_row_per_round_and_one_column_per_numeric_metric() -> None:
    frame = history().to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert frame.index.name == "round"
    assert list(frame.index) == [0, 1, 2, 3]
    assert list(frame.columns) == [
        "central_loss",
        "central_accuracy",
        "central_loss_metric",
        "evaluate_loss",
        "evaluate_accuracy",
        "fit_train_loss",
    ]
    # "loss" is the round's loss, as History.metric says; a metric of that name is loss_metric
    assert frame.loc[2, "central_loss"] == 1.5
    assert frame.loc[2, "central_loss_metric"] == 9.0
    assert math.isnan(frame.loc[0, "evaluate_loss"])
    for column in ("central_accuracy", "central_loss_metric", "evaluate_loss", "fit_train_loss"):
        source, name = column.split("_", 1)
        got = [(r, v) for r, v in frame[column].items() if not math.isnan(v)]
        want = [(r, v) for r, v in history().metric(name, source) if not math.isnan(v)]  # type: ignore[arg-type]
        assert got == want


def test_to_pandas_of_an_empty_history_is_an_empty_table() -> None:
    frame = covey.History().to_pandas()
    assert frame.empty
    assert frame.index.name == "round"
    assert list(frame.columns) == []


def test_to_pandas_without_pandas_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "covey.core._historytable", raising=False)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'covey\[analytics\]'") as info:
        history().to_pandas()
    assert isinstance(info.value, ImportError)


class Learner(covey.Client):
    """Gets better every round it trains, up to round 2; worse after."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        step = 1.0 if config["round"] <= 2 else -1.0
        return FitResult(weights={"w": weights["w"] + step}, num_examples=10)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=-float(weights["w"][0]), num_examples=10, metrics={})


def test_a_simulations_best_round_reads_from_its_history_and_table() -> None:
    result = covey.simulate(
        lambda cid: Learner(),
        2,
        4,
        covey.FedAvg(),
        {"w": np.zeros(1)},
        evaluate_fn=lambda rnd, w: (-float(w["w"][0]), {"score": float(w["w"][0])}),
    )
    assert result.history.best_round("score") == (2, 2.0)
    assert result.history.best_round("loss", mode="min", source="evaluate") == (2, -2.0)
    frame = result.history.to_pandas()
    assert frame["central_score"].idxmax() == 2


def test_to_pandas_with_costs_adds_participation_bytes_and_stage_times() -> None:
    result = covey.simulate(
        lambda cid: Learner(),
        3,
        2,
        covey.FedAvg(),
        {"w": np.zeros(4, dtype=np.float32)},
        evaluate_fn=lambda rnd, w: (-float(w["w"][0]), {"score": float(w["w"][0])}),
    )
    plain = result.history.to_pandas()
    frame = result.history.to_pandas(costs=True)
    assert list(frame.columns[: len(plain.columns)]) == list(plain.columns)
    costs = list(frame.columns[len(plain.columns) :])
    assert costs[:7] == [
        "clients_fit",
        "failures_fit",
        "examples_fit",
        "clients_evaluate",
        "failures_evaluate",
        "bytes_sent",
        "bytes_received",
    ]
    assert "seconds_fit" in costs
    assert "seconds_total" in costs
    assert list(frame["clients_fit"]) == [0.0, 3.0, 3.0]
    assert list(frame["examples_fit"]) == [0.0, 30.0, 30.0]
    for record in result.history.rounds[1:]:
        assert frame.loc[record.round, "bytes_sent"] == record.bytes_sent
        assert frame.loc[record.round, "bytes_received"] == record.bytes_received
        # three clients got the 4-float32 model to train and to evaluate; they returned one
        assert (record.bytes_sent, record.bytes_received) == (2 * 3 * 16, 3 * 16)
    assert frame.loc[0, "bytes_sent"] == frame.loc[0, "bytes_received"] == 0.0  # evaluation only


def test_to_pandas_with_costs_of_a_hand_made_history_fills_what_is_missing_with_nan() -> None:
    h = covey.History(
        [
            RoundRecord(1, fit_participants=[0, 1], fit_examples=20, durations={"fit": 0.5}),
            RoundRecord(2, bytes_sent=10, bytes_received=12, durations={"total": "slow"}),  # type: ignore[dict-item]
        ]
    )
    frame = h.to_pandas(costs=True)
    assert list(frame["clients_fit"]) == [2.0, 0.0]
    assert frame.loc[1, "seconds_fit"] == 0.5
    assert math.isnan(frame.loc[2, "seconds_fit"])
    assert math.isnan(frame.loc[2, "seconds_total"])  # not a number: not made one
    assert frame.loc[2, "bytes_received"] == 12.0
    assert math.isnan(frame.loc[1, "bytes_sent"])
    assert list(covey.History().to_pandas(costs=True).columns) == []


def test_to_pandas_with_costs_takes_a_count_past_a_float_s_range_as_inf() -> None:
    # A history.json may hold any integer: float() of it raised OverflowError.
    h = covey.History([RoundRecord(1, bytes_sent=10**400, bytes_received=12)])
    frame = covey.History.from_dict(h.to_dict()).to_pandas(costs=True)
    assert frame.loc[1, "bytes_sent"] == math.inf
    assert frame.loc[1, "bytes_received"] == 12.0
