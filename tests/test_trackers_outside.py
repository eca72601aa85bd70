"""The trackers as a user meets them: a resumed deployed run, a missing library, bad input.

What was logged is read back with the libraries' own readers: TensorBoard's
``EventAccumulator`` and MLflow's ``MlflowClient`` over the local file store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core import RoundRecord
from covey.trackers import round_scalars

CLIENT = """
import numpy as np
import covey


class Half(covey.Client):
    def fit(self, weights, config):
        w = weights["w"] / 2
        return covey.FitResult(weights={"w": w}, num_examples=1,
                               metrics={"train_loss": float(w.sum())})

    def evaluate(self, weights, config):
        loss = float(np.abs(weights["w"]).sum())
        return covey.EvaluateResult(loss=loss, num_examples=1, metrics={"accuracy": 1 / (1 + loss)})


def client_fn():
    return Half()
"""


def _central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
    loss = float(np.abs(weights["w"]).sum())
    return loss, {"accuracy": 1 / (1 + loss)}


def _serve(tmp_path: Path, rounds: int, resume: bool, on_round: Any) -> covey.History:
    """Serve ``rounds`` rounds (or resume up to them) for two client processes on 127.0.0.1."""
    from covey.deploy import serve

    clients: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start_clients(port: int) -> None:
        for k in range(2):
            command = [sys.executable, "-m", "covey", "client", "--app", "halfapp:client_fn"]
            command += ["--server", f"127.0.0.1:{port}", "--insecure", "--name", f"site-{k}"]
            clients.append(
                subprocess.Popen(
                    command,
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    strategy = covey.FedAvg(min_fit_clients=2, min_evaluate_clients=2, min_available_clients=2)
    try:
        result = serve(
            strategy,
            rounds,
            {"w": np.ones(3)},
            "127.0.0.1:0",
            evaluate_fn=_central,
            insecure=True,
            run_dir=tmp_path / "run",
            resume=resume,
            wait_timeout=60,
            on_round=on_round,
            on_listen=start_clients,
            plot=False,
        )
    finally:
        for proc in clients:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    return result.history


def _expected(history: covey.History) -> dict[str, list[tuple[int, float]]]:
    """What the trackers must hold: the numbers of every round (timings aside)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in history.rounds:
        for tag, value in round_scalars(record).items():
            if not tag.startswith("time/"):
                out.setdefault(tag, []).append((record.round, value))
    return out


@pytest.mark.slow
def test_a_resumed_deployed_run_is_logged_once_per_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from covey.trackers import MLflowLogger, TensorBoardLogger

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "halfapp.py").write_text(CLIENT)
    tb_dir, store = tmp_path / "tb", tmp_path / "mlruns"

    with (
        TensorBoardLogger(tb_dir) as tb,
        MLflowLogger(store, experiment="half", run_name="study", params={"clients": 2}) as ml,
    ):
        _serve(tmp_path, 2, False, [tb, ml])
    # The server stopped after round 2 (as after a crash): resume it to round 4,
    # logging into the same TensorBoard folder and the same MLflow run.
    with (
        TensorBoardLogger(tb_dir) as tb,
        MLflowLogger(
            store, experiment="half", run_id=ml.run_id, params={"clients": 2, "rounds": 4}
        ) as ml2,
    ):
        history = _serve(tmp_path, 4, True, [tb, ml2])

    assert [r.round for r in history.rounds] == [0, 1, 2, 3, 4]
    expected = _expected(history)
    assert {"central/loss", "federated/accuracy", "fit/train_loss"} <= set(expected)

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    for tag, values in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in values], tag  # each round once
        assert np.allclose([v for _, v in got], [v for _, v in values], rtol=1e-6), tag

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("half")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])  # one MLflow run for one run
    assert run.info.run_id == ml.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params == {"clients": "2", "rounds": "4"}
    for tag, values in expected.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
        assert got == values, tag


def test_mlflow_refuses_a_run_id_it_does_not_hold(tmp_path: Path) -> None:
    from covey.trackers import MLflowLogger

    with pytest.raises(ValueError, match="run_id 'f00d': no such MLflow run in experiment 'x'"):
        MLflowLogger(tmp_path, experiment="x", run_id="f00d")


