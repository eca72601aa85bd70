"""How a history names what it holds: Flower's attribute names, and metrics named like a loss."""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import EvaluateResult, FitResult
from covey.cli._rounds import metric_columns
from covey.core import RoundRecord

GUIDE = Path(__file__).parent.parent / "docs" / "migrating-from-flower.md"


def guide_history_rows() -> dict[str, str]:
    """Flower's ``History`` attributes and covey's ways, as the migration guide's table has them."""
    rows: dict[str, str] = {}
    for line in GUIDE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `History."):
            continue
        flower, covey_side = line.split("|")[1:3]
        names = re.findall(r"`(?:History\.)?(\w+)`", flower)
        ways = re.findall(r"`([^`]+)`", covey_side)
        assert len(names) == len(ways), line
        rows.update(zip(names, ways, strict=True))
    return rows


FLOWER = [
    "losses_centralized",
    "losses_distributed",
    "metrics_centralized",
    "metrics_distributed",
    "metrics_distributed_fit",
]


def flower_s_history() -> covey.History:
    """A round with a loss and an accuracy from each source (the fit one being a metric)."""
    return covey.History(
        [
            RoundRecord(
                1,
                central_loss=1.0,
                central_metrics={"accuracy": 0.5},
                evaluate_loss=2.0,
                evaluate_metrics={"accuracy": 0.25},
                fit_metrics={"accuracy": 0.75},
            )
        ]
    )


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("losses_centralized", [(1, 1.0)]),
        ("metrics_centralized", [(1, 0.5)]),
        ("losses_distributed", [(1, 2.0)]),
        ("metrics_distributed", [(1, 0.25)]),
        ("metrics_distributed_fit", [(1, 0.75)]),
    ],
)
def test_a_flower_history_attribute_names_covey_s_way_as_the_guide_does(
    name: str, want: list[tuple[int, float]]
) -> None:
    rows = guide_history_rows()
    assert sorted(rows) == FLOWER
    history = flower_s_history()
    way = rows[name]
    with pytest.raises(AttributeError) as info:
        getattr(history, name)
    assert str(info.value) == (
        f"'History' object has no attribute {name!r}; Flower's History.{name} is covey's {way}"
    )
    assert info.value.name == name
    assert hasattr(history, name) is False
    assert getattr(history, name, "default") == "default"
    # the way named reads what Flower's attribute held (name="accuracy" for a metric)
    namespace = {"history": history, "name": "accuracy"}
    assert eval(way, namespace) == want  # noqa: S307 (the guide's code)


def test_only_flower_s_names_get_covey_s_and_a_history_still_copies() -> None:
    history = covey.History([RoundRecord(1, central_loss=0.5)], clients={0: "a"})
    with pytest.raises(AttributeError, match=r"Flower's History\.losses_centralized is covey's"):
        history.losses_centralized  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError, match=r"^'History' object has no attribute 'lossses'$"):
        history.lossses  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(history, "__deepcopy__")
    assert getattr(history, "anything", None) is None
    for twin in (
        copy.copy(history),
        copy.deepcopy(history),
        pickle.loads(pickle.dumps(history)),  # noqa: S301
        dataclasses.replace(history),
    ):
        assert twin == history
    assert dataclasses.asdict(history)["clients"] == {0: "a"}


def named_like_a_loss() -> covey.History:
    return covey.History(
        [
            RoundRecord(
                1,
                central_loss=0.5,
                central_metrics={"loss": 0.25, "loss_metric": 0.125, "accuracy": 0.75},
                evaluate_loss=2.0,
                evaluate_metrics={"loss": 1.5},
                fit_metrics={"loss": 3.0},
            ),
            RoundRecord(2, central_loss=0.4, central_metrics={"loss": 0.2}),
        ]
    )


def test_a_metric_named_loss_is_read_as_loss_metric_beside_the_round_s_loss() -> None:
    h = named_like_a_loss()
    assert h.metric("loss") == [(1, 0.5), (2, 0.4)]
    assert h.metric("loss_metric") == [(1, 0.25), (2, 0.2)]
    assert h.metric("loss_metric_metric") == [(1, 0.125)]
    assert h.metric("accuracy") == [(1, 0.75)]
    assert h.metric("loss", source="evaluate") == [(1, 2.0)]
    assert h.metric("loss_metric", source="evaluate") == [(1, 1.5)]
    assert h.metric("loss", source="fit") == [(1, 3.0)]  # fit has no loss of its own
    with pytest.raises(ValueError, match=r"'loss_metric' from source='fit'.*\['loss'\]"):
        h.metric("loss_metric", source="fit")
    assert h.best_round("loss_metric", mode="min") == (2, 0.2)
    assert "'central': ['accuracy', 'loss', 'loss_metric', 'loss_metric_metric']" in repr(h)
    assert covey.History.from_json(h.to_json()).metric("loss_metric") == h.metric("loss_metric")


