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