def test_mlflow_refuses_to_change_a_logged_param(tmp_path: Path) -> None:
    from covey.trackers import MLflowLogger

    with MLflowLogger(tmp_path, params={"lr": 0.1}) as first:
        first(RoundRecord(round=1, central_loss=0.5))
    with pytest.raises(ValueError, match=r"lr is '0.1', not '0.2'"):
        MLflowLogger(tmp_path, params={"lr": 0.2}, run_id=first.run_id)
    with MLflowLogger(tmp_path, params={"lr": 0.1}, run_id=first.run_id) as again:
        again(RoundRecord(round=2, central_loss=0.25))
    assert again.client.get_run(first.run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("name", "library", "extra"),
    [
        ("TensorBoardLogger", "tensorboard", "covey[tensorboard]"),
        ("MLflowLogger", "mlflow", "covey[mlflow]"),
    ],
)
def test_a_missing_tracker_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, name: str, library: str, extra: str
) -> None:
    import covey.trackers

    module = "covey.trackers._tensorboard" if library == "tensorboard" else "covey.trackers._mlflow"
    monkeypatch.delitem(sys.modules, module, raising=False)
    for loaded in [m for m in sys.modules if m == library or m.startswith(library + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, library, None)  # as if it were not installed
    with pytest.raises(ImportError, match=re.escape(f"pip install '{extra}'")):
        getattr(covey.trackers, name)


def test_a_database_store_works_or_says_what_to_install(tmp_path: Path) -> None:
    import importlib.util

    from covey.trackers import MLflowLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if importlib.util.find_spec("sqlalchemy") is not None:  # the full MLflow package
        with MLflowLogger(uri, run_name="db") as log:
            log(RoundRecord(round=1, central_loss=0.5))
        history = log.client.get_metric_history(log.run_id, "central/loss")
        assert [(m.step, m.value) for m in history] == [(1, 0.5)]
        return
    with pytest.raises(
        ValueError, match=re.escape(f"MLflow cannot use the tracking URI {uri!r}")
    ) as info:
        MLflowLogger(uri)
    assert "needs the full MLflow package (pip install mlflow)" in str(info.value)


def test_metric_names_mlflow_refuses_are_logged_not_fatal(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from covey.trackers import MLflowLogger, TensorBoardLogger

    def client_fn(cid: int) -> covey.Client:
        class Scored(covey.Client):
            def fit(self, weights: Any, config: Any) -> covey.FitResult:
                return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

        return Scored()

    def central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
        value = float(weights["w"].sum())
        return value, {"recall@5": value / 2, "f1 (macro)": value / 4, "top/": value, "../up": 1.0}

    with (
        MLflowLogger(tmp_path / "ml", params={"lr (client)": 0.1}) as ml,
        TensorBoardLogger(tmp_path / "tb") as tb,
    ):
        covey.simulate(
            client_fn,
            2,
            2,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.ones(2)},
            central,
            on_round=[tb, ml],
        )
    client = MlflowClient(tracking_uri=(tmp_path / "ml").resolve().as_uri())
    run = client.get_run(ml.run_id)
    assert run.info.status == "FINISHED"
    # A changed name ends with 8 hex digits of a hash of the name: the same in every process.
    assert run.data.params == {"lr _client_-86eb362c": "0.1"}
    history = client.get_metric_history(ml.run_id, "central/recall_5-cf682a9a")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert {
        "central/f1 _macro_-a593c3bd",
        "central/top_-862eb066",
        "central/_._up-ccc71e25",
    } <= set(run.data.metrics)


def test_metrics_mlflow_would_store_as_one_or_refuse_as_too_long_keep_their_values(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    from covey.trackers import MLflowLogger

    long = "per_class/" + "x" * 300

    def central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
        value = float(weights["w"].sum())
        return value, {"recall@5": value, "recall_5": -value, long + "a": 1.0, long + "b": 2.0}

    def client_fn(cid: int) -> covey.Client:
        class Halving(covey.Client):
            def fit(self, weights: Any, config: Any) -> covey.FitResult:
                return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

        return Halving()

    with MLflowLogger(tmp_path / "ml", params={long: 1, "lr@client": 2, "lr_client": 3}) as ml:
        covey.simulate(
            client_fn,
            2,
            2,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.ones(2)},
            central,
            on_round=ml,
        )
    client = MlflowClient(tracking_uri=(tmp_path / "ml").resolve().as_uri())
    run = client.get_run(ml.run_id)
    assert run.info.status == "FINISHED"
    series = {
        name: [(m.step, m.value) for m in client.get_metric_history(ml.run_id, name)]
        for name in run.data.metrics
    }
    assert series["central/recall_5"] == [(0, -2.0), (1, -1.0), (2, -0.5)]
    kept_apart = [v for k, v in series.items() if k.startswith("central/recall_5-")]
    assert kept_apart == [[(0, 2.0), (1, 1.0), (2, 0.5)]]
    cut = sorted(v for k, v in series.items() if k.startswith("central/per_class_"))
    assert cut == [[(0, 1.0), (1, 1.0), (2, 1.0)], [(0, 2.0), (1, 2.0), (2, 2.0)]]
    assert all(len(name) <= 250 for name in series)
    assert sorted(run.data.params.values()) == ["1", "2", "3"]


def test_a_name_mlflow_would_store_as_another_keeps_its_values_apart_across_rounds(
    tmp_path: Path,
) -> None:
    """`recall@5` first, `recall_5` from round 2: each metric's series holds its own values.

    Names were matched round by round, so `central/recall_5` held `recall@5` in
    round 1 and `recall_5` in round 2.
    """
    from mlflow.tracking import MlflowClient

    from covey.trackers import MLflowLogger

    rounds: list[dict[str, Any]] = [
        {"recall@5": 0.1, "recall-5": 0.5},
        {"recall@5": 0.2, "recall_5": 0.9, "recall-5": 0.6},
        {"recall_5": 0.8, "recall@5": 0.3},
    ]
    with MLflowLogger(tmp_path / "ml") as ml:
        for number, metrics in enumerate(rounds, start=1):
            ml(RoundRecord(round=number, central_metrics=dict(metrics)))
    client = MlflowClient(tracking_uri=(tmp_path / "ml").resolve().as_uri())
    values = {
        tuple((m.step, m.value) for m in client.get_metric_history(ml.run_id, name))
        for name in client.get_run(ml.run_id).data.metrics
        if name.startswith("central/")
    }
    assert values == {
        ((1, 0.1), (2, 0.2), (3, 0.3)),
        ((2, 0.9), (3, 0.8)),
        ((1, 0.5), (2, 0.6)),
    }


@pytest.mark.parametrize("name", ["TensorBoardLogger", "MLflowLogger"])
@pytest.mark.parametrize("below", ["", "runs/one"])
def test_a_log_folder_that_is_a_file_is_named(tmp_path: Path, name: str, below: str) -> None:
    import covey.trackers

    blocker = tmp_path / "taken"
    blocker.write_text("")
    target = blocker / below if below else blocker
    logger = getattr(covey.trackers, name)
    with pytest.raises(NotADirectoryError, match=re.escape(f"{name}: cannot write to {target}")):
        logger(target)
    assert blocker.is_file()  # left as it was


def test_a_round_redone_after_a_resume_shows_once_in_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from covey.trackers import TensorBoardLogger

    with TensorBoardLogger(tmp_path) as first:  # logged round 2, then died before saving it
        for rnd in range(3):
            first(RoundRecord(round=rnd, central_loss=1.0 / (rnd + 1)))
    # TensorBoard reads a folder's event files in the order of their names, which start
    # with the second they were opened in, then a per-process counter: two files of one
    # second and one process sort wrongly once the counter passes 9 (9 > 10 as text), as
    # when other tests in this worker opened writers before. A resume comes later.
    opened = int(time.time())
    while int(time.time()) == opened:
        time.sleep(0.02)
    with TensorBoardLogger(tmp_path) as resumed:  # resumed from round 1: round 2 is redone
        for rnd in (2, 3):
            resumed(RoundRecord(round=rnd, central_loss=10.0 + rnd))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("central/loss")]
    assert got == [(0, 1.0), (1, 0.5), (2, 12.0), (3, 13.0)]


