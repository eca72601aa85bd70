"""Metric and param names a tracker must log without stopping the run or mixing values.

Read back with TensorBoard's ``EventAccumulator`` and MLflow's ``MlflowClient``
over local folders.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from covey.core import RoundRecord
from covey.trackers import round_scalars


def test_a_name_utf8_cannot_write_is_escaped_and_kept_apart() -> None:
    record = RoundRecord(round=1, fit_metrics={"x\udcff": 1.0, "x\\udcff": 2.0, "ok": 3.0})
    scalars = round_scalars(record)
    escaped = [tag for tag in scalars if tag.startswith("fit/x\\udcff-")]
    assert len(escaped) == 1
    assert scalars[escaped[0]] == 1.0
    assert scalars["fit/x\\udcff"] == 2.0
    assert scalars["fit/ok"] == 3.0
    for tag in scalars:
        tag.encode()  # every tag is text UTF-8 can write
    assert round_scalars(record) == scalars  # the same tags every round


def test_tensorboard_logs_a_client_metric_name_utf8_cannot_write(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is needed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from covey.trackers import TensorBoardLogger

    with TensorBoardLogger(tmp_path) as log:
        for rnd in (1, 2):
            log(RoundRecord(round=rnd, central_loss=1.0 / rnd, fit_metrics={"x\udcff": rnd}))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("central/loss")] == [(1, 1.0), (2, 0.5)]
    (escaped,) = [tag for tag in events.Tags()["scalars"] if tag.startswith("fit/")]
    assert escaped.startswith("fit/x\\udcff-")
    assert [(e.step, e.value) for e in events.Scalars(escaped)] == [(1, 1.0), (2, 2.0)]


def test_tensorboard_refuses_a_prefix_utf8_cannot_write(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is needed")
    from covey.trackers import TensorBoardLogger

    with pytest.raises(ValueError, match=r"prefix 'a\\udcff/' holds '\\udcff'"):
        TensorBoardLogger(tmp_path, prefix="a\udcff/")


def test_a_metric_named_loss_never_overwrites_the_rounds_loss() -> None:
    record = RoundRecord(
        round=1,
        central_loss=0.5,
        central_metrics={"loss": 9.0, "loss_metric": 8.0},
        evaluate_loss=0.25,
        evaluate_metrics={"loss": 7.0},
        fit_metrics={"loss": 6.0},
    )
    scalars = round_scalars(record)
    assert scalars["central/loss"] == 0.5
    assert scalars["federated/loss"] == 0.25
    assert scalars["central/loss_metric"] == 9.0
    assert scalars["central/loss_metric_metric"] == 8.0
    assert scalars["federated/loss_metric"] == 7.0
    assert scalars["fit/loss_metric"] == 6.0
    # A metric named loss without the round's loss still does not take its tag.
    alone = round_scalars(RoundRecord(round=1, central_metrics={"loss": 9.0}))
    assert "central/loss" not in alone
    assert alone["central/loss_metric"] == 9.0


def test_trackers_keep_the_rounds_loss_beside_a_metric_named_loss(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is needed")
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from covey.trackers import MLflowLogger, TensorBoardLogger

    with TensorBoardLogger(tmp_path / "tb") as tb, MLflowLogger(tmp_path / "ml") as ml:
        for rnd in (1, 2):
            record = RoundRecord(
                round=rnd,
                central_loss=1.0 / rnd,
                central_metrics={"loss": 10.0 * rnd},
                evaluate_loss=2.0 / rnd,
                evaluate_metrics={"loss": 20.0 * rnd},
            )
            tb(record)
            ml(record)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    history = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in ("central/loss", "federated/loss", "central/loss_metric")
    }
    assert history == {
        "central/loss": [(1, 1.0), (2, 0.5)],
        "federated/loss": [(1, 2.0), (2, 1.0)],
        "central/loss_metric": [(1, 10.0), (2, 20.0)],
    }
    for tag, points in [
        ("central/loss", [(1, 1.0), (2, 0.5)]),
        ("federated/loss", [(1, 2.0), (2, 1.0)]),
        ("central/loss_metric", [(1, 10.0), (2, 20.0)]),
        ("federated/loss_metric", [(1, 20.0), (2, 40.0)]),
    ]:
        got = sorted((m.step, m.value) for m in ml.client.get_metric_history(ml.run_id, tag))
        assert got == points, tag