def test_best_round_of_a_neg_metric_is_its_highest() -> None:
    # scikit-learn's neg_log_loss is higher for a better model; its word "loss" made
    # best_round pick its lowest value, the worst round.
    h = covey.History(
        [
            RoundRecord(1, central_metrics={"neg_log_loss": -0.9, "val_loss": 0.9}),
            RoundRecord(2, central_metrics={"neg_log_loss": -0.3, "val_loss": 0.3}),
            RoundRecord(3, central_metrics={"neg_log_loss": -0.5, "val_loss": 0.5}),
        ]
    )
    assert h.best_round("neg_log_loss") == (2, -0.3)
    assert h.best_round("val_loss") == (2, 0.3)  # a loss still: its lowest
    assert h.best_round("neg_log_loss", mode="min") == (1, -0.9)


def test_best_round_of_a_regressors_error_is_its_lowest() -> None:
    # SklearnClient reports a regressor's "mae" (beside "r2"); best_round took it for a
    # score, higher being better, and gave the round of the worst model.
    h = covey.History(
        [
            RoundRecord(r, central_metrics={"mae": m, "val_rmse": m, "r2": 1 - m})
            for r, m in ((1, 0.9), (2, 0.3), (3, 0.5))
        ]
    )
    assert h.best_round("mae") == (2, 0.3)
    assert h.best_round("val_rmse") == (2, 0.3)
    assert h.best_round("r2") == (2, 0.7)


def test_to_pandas_and_the_rounds_table_show_a_metric_named_loss() -> None:
    h = named_like_a_loss()
    frame = h.to_pandas()
    assert list(frame.columns) == [
        "central_loss",
        "central_loss_metric",
        "central_loss_metric_metric",
        "central_accuracy",
        "evaluate_loss",
        "evaluate_loss_metric",
        "fit_loss",
    ]
    assert frame.loc[1, "central_loss_metric"] == 0.25
    assert frame.loc[2, "central_loss"] == 0.4
    columns, left = metric_columns(h)
    assert ("central", "loss_metric") in columns
    assert ("evaluate", "loss_metric") in columns
    assert left == []


class Loss(covey.Client):
    """Evaluates to a loss of 1 and a metric named ``loss`` of 0.5."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights=dict(weights), num_examples=10)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=1.0, num_examples=10, metrics={"loss": 0.5})


def test_a_run_says_once_how_to_read_metrics_named_loss(caplog: pytest.LogCaptureFixture) -> None:
    def evaluate_fn(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        return 2.0, {"loss": 0.25}

    with caplog.at_level(logging.WARNING, logger="covey"):
        result = covey.simulate(
            lambda cid: Loss(), 2, 2, covey.FedAvg(), {"w": np.zeros(2)}, evaluate_fn=evaluate_fn
        )
    history = result.history
    assert history.metric("loss") == [(0, 2.0), (1, 2.0), (2, 2.0)]
    assert history.metric("loss_metric") == [(0, 0.25), (1, 0.25), (2, 0.25)]
    assert history.metric("loss_metric", source="evaluate") == [(1, 0.5), (2, 0.5)]
    said = [r.getMessage() for r in caplog.records if "named 'loss'" in r.getMessage()]
    assert said == [
        "round 0: evaluate_fn's metrics hold one named 'loss', read as "
        'history.metric("loss_metric") (the trackers log it as central/loss_metric): '
        'history.metric("loss") reads the round\'s loss',
        "round 1: the evaluate metrics hold one named 'loss', read as "
        'history.metric("loss_metric", source="evaluate") (the trackers log it as '
        'federated/loss_metric): history.metric("loss", source="evaluate") reads the '
        "round's loss",
    ]


def test_best_round_of_an_error_named_in_words_is_its_lowest() -> None:
    # scikit-learn's names (mean_squared_error, mean_absolute_error) and an error rate
    # were taken for scores, higher being better: the round of the worst model
    names = ("mean_squared_error", "mean_absolute_error", "error_rate", "val_error")
    h = covey.History(
        [
            RoundRecord(r, central_metrics={**dict.fromkeys(names, m), "accuracy": 1 - m})
            for r, m in ((1, 0.9), (2, 0.3), (3, 0.5))
        ]
    )
    for name in names:
        assert h.best_round(name) == (2, 0.3), name
    assert h.best_round("accuracy") == (2, 0.7)


def test_a_regressors_mse_asked_by_name_points_to_its_loss() -> None:
    # SklearnClient reports a regressor's mean squared error as its loss, beside "mae"
    # and "r2": best_round("mse") said "did you mean 'mae'?", another metric.
    h = covey.History(
        [
            RoundRecord(r, evaluate_loss=m, evaluate_metrics={"mae": m, "r2": 1 - m})
            for r, m in ((1, 0.9), (2, 0.3))
        ]
    )
    with pytest.raises(ValueError, match=r"a regressor's mean squared error is its 'loss'$"):
        h.best_round("mse", source="evaluate")
    assert h.best_round("loss", source="evaluate") == (2, 0.3)
