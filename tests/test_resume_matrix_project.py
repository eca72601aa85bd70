"""`covey run` of a project interrupted with Ctrl-C: it says what happened and what to do.

A simulation keeps no checkpoint to resume from; the run folder keeps the
history of the rounds done, marked stopped, and the line printed says how to
run it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covey.cli import app

pytestmark = pytest.mark.slow


def test_ctrl_c_of_a_simulated_covey_run_says_how_to_run_it_again(tmp_path: Path) -> None:
    made = CliRunner().invoke(app, ["new", "cut-fed", "--dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    root = tmp_path / "cut-fed"
    env = dict(os.environ, COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "covey", "run", "--set", "rounds=100000"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # A background process may inherit SIGINT ignored; Ctrl-C must reach this one.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while not list(root.glob("runs/*/history.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(root.glob("runs/*/history.json")), "no round finished within 60 s"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    said = " ".join(out.decode(errors="replace").split())
    assert proc.returncode == 130, said
    (run,) = root.glob("runs/*")
    assert "interrupted: the simulation in " in said
    assert run.name in said
    assert "covey run" in said.split("interrupted:", 1)[1]
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
