"""A simulation's run folder when its process is killed, or when a second run aims at it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.dashboard._runs import read_run

_STUCK_RUN = """
import sys, time
from pathlib import Path
import numpy as np
import covey

run_dir, marker = sys.argv[1], Path(sys.argv[2])

class C(covey.Client):
    def fit(self, weights, config):
        if config["round"] == 2:
            marker.write_text("round 2")
            time.sleep(3600)
        return covey.FitResult(weights=dict(weights), num_examples=1)

covey.simulate(lambda cid: C(), 2, 5, covey.FedAvg(fraction_evaluate=0.0),
               {"w": np.zeros(2)}, run_dir=run_dir)
"""


class Same(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights=dict(weights), num_examples=1)


@pytest.mark.slow
def test_a_killed_simulation_is_stopped_and_its_folder_is_not_taken(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_STUCK_RUN))
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, str(script), str(run_dir), str(marker)], env=env)
    try:
        end = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the simulation exited before round 2"
            assert time.monotonic() < end, "the simulation never reached round 2"
            time.sleep(0.05)
        assert read_run("run", run_dir).status == "running"
        # A second run into the same folder would overwrite the first one's files.
        with pytest.raises(
            ValueError, match=rf"in use by another covey process \(pid {child.pid}\)"
        ):
            covey.simulate(
                lambda cid: Same(),
                2,
                1,
                covey.FedAvg(fraction_evaluate=0.0),
                {"w": np.zeros(2)},
                run_dir=run_dir,
            )
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    run = read_run("run", run_dir)
    shown = CliRunner().invoke(app, ["runs", "show", str(run_dir)], env={"COLUMNS": "250"})
    assert shown.output.startswith(f"{run_dir}: stopped")
    assert run.meta["status"] == "stopped"
    assert "killed" in run.meta["stopped_reason"]
    assert [r["round"] for r in run.rounds] == [0, 1]


class Failing(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        if config["round"] == 2 and self.cid == 1:
            raise RuntimeError("client 1 broke")
        return covey.FitResult(weights=dict(weights), num_examples=1)


def test_a_failed_simulation_keeps_the_failed_round_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "runs" / "broken"
    with pytest.raises(covey.FederationError, match="client 1 broke"):
        covey.simulate(
            Failing,
            3,
            4,
            covey.FedAvg(fraction_evaluate=0.0, accept_failures=False),
            {"w": np.zeros(2)},
            run_dir=run_dir,
        )
    history = covey.History.load(run_dir)
    assert [r.round for r in history.rounds] == [0, 1, 2]
    assert [(f.cid, f.error) for f in history.rounds[2].fit_failures] == [
        (1, "RuntimeError: client 1 broke")
    ]
    run = read_run("broken", run_dir)
    assert run.status == "failed"
    assert run.meta["stopped_reason"].startswith("FederationError: round 2:")
    assert "client 1 broke" in run.meta["stopped_reason"]
    monkeypatch.setenv("COLUMNS", "250")
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    # Round 2 failed: one round of four finished, as `covey runs show` counts them.
    assert "broken simulated (inline) failed 1/4" in " ".join(listed.output.split())


_KILLED_AFTER_STORE = """
import os, signal, sys
import numpy as np
import covey
import covey.sim._simulate as simulate_module

def killed(path, meta):  # the run's run.sqlite is made, its run.json not yet written
    os.kill(os.getpid(), signal.SIGKILL)

simulate_module.write_run_meta = killed

class C(covey.Client):
    def fit(self, weights, config):
        return covey.FitResult(weights=dict(weights), num_examples=1)

covey.simulate(lambda cid: C(), 2, 2, covey.FedAvg(fraction_evaluate=0.0),
               {"w": np.zeros(2)}, run_dir=sys.argv[1])
"""


def test_a_simulation_killed_before_its_run_json_is_told_from_a_served_run(
    tmp_path: Path,
) -> None:
    script, run_dir = tmp_path / "run.py", tmp_path / "run"
    script.write_text(textwrap.dedent(_KILLED_AFTER_STORE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run(
        [sys.executable, str(script), str(run_dir)], env=env, timeout=120, check=False
    )
    assert child.returncode == -signal.SIGKILL
    assert (run_dir / "run.sqlite").is_file()
    assert not (run_dir / "run.json").exists()
    shown = CliRunner().invoke(app, ["runs", "show", str(run_dir)], env={"COLUMNS": "250"})
    listed = CliRunner().invoke(app, ["runs", "list", str(tmp_path)], env={"COLUMNS": "250"})
    run = read_run("run", run_dir)
    for said in (shown.output, listed.output, run.meta["stopped_reason"]):
        assert "covey server" not in said
        assert f"covey.simulate(..., run_dir={str(run_dir)!r}, resume=True)" in said
    assert shown.output.startswith(f"{run_dir}: stopped")
    assert "the simulation's process was killed" in shown.output
    assert run.kind == "simulated"
    # The command it names continues the run, from its start.
    result = covey.simulate(
        lambda cid: Same(),
        2,
        2,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        run_dir=run_dir,
        resume=True,
    )
    assert [r.round for r in result.history.rounds][-1] == 2
