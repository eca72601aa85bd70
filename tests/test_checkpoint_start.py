"""Runs started from a model of one's own: errors name what is wrong, and where it came from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from _procs import run_one_round
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
    done = run_one_round(project)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "weight 'W' has shape (32, 10)" in said
    # Before, the note named covey's own wrapper: "raised by evaluate_fn RoundModels.evaluate".
    assert "(raised by evaluate_fn evaluate in round 0)" in said, said
    assert "RoundModels" not in said


_APP = """
import numpy as np
import covey
from covey.deploy import ServerApp


def load_checkpoint():
    with open({path!r}, "rb") as f:
        data = f.read()
    raise {error}(f"{{len(data)}} bytes that hold no model")


def server_app():
    return ServerApp(strategy=covey.FedAvg(), initial_weights=load_checkpoint, rounds=1)
"""


def test_covey_server_names_the_initial_weights_function_that_raised(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.bin"
    checkpoint.write_bytes(b"\x80\x04junk")
    for error, code in (("ValueError", 2), ("RuntimeError", 1)):
        module = f"start_{error.lower()}"
        (tmp_path / f"{module}.py").write_text(_APP.format(path=str(checkpoint), error=error))
        flags = ["--insecure", "--address", "127.0.0.1:0", "--run-dir", str(tmp_path / module)]
        done = subprocess.run(
            [sys.executable, "-m", "covey", "server", "--app", f"{module}:server_app", *flags],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env={**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        said = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == code, said
        # Before, only "error: 6 bytes that hold no model", from who knows where.
        assert "6 bytes that hold no model (raised by initial_weights load_checkpoint())" in said
