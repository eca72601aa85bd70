"""A resume given only some of its run's tracker flags, or other values, says so.

A resume given none warned; one given ``--tensorboard`` alone of the run's
``--tensorboard`` and ``--mlflow`` went on without MLflow, unsaid, and one given
another folder or store logged the rest of the run apart from its start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from covey.core import RoundRecord


def _start(run: Path, resuming: bool, **given: str) -> None:
    from covey.deploy._cli_trackers import open_trackers

    flags = {"trackers": given, "tracker_flags": given, "run": run, "resuming": resuming}
    with open_trackers(flags) as trackers:
        trackers(RoundRecord(round=1, central_loss=0.5))


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [" ".join(r.getMessage().split()) for r in caplog.records if r.name == "covey"]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    pytest.importorskip("tensorboard", reason="the tensorboard extra is needed")
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    _start(folder, False, tensorboard="tb", mlflow="ml runs", mlflow_experiment="my exp")
    return folder


def test_a_resume_given_some_of_the_tracker_flags_names_those_left_out(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="covey"):
        _start(run, True, tensorboard="tb")
    ml = tmp_path / "ml runs"
    latest = f"--tensorboard {tmp_path / 'tb'} --mlflow '{ml}' --mlflow-experiment 'my exp'"
    assert _said(caplog) == [
        f"resuming {run} without --mlflow '{ml}' --mlflow-experiment 'my exp', which its "
        f"latest start was given ({latest}): this start does not log there; give them "
        "again to go on logging where the run did"
    ]


def test_a_resume_given_all_the_tracker_flags_says_nothing(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="covey"):
        # the same folders, named from the run's folder: the same trackers
        _start(
            run,
            True,
            tensorboard=str(tmp_path / "tb"),
            mlflow="file:ml runs",
            mlflow_experiment="my exp",
        )
    assert _said(caplog) == []


def test_a_resume_given_another_tracker_folder_or_store_says_where_it_logs(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="covey"):
        _start(run, True, tensorboard="tb2", mlflow="ml2", mlflow_experiment="other")
    said = _said(caplog)
    assert said == [
        f"resuming {run} with --tensorboard tb2, where its latest start had --tensorboard "
        f"{tmp_path / 'tb'}: this start logs its rounds to that folder, apart from the "
        "earlier rounds",
        f"resuming {run} with --mlflow ml2, where its latest start had --mlflow "
        f"'{tmp_path / 'ml runs'}': this start logs its rounds to a new MLflow run in that "
        "store, apart from the earlier rounds",
        f"resuming {run} with --mlflow-experiment other, where its latest start had "
        "--mlflow-experiment 'my exp': this start logs its rounds to a new MLflow run in "
        "that experiment, apart from the earlier rounds",
    ]


def test_a_resume_changing_the_default_mlflow_experiment_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    _start(run, False, mlflow="ml")  # the experiment by default: covey
    with caplog.at_level(logging.WARNING, logger="covey"):
        _start(run, True, mlflow="ml")
    assert _said(caplog) == []
    with caplog.at_level(logging.WARNING, logger="covey"):
        _start(run, True, mlflow="ml", mlflow_experiment="x")
    assert _said(caplog) == [
        f"resuming {run} with --mlflow-experiment x, where its latest start had "
        "--mlflow-experiment covey: this start logs its rounds to a new MLflow run in that "
        "experiment, apart from the earlier rounds"
    ]
