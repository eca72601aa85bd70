"""Runs started from a model of one's own: errors name what is wrong, and where it came from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from covey.cli import app


def test_covey_run_names_the_apps_evaluate_fn_refusing_a_checkpoint_of_another_model(
    tmp_path: Path,
) -> None:
    made = CliRunner().invoke(app, ["new", "other-start", "--dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    project = tmp_path / "other-start"
    server_app = project / "other_start" / "server_app.py"
    text = server_app.read_text()
    started = "initial_weights=logistic_init(features, classes),"
    assert started in text
    # A checkpoint of another model: half the features.
    server_app.write_text(
        text.replace(started, "initial_weights=logistic_init(features // 2, classes),")
    )
    done = subprocess.run(
        [sys.executable, "-m", "covey", "run", str(project), "--set", "rounds=1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    said = " ".join(done.stderr.split())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "weight 'W' has shape (32, 10)" in said
    # Before, the note named covey's own wrapper: "raised by evaluate_fn RoundModels.evaluate".
    assert "(raised by evaluate_fn evaluate in round 0)" in said, said
    assert "RoundModels" not in said
