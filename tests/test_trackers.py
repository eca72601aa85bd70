"""The tracker callbacks, read back with TensorBoard's and MLflow's own readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core import Failure, RoundRecord
from covey.trackers import round_scalars


class Half(covey.Client):
    """Halves the weights; its training loss and federated accuracy follow them."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        w = weights["w"] / 2
        return covey.FitResult(
            weights={"w": w}, num_examples=1, metrics={"train_loss": float(w.sum())}
        )

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        loss = float(np.abs(weights["w"]).sum())
        return covey.EvaluateResult(loss=loss, num_examples=1, metrics={"accuracy": 1 / (1 + loss)})


def _run(on_round: Any, rounds: int = 4) -> covey.History:
    def central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
        loss = float(np.abs(weights["w"]).sum())
        return loss, {"accuracy": 1 / (1 + loss)}

    return covey.simulate(
        lambda cid: Half(),
        num_clients=3,
        rounds=rounds,
        strategy=covey.FedAvg(),
        initial_weights={"w": np.ones(3)},
        evaluate_fn=central,
        on_round=on_round,
    ).history


def _expected(history: covey.History) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for record in history.rounds:
        for tag, value in round_scalars(record).items():
            out.setdefault(tag, []).append((record.round, value))
    return out


def test_round_scalars_flatten_every_number() -> None:
    record = RoundRecord(
        round=2,
        fit_participants=[0, 1, 2],
        fit_failures=[Failure(cid=3, stage="fit", error="boom")],
        fit_metrics={"train_loss": 0.5, "note": "text", "flag": True},
        evaluate_loss=0.75,
        evaluate_metrics={"accuracy": 0.8},
        central_loss=float("nan"),
        central_metrics={"accuracy": 0.9},
        durations={"fit": 1.5},
        bytes_sent=4000,
        bytes_received=1000,
    )
    record.privacy = {"epsilon": 1.25, "delta": 1e-5, "accountant": "rdp"}
    assert round_scalars(record) == {
        "central/accuracy": 0.9,
        "federated/loss": 0.75,
        "federated/accuracy": 0.8,
        "fit/train_loss": 0.5,
        "clients/fit": 3.0,
        "clients/evaluate": 0.0,
        "clients/failures": 1.0,
        "time/fit": 1.5,
        "bytes/sent": 4000.0,
        "bytes/received": 1000.0,
        "privacy/epsilon": 1.25,
        "privacy/delta": 1e-5,
    }


def test_a_list_of_round_callbacks_calls_each_in_order() -> None:
    seen: list[tuple[str, int]] = []
    history = _run(
        [lambda r: seen.append(("a", r.round)), lambda r: seen.append(("b", r.round))], rounds=2
    )
    assert [r.round for r in history.rounds] == [0, 1, 2]
    assert seen == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


@pytest.mark.parametrize(
    ("on_round", "said"),
    [
        ("tb", r"on_round must be a function of the round's record .* got str"),
        ([print, "tb"], r"on_round\[1\] must be a function of the round's record, got str"),
        (lambda: None, r"covey calls on_round\(record\) .* but on_round <lambda>\(\) cannot"),
        ([print, lambda a, b: None], r"but on_round\[1\] <lambda>\(a, b\) cannot be called so"),
    ],
)
def test_a_round_callback_that_is_no_function_is_refused_before_a_client_runs(
    on_round: Any, said: str
) -> None:
    # Before, the first round trained and then failed with "'str' object is not callable",
    # or, of the wrong signature, "<lambda>() takes 0 positional arguments but 1 was given".
    from covey.deploy import serve

    built: list[int] = []

    def client_fn(cid: int) -> Half:
        built.append(cid)
        return Half()

    with pytest.raises(TypeError, match=said):
        covey.simulate(client_fn, 3, 2, covey.FedAvg(), {"w": np.ones(3)}, on_round=on_round)
    assert built == []
    listened: list[int] = []
    with pytest.raises(TypeError, match=said):
        serve(covey.FedAvg(), 1, {"w": np.ones(3)}, "127.0.0.1:0", insecure=True,
              on_round=on_round, on_listen=listened.append)  # fmt: skip
    assert listened == []


def test_a_round_callback_that_raises_is_named_with_the_round() -> None:
    def log_round(record: RoundRecord) -> None:
        if record.round == 1:
            raise KeyError("accuracy")

    with pytest.raises(KeyError) as caught:
        _run([print, log_round], rounds=2)
    assert caught.value.__notes__ == [
        "raised by on_round[1] test_a_round_callback_that_raises_is_named_with_the_round."
        "<locals>.log_round in round 1"
    ]
    with pytest.raises(KeyError) as caught:
        _run(log_round, rounds=2)
    assert caught.value.__notes__[-1].startswith("raised by on_round test_a_round_callback")


