"""A run stopped by Ctrl-C or SIGTERM is shown as interrupted, not failed, and says how to go on.

What is stored stays as older covey wrote it (``failed``, with the reason
``interrupted (SIGINT)``); the status shown is derived from it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from _live import serve_interrupted
from covey.cli import app
from covey.core._interrupt import shown_status
from covey.dashboard._runs import read_run, summary
from covey.deploy._server import serve
from covey.server._store import RunStore


class Same(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights=weights, num_examples=1)


def _simulate(run_dir: Path, **options: Any) -> covey.sim.SimulationResult:
    return covey.simulate(
        lambda cid: Same(),
        num_clients=3,
        rounds=4,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.ones(2)},
        run_dir=run_dir,
        **options,
    )


def _stopped_simulation(run_dir: Path, stop: BaseException, in_round: int = 1) -> None:
    """A simulation of 4 rounds that ``stop`` ends as round ``in_round`` is recorded."""

    def on_round(record: covey.core.RoundRecord) -> None:
        if record.round == in_round:
            raise stop

    with pytest.raises(type(stop)):
        _simulate(run_dir, on_round=on_round)


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize(
    ("stop", "reason"),
    [
        (KeyboardInterrupt(), "interrupted (SIGINT)"),
        (KeyboardInterrupt("SIGTERM"), "interrupted (SIGTERM)"),
        (KeyboardInterrupt("SIGHUP"), "interrupted (SIGHUP)"),
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
    serve_interrupted(run_dir, resume=history_written)
    assert (run_dir / "history.json").is_file() is history_written
    with RunStore.open(run_dir) as store:
        assert store.status == "failed"  # stored as before
    shown = _cli("runs", "show", str(run_dir))
    assert f"{run_dir}: interrupted" in shown
    # No round of it finished (round 0 at most): the resume starts it at round 1 again.
    hint = "interrupted (SIGINT); continue it from its start (no round of it finished) with "
    assert f"{hint}`covey server" in shown
    assert " interrupted " in _cli("runs", "list", str(tmp_path))
    row = summary(read_run("run", run_dir))
    assert row["status"] == "interrupted"
    assert row["note"].startswith(hint)


@pytest.mark.parametrize("killed", [False, True])
def test_a_simulation_stopped_before_any_round_finished_is_continued_from_its_start(
    tmp_path: Path, killed: bool
) -> None:
    # `covey runs show` and the dashboard said "continue it after its last complete
    # round" of a run that had finished none: the resume runs it from round 1.
    run_dir = tmp_path / "r0"
    _stopped_simulation(run_dir, KeyboardInterrupt(), in_round=0)
    if killed:  # as a process killed in its round 1 leaves its files: still running
        for name, now in (("run.json", {"status": "running"}), ("history.json", {})):
            data = json.loads((run_dir / name).read_text())
            data.pop("stopped_reason")
            (run_dir / name).write_text(json.dumps({**data, **now}))
        with contextlib.closing(sqlite3.connect(run_dir / "run.sqlite")) as db, db:
            db.execute("UPDATE run SET status = 'running'")
    shown = _cli("runs", "show", str(run_dir))
    assert f"{run_dir}: {'stopped' if killed else 'interrupted'}" in shown
    said = "continue it from its start (no round of it finished) with `covey.simulate("
    assert said in shown
    assert "last complete" not in shown
    assert said in summary(read_run("r0", run_dir))["note"]
    resumed = _simulate(run_dir, resume=True)
    assert [r.round for r in resumed.history.rounds] == [0, 1, 2, 3, 4]
    assert resumed.history.rounds[1].fit_participants  # round 1 trained in the resume
    run_dir = tmp_path / "r1"
    _stopped_simulation(run_dir, KeyboardInterrupt(), in_round=1)
    assert "continue it after its last complete round with" in _cli("runs", "show", str(run_dir))


@pytest.mark.parametrize(("rounds", "said"), [(0, "from its start"), (2, "after its last")])
def test_covey_run_interrupted_says_where_a_resume_goes_on(
    tmp_path: Path, rounds: int, said: str
) -> None:
    from covey.cli._project_stop import interrupted_note

    covey.simulate(
        lambda cid: Same(),
        num_clients=3,
        rounds=rounds,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.ones(2)},
        run_dir=tmp_path / "r",
    )
    text = interrupted_note(tmp_path / "r", None, KeyboardInterrupt())
    assert f"continue it {said}" in text
