"""A run stopped by Ctrl-C or SIGTERM is shown as interrupted, not failed, and says how to go on.

What is stored stays as older covey wrote it (``failed``, with the reason
``interrupted (SIGINT)``); the status shown is derived from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.core._interrupt import shown_status
from covey.dashboard._runs import read_run, summary
from covey.deploy._server import serve
from covey.server._store import RunStore


class Same(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights=weights, num_examples=1)


def _stopped_simulation(run_dir: Path, stop: BaseException) -> None:
    """A simulation of 4 rounds that ``stop`` ends in its second round."""

    def on_round(record: covey.core.RoundRecord) -> None:
        if record.round == 1:
            raise stop

    with pytest.raises(type(stop)):
        covey.simulate(
            lambda cid: Same(),
            num_clients=3,
            rounds=4,
            strategy=covey.FedAvg(fraction_evaluate=0.0),
            initial_weights={"w": np.ones(2)},
            run_dir=run_dir,
            on_round=on_round,
        )


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize(
    ("stop", "reason"),
    [
        (KeyboardInterrupt(), "interrupted (SIGINT)"),
        (KeyboardInterrupt("SIGTERM"), "interrupted (SIGTERM)"),
    ],
)
def test_an_interrupted_simulation_is_listed_and_shown_as_interrupted(
    tmp_path: Path, stop: BaseException, reason: str
) -> None:
    run_dir = tmp_path / "runs" / "r1"
    _stopped_simulation(run_dir, stop)
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["status"], meta["stopped_reason"]) == ("failed", reason)  # stored as before
    listed = _cli("runs", "list", str(tmp_path / "runs"))
    assert " interrupted " in listed
    assert "failed" not in listed
    shown = _cli("runs", "show", str(run_dir))
    assert f"{run_dir}: interrupted" in shown
    assert f"{reason}; continue it after its last complete round with " in shown
    assert f"run_dir={str(run_dir)!r}, resume=True" in shown  # the resume hint is kept
    assert "failed" not in shown.replace("clients failed", "")
    row = summary(read_run("r1", run_dir))
    assert row["status"] == "interrupted"
    assert row["note"].startswith(f"{reason}; continue it after its last complete round with ")
    pytest.importorskip("plotly")
    from covey.dashboard._report import write_report

    page = write_report(run_dir, tmp_path / "r1.html").read_text(encoding="utf-8")
    assert "<th>status</th><td>interrupted</td>" in page


def test_a_simulation_that_failed_is_still_failed(tmp_path: Path) -> None:
    run_dir = tmp_path / "r1"
    _stopped_simulation(run_dir, RuntimeError("diverged"))
    assert f"{run_dir}: failed" in _cli("runs", "show", str(run_dir))
    assert "failed: RuntimeError: diverged" in _cli("runs", "show", str(run_dir))
    assert summary(read_run("r1", run_dir))["status"] == "failed"


def test_an_interrupt_raised_with_other_args_is_a_failure() -> None:
    # Only what Ctrl-C and SIGTERM record is an interruption.
    assert shown_status("failed", "interrupted (SIGINT)") == "interrupted"
    assert shown_status("failed", "interrupted (SIGTERM)") == "interrupted"
    assert shown_status("failed", "interrupted (because)") == "failed"
    assert shown_status("failed", None) == "failed"
    assert shown_status("stopped", "interrupted (SIGINT)") == "stopped"


def _interrupted_server(run_dir: Path, resume: bool) -> None:
    def interrupted(port: int) -> None:  # Ctrl-C as the console says it listens
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        serve(
            covey.FedAvg(fraction_evaluate=0.0),
            2,
            {"w": np.zeros(2)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
            resume=resume,
            on_listen=interrupted,
        )


@pytest.mark.parametrize("history_written", [True, False])
def test_an_interrupted_server_is_shown_as_interrupted(
    tmp_path: Path, history_written: bool
) -> None:
    # Interrupted before its first round, a new run's server writes no history.json:
    # only its store logs why it stopped (it said "failed" and no reason).
    run_dir = tmp_path / "run"
    if history_written:
        serve(
            covey.FedAvg(fraction_evaluate=0.0),
            0,
            {"w": np.zeros(2)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
        )
    _interrupted_server(run_dir, resume=history_written)
    assert (run_dir / "history.json").is_file() is history_written
    with RunStore.open(run_dir) as store:
        assert store.status == "failed"  # stored as before
    shown = _cli("runs", "show", str(run_dir))
    assert f"{run_dir}: interrupted" in shown
    hint = "interrupted (SIGINT); continue it after its last complete round with `covey server"
    assert hint in shown
    assert " interrupted " in _cli("runs", "list", str(tmp_path))
    row = summary(read_run("run", run_dir))
    assert row["status"] == "interrupted"
    assert row["note"].startswith("interrupted (SIGINT); continue it after its last complete ")