def test_tensorboard_event_files_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is needed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from covey.trackers import TensorBoardLogger

    with TensorBoardLogger(tmp_path / "tb", prefix="demo/") as log:
        history = _run(log)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    expected = _expected(history)
    assert set(events.Tags()["scalars"]) == {f"demo/{tag}" for tag in expected}
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(f"demo/{tag}")]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        # Event files store 32-bit floats.
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert [v for _, v in expected["central/loss"]] == [3.0, 1.5, 0.75, 0.375, 0.1875]


def test_mlflow_file_store_reads_back(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from mlflow.tracking import MlflowClient

    from covey.trackers import MLflowLogger

    store = tmp_path / "mlruns"
    with MLflowLogger(
        store, experiment="digits", run_name="fedavg", params={"strategy": "FedAvg", "clients": 3}
    ) as log:
        history = _run(log)
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    run = client.get_run(log.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "fedavg"
    assert run.data.params == {"strategy": "FedAvg", "clients": "3"}
    assert client.get_experiment(run.info.experiment_id).name == "digits"
    for tag, points in _expected(history).items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(log.run_id, tag))
        assert got == points, tag


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_logger_given_to_a_second_run_refuses_it_before_mixing_their_rounds(
    tmp_path: Path, tracker: str
) -> None:
    """A notebook cell run again with the logger of an earlier cell.

    The second run's rounds 0..2 went into the first run's event file or MLflow
    run at the same steps: two runs' curves mixed into one, with no error.
    """
    pytest.importorskip(tracker, reason=f"the {tracker} extra is needed")
    from covey.trackers import MLflowLogger, TensorBoardLogger

    log: Any = (
        TensorBoardLogger(tmp_path / "tb")
        if tracker == "tensorboard"
        else MLflowLogger(tmp_path / "mlruns", experiment="cells")
    )
    with log:
        _run(log, rounds=2)
        log(_run(None, rounds=2)[2])  # its last round again (a resume gives it): taken
        with pytest.raises(ValueError, match="round 0 after round 2, which it logged already"):
            _run(log, rounds=2)


def test_mlflow_run_resumes_with_a_param_mlflow_cut_to_its_limit(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from covey.trackers import MLflowLogger

    store = tmp_path / "mlruns"
    params = {"clients": 100, "client_fn": "x" * 7000}  # MLflow keeps 6000 characters
    with MLflowLogger(store, experiment="e", params=params) as first:
        pass
    with MLflowLogger(store, experiment="e", run_id=first.run_id, params=params) as again:
        assert again.run_id == first.run_id
    changed = {**params, "client_fn": "y" * 7000}
    with pytest.raises(ValueError, match="MLflow keeps a run's params"):
        MLflowLogger(store, experiment="e", run_id=first.run_id, params=changed)


def test_a_resumed_mlflow_run_logs_no_point_it_already_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resumed run calls its callbacks again with the round whose callbacks had not
    # all returned: MLflow kept both points of that round (TensorBoard shows one).
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from mlflow.tracking import MlflowClient

    from covey.trackers import MLflowLogger

    store = tmp_path / "mlruns"
    nan = float("nan")
    with MLflowLogger(store) as first:
        first(RoundRecord(round=1, central_loss=0.5))
        first(RoundRecord(round=2, central_loss=0.25, central_metrics={"acc": nan, "f1": 0.5}))
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    reads: list[str] = []
    history = MlflowClient.get_metric_history

    def counted(self: Any, run_id: str, key: str) -> Any:
        reads.append(key)
        return history(self, run_id, key)

    monkeypatch.setattr(MlflowClient, "get_metric_history", counted)
    with MLflowLogger(store, run_id=first.run_id) as again:
        again(RoundRecord(round=2, central_loss=0.25, central_metrics={"acc": nan, "f1": 0.5}))
        again(RoundRecord(round=3, central_loss=0.125, central_metrics={"acc": 0.75}))
        again(RoundRecord(round=3, central_loss=0.1))  # round 3 run again: its new value
    assert len(reads) == len(set(reads))  # each metric's history is read once
    assert {"central/acc", "central/f1", "central/loss"} <= set(reads)
    monkeypatch.undo()

    def points(tag: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, tag))

    assert points("central/loss") == [(1, 0.5), (2, 0.25), (3, 0.1), (3, 0.125)]
    assert points("central/f1") == [(2, 0.5)]
    acc = points("central/acc")
    assert [step for step, _ in acc] == [2, 3]
    assert np.isnan(acc[0][1])
    # A round of the stopped run run again with other values is logged: MLflow shows it.
    with MLflowLogger(store, run_id=first.run_id) as third:
        third(RoundRecord(round=1, central_loss=0.4))
    assert points("central/loss")[:2] == [(1, 0.4), (1, 0.5)]


def test_mlflow_run_marked_failed_when_the_federation_fails(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from mlflow.tracking import MlflowClient

    from covey.trackers import MLflowLogger

    store = tmp_path / "mlruns"
    log = MLflowLogger(store)

    def failing_run() -> None:
        with log:
            log(RoundRecord(round=0, central_loss=1.0))
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        failing_run()
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    assert client.get_run(log.run_id).info.status == "FAILED"
    assert [m.value for m in client.get_metric_history(log.run_id, "central/loss")] == [1.0]


def _diverged(rnd: int) -> RoundRecord:
    return RoundRecord(
        round=rnd,
        fit_participants=[0],
        fit_metrics={"train_loss": float("inf")},
        evaluate_loss=float("-inf"),
        central_loss=float("nan"),
        central_metrics={"accuracy": 0.5},
    )


def test_round_scalars_keep_nan_and_infinities_when_asked() -> None:
    scalars = round_scalars(_diverged(1), nonfinite=True)
    assert np.isnan(scalars.pop("central/loss"))
    assert scalars["fit/train_loss"] == float("inf")
    assert scalars["federated/loss"] == float("-inf")
    assert scalars["central/accuracy"] == 0.5
    assert "central/loss" not in round_scalars(_diverged(1))  # left out by default


def test_round_scalars_take_an_int_metric_too_large_for_a_float() -> None:
    # evaluate_fn may return one (history.json keeps it, History.metric reads it as inf);
    # math.isfinite(10**400) raised OverflowError, stopping the run in its tracker
    def central(round: int, weights: Any) -> tuple[float, dict[str, Any]]:
        return 0.5, {"count": 10**400, "neg": -(10**400), "ok": 2**70}

    seen: list[dict[str, float]] = []
    history = covey.simulate(
        lambda cid: Half(),
        num_clients=2,
        rounds=1,
        strategy=None,
        initial_weights={"w": np.ones(2)},
        evaluate_fn=central,
        on_round=lambda record: seen.append(round_scalars(record, nonfinite=True)),
    ).history
    assert history.metric("count")[-1] == (1, float("inf"))
    assert [s["central/count"] for s in seen] == [float("inf")] * 2
    assert [s["central/neg"] for s in seen] == [float("-inf")] * 2
    assert seen[-1]["central/ok"] == float(2**70)
    assert "central/count" not in round_scalars(history.rounds[-1])  # left out by default


def test_tensorboard_logs_nan_and_infinities(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is needed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from covey.trackers import TensorBoardLogger

    with TensorBoardLogger(tmp_path / "tb") as log:
        log(_diverged(1))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert np.isnan(events.Scalars("central/loss")[0].value)
    assert events.Scalars("fit/train_loss")[0].value == float("inf")
    assert events.Scalars("federated/loss")[0].value == float("-inf")
    assert events.Scalars("central/accuracy")[0].value == 0.5


def test_mlflow_logs_nan_and_infinities(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from mlflow.tracking import MlflowClient

    from covey.trackers import MLflowLogger

    store = tmp_path / "mlruns"
    with MLflowLogger(store) as log:
        log(_diverged(1))
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    values = {
        tag: [m.value for m in client.get_metric_history(log.run_id, tag)]
        for tag in ("central/loss", "fit/train_loss", "federated/loss", "central/accuracy")
    }
    assert np.isnan(values["central/loss"][0])
    assert values["fit/train_loss"] == [float("inf")]
    assert values["federated/loss"] == [float("-inf")]
    assert values["central/accuracy"] == [0.5]


def test_mlflow_store_refusing_nan_warns_once_per_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    import math

    from mlflow.exceptions import MlflowException

    from covey.trackers import MLflowLogger

    with MLflowLogger(tmp_path / "mlruns") as log:
        logged: list[list[Any]] = []

        def log_batch(run_id: str, metrics: Any = (), **kwargs: Any) -> None:
            if any(not math.isfinite(m.value) for m in metrics):
                raise MlflowException("Got invalid value nan for metric")
            logged.append(list(metrics))

        monkeypatch.setattr(log.client, "log_batch", log_batch)
        with caplog.at_level("WARNING", logger="covey"):
            log(_diverged(1))
            log(_diverged(2))
    # Each round's finite values are logged all the same.
    assert len(logged) == 2
    for batch in logged:
        keys = {m.key for m in batch}
        assert "central/accuracy" in keys
        assert keys.isdisjoint({"central/loss", "federated/loss", "fit/train_loss"})
    warned = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(warned) == 3  # one for each metric, at its first round only
    assert any("central/loss = nan of round 1" in text for text in warned)
    assert not any("of round 2" in text for text in warned)