def test_mlflow_names_a_deleted_experiment_or_run_and_a_name_it_refuses(tmp_path: Path) -> None:
    from covey.trackers import MLflowLogger

    with MLflowLogger(tmp_path, experiment="gone") as first:
        first(RoundRecord(round=1, central_loss=0.5))
    found = first.client.get_experiment_by_name("gone")
    assert found is not None
    first.client.delete_run(first.run_id)
    with pytest.raises(ValueError, match=r"run_id '\w+': that MLflow run was deleted"):
        MLflowLogger(tmp_path, experiment="gone", run_id=first.run_id)
    first.client.delete_experiment(found.experiment_id)
    with pytest.raises(ValueError, match=r"experiment 'gone' \(id \d+\) is deleted.*restore"):
        MLflowLogger(tmp_path, experiment="gone")
    first.client.restore_experiment(found.experiment_id)
    with MLflowLogger(tmp_path, experiment="gone") as again:
        again(RoundRecord(round=1, central_loss=0.25))
    for name in ("", "e" * 600):
        with pytest.raises(ValueError, match=r"experiment '.*' cannot be created: "):
            MLflowLogger(tmp_path, experiment=name)


def test_a_closed_tracker_refuses_another_round_instead_of_mixing_runs(tmp_path: Path) -> None:
    from covey.trackers import MLflowLogger, TensorBoardLogger

    with MLflowLogger(tmp_path / "ml", run_name="first") as ml:
        ml(RoundRecord(round=1, central_loss=0.5))
    # before: logged into the finished first run, mixed with its rounds
    with pytest.raises(ValueError, match=rf"MLflow run {ml.run_id} is closed.*run_id="):
        ml(RoundRecord(round=1, central_loss=0.25))
    history = ml.client.get_metric_history(ml.run_id, "central/loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]
    with TensorBoardLogger(tmp_path / "tb") as tb:
        tb(RoundRecord(round=1, central_loss=0.5))
    # before: the tensorboard writer's bare "OSError: Writer is closed"
    with pytest.raises(ValueError, match=r"TensorBoardLogger: the event file in .* is closed"):
        tb(RoundRecord(round=1, central_loss=0.25))
    tb.close()  # closing twice is harmless


@pytest.mark.parametrize("name", ["TensorBoardLogger", "MLflowLogger"])
def test_a_log_folder_that_cannot_be_written_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # A folder there already on a read-only mount: before, the tensorboard writer's
    # thread failed with a bare OSError on a bytes path (and printed its traceback),
    # MLflow with one naming its `.trash` folder.
    import errno
    import tempfile

    import covey.trackers

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system")

    folder = tmp_path / "logs"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)  # no file can be made there
    logger = getattr(covey.trackers, name)
    with pytest.raises(OSError, match=f"{name}: cannot write to {folder}: Read-only file system"):
        logger(folder)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("uri", ["foo://bar", "FOO://bar/baz"])
