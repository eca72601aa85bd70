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


TRICKY = [
    "acc",
    "acc/top5",
    "acc/top5/x",
    "",
    "/",
    "//",
    "_",
    ".",
    "..",
    "../up",
    "..x",
    "top/",
    "recall@5",
    "recall_5",
    "recall-5",
    "recall_5-cf682a9a",
    "ä" * 200,
    "ä" * 200 + "b",
    "x" * 300,
    "x" * 300 + "y",
    "x\udcff",
    "loss",
]


def test_mlflow_names_are_valid_distinct_and_never_a_folder_of_another() -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    from covey.trackers._mlflow import mlflow_name

    for group in (True, False):
        given = [f"central/{name}" for name in TRICKY] if group else TRICKY
        stored = [mlflow_name(name, group=group) for name in given]
        assert len(set(stored)) == len(given)  # distinct names stay distinct
        assert stored == [mlflow_name(name, group=group) for name in given]  # and stable
        for name in stored:
            (_validate_metric_name if group else _validate_param_name)(name)
            assert len(name) <= 250, name
            assert all(len(part.encode()) <= 255 for part in name.split("/")), name
            # A local store keeps a name as a file: none may be another's folder.
            assert not any(other.startswith(name + "/") for other in stored), name


def test_mlflow_file_store_logs_names_that_meet_as_paths_or_are_too_long(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from mlflow.tracking import MlflowClient

    from covey.trackers import MLflowLogger

    metrics = {name: float(k) for k, name in enumerate(TRICKY)}
    params = {"a": 1, "a/b": 2, "ä" * 200: 3, "": 4, "/": 5}
    with MLflowLogger(tmp_path, params=params) as ml:
        for rnd in (1, 2):
            ml(RoundRecord(round=rnd, central_loss=0.5 / rnd, central_metrics=dict(metrics)))
    client = MlflowClient(tracking_uri=tmp_path.resolve().as_uri())
    run = client.get_run(ml.run_id)
    assert run.info.status == "FINISHED"
    assert sorted(run.data.params.values()) == ["1", "2", "3", "4", "5"]
    assert [m.value for m in client.get_metric_history(ml.run_id, "central/loss")] == [0.5, 0.25]
    series = {
        tuple((m.step, m.value) for m in client.get_metric_history(ml.run_id, name))
        for name in run.data.metrics
        if name.startswith("central/") and name != "central/loss"
    }
    # "loss" is logged as central/loss_metric; every metric keeps its own series.
    assert series == {((1, value), (2, value)) for value in metrics.values()}
    assert "central/acc" in run.data.metrics  # a name MLflow keeps stays as it is


def test_a_resumed_mlflow_run_logs_each_metric_under_its_first_name(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from mlflow.tracking import MlflowClient

    from covey.trackers import MLflowLogger

    with MLflowLogger(tmp_path, params={"lr@client": 0.1}) as first:
        first(RoundRecord(round=1, central_metrics={"recall@5": 0.1}))
        first(RoundRecord(round=2, central_metrics={"recall@5": 0.2, "recall_5": 0.9}))
    # Resumed in a new logger (as in a new process): recall_5 is logged first now.
    with MLflowLogger(tmp_path, params={"lr@client": 0.1}, run_id=first.run_id) as again:
        again(RoundRecord(round=3, central_metrics={"recall_5": 0.8, "recall@5": 0.3}))
    client = MlflowClient(tracking_uri=tmp_path.resolve().as_uri())
    run = client.get_run(first.run_id)
    assert len(run.data.params) == 1
    values = {
        tuple((m.step, m.value) for m in client.get_metric_history(first.run_id, name))
        for name in run.data.metrics
        if name.startswith("central/")
    }
    assert values == {((1, 0.1), (2, 0.2), (3, 0.3)), ((2, 0.9), (3, 0.8))}


def test_mlflow_names_that_differ_only_in_case_are_kept_apart() -> None:
    # A local store keeps each name as a file: macOS and Windows took Acc and acc for one.
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from covey.trackers._mlflow import folded, mlflow_name, mlflow_names

    given = ["central/acc", "central/Acc", "central/ACC", "central/Straße", "central/x"]
    stored = mlflow_names(given)
    assert stored["central/acc"] == "central/acc"  # the first keeps its name
    assert stored["central/x"] == "central/x"
    assert stored["central/Acc"] == mlflow_name("central/Acc", apart=True)
    assert stored["central/Acc"].startswith("central/Acc-")
    assert stored["central/ACC"].startswith("central/ACC-")
    assert len({folded(name) for name in stored.values()}) == len(given)
    assert mlflow_names(given) == stored  # the same in every process
    params = mlflow_names(["LR", "lr", "lr@x", "LR@x"], group=False)
    assert params["LR"] == "LR"
    assert len({folded(name) for name in params.values()}) == 4
    # Resumed: the names the run holds keep their metric, whichever is logged first now.
    held = set(stored.values())
    assert mlflow_names(["central/Acc", "central/acc"], held=held) == {
        "central/Acc": stored["central/Acc"],
        "central/acc": "central/acc",
    }


def test_mlflow_logs_metrics_of_another_case_apart_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    import logging

    from mlflow.tracking import MlflowClient

    from covey.trackers import MLflowLogger

    with caplog.at_level(logging.WARNING, logger="covey"):
        with MLflowLogger(tmp_path) as first:
            first(RoundRecord(round=1, central_metrics={"acc": 0.1, "Acc": 0.5, "ACC": 0.7}))
            first(RoundRecord(round=2, central_metrics={"acc": 0.2, "Acc": 0.6}))
        with MLflowLogger(tmp_path, run_id=first.run_id) as again:  # resumed, Acc first
            again(RoundRecord(round=3, central_metrics={"Acc": 0.65, "acc": 0.3}))
    said = [r.getMessage() for r in caplog.records if "case-insensitive" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith("MLflow: 'central/Acc' is logged as 'central/Acc-")
    assert "'central/acc' as one file" in said[0]
    client = MlflowClient(tracking_uri=tmp_path.resolve().as_uri())
    names = sorted(n for n in client.get_run(first.run_id).data.metrics if n.startswith("central"))
    assert len(names) == 3
    assert len({name.casefold() for name in names}) == 3
    values = {
        tuple((m.step, m.value) for m in client.get_metric_history(first.run_id, name))
        for name in names
    }
    assert values == {((1, 0.1), (2, 0.2), (3, 0.3)), ((1, 0.5), (2, 0.6), (3, 0.65)), ((1, 0.7),)}