def test_a_tracking_uri_of_an_unknown_scheme_is_refused_naming_what_works(uri: str) -> None:
    # Before: MLflow's own words about its model registry ("Model registry
    # functionality is unavailable; got unsupported URI ... for model registry data
    # storage"), which named neither the problem nor what to give instead.
    from covey.trackers import MLflowLogger

    with pytest.raises(ValueError, match="cannot use the tracking URI") as info:
        MLflowLogger(uri)
    said = str(info.value)
    scheme = uri.split(":", 1)[0].lower()
    assert said.startswith(
        f"MLflow cannot use the tracking URI {uri!r}: this MLflow knows no {scheme!r} store; "
        "give a folder (a local file store), a file: URI, or an http:// or https:// "
        "tracking server"
    ), said
    assert "model registry" not in said


def test_an_unknown_scheme_is_refused_naming_the_schemes_mlflow_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, covey read the schemes from MLflow's private store registry (with a
    # fixed list where a release had none there) and refused a URI before MLflow
    # was asked; now MLflow decides, and its refusal's list of schemes is named.
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    import covey.trackers._mlflow as tracking
    from covey.trackers import MLflowLogger

    def refused(tracking_uri: str) -> Any:
        raise UnsupportedModelRegistryStoreURIException(
            tracking_uri, ["", "file", "http", "https", "acme"]
        )

    monkeypatch.setattr(tracking, "MlflowClient", refused)
    with pytest.raises(ValueError, match="cannot use the tracking URI") as info:
        MLflowLogger("foo://bar")
    assert str(info.value) == (
        "MLflow cannot use the tracking URI 'foo://bar': this MLflow knows no 'foo' store; "
        "give a folder (a local file store), a file: URI, or an http:// or https:// "
        "tracking server, or a acme:// URI"
    )


def test_a_file_uri_of_any_case_is_a_local_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.trackers import MLflowLogger

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    uri = store.resolve().as_uri().replace("file:", "FILE:", 1)
    with MLflowLogger(uri, run_name="upper") as log:
        log(RoundRecord(round=1, central_loss=0.5))
    history = log.client.get_metric_history(log.run_id, "central/loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # kept there, no FILE: folder
