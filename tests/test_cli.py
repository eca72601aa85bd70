"""The `covey` command as a user runs it: version, help and the demo."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import covey
from _procs import COVEY_TAKING_CTRL_C


def covey_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "covey", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "120"},
    )


def test_version() -> None:
    out = covey_cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"covey {covey.__version__}"


def test_help_lists_the_commands() -> None:
    out = covey_cli("--help")
    assert out.returncode == 0, out.stderr
    for command in ("demo", "server", "client", "certs"):
        assert command in out.stdout


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_demo_runs_and_writes_history_and_plot(tmp_path: Path, backend: str) -> None:
    run_dir = tmp_path / "run"
    out = covey_cli(
        "demo", "--rounds", "3", "--backend", backend, "--run-dir", str(run_dir), cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "final test accuracy" in out.stdout
    assert "round" in out.stdout  # the per-round table
    history = covey.History.from_json((run_dir / "history.json").read_text())
    assert [r.round for r in history.rounds] == [0, 1, 2, 3]
    assert all(len(r.fit_participants) == 10 for r in history.rounds[1:])
    accuracy = float(history.rounds[-1].central_metrics["accuracy"])
    assert f"{accuracy:.4f}" in out.stdout
    assert accuracy > float(history.rounds[0].central_metrics["accuracy"])
    assert (run_dir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.loads((run_dir / "history.json").read_text())


def test_demo_rejects_an_unknown_backend(tmp_path: Path) -> None:
    out = covey_cli("demo", "--backend", "gpu-cluster", "--run-dir", str(tmp_path), cwd=tmp_path)
    assert out.returncode != 0
    assert "choose inline, process or ray" in out.stdout + out.stderr


def test_demo_checks_its_start_method(tmp_path: Path) -> None:
    out = covey_cli("demo", "--start-method", "spawn", "--run-dir", str(tmp_path), cwd=tmp_path)
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert "--start-method spawn: applies to --backend process only (the backend is" in said
    out = covey_cli("demo", "--backend", "process", "--start-method", "thread", cwd=tmp_path)
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert "--start-method thread: choose 'fork', 'forkserver' or 'spawn', or leave it" in said
    assert "None" not in said  # the Python API's word, not a flag's value


def test_demo_default_run_folder_is_under_runs(tmp_path: Path) -> None:
    out = covey_cli("demo", "--rounds", "1", "--clients", "20", "--no-plot", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    assert (folder / "history.json").exists()
    assert not (folder / "plot.png").exists()


def _in_process(*args: str) -> tuple[int, str, str]:
    """``covey ARGS`` run in this process: exit code, stdout and stderr."""
    from typer.testing import CliRunner

    from covey.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_demo_of_one_round_says_round_not_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said "1 rounds of FedAvg" and "after 1 rounds".
    monkeypatch.chdir(tmp_path)
    code, said, err = _in_process(
        *("demo", "--rounds", "1", "--clients", "20", "--no-plot", "--run-dir", "r")
    )
    assert code == 0, said + err
    assert "NumPy logistic regression, 1 round of FedAvg with " in said
    (final,) = [line for line in said.splitlines() if line.startswith("final test accuracy")]
    assert " after 1 round in " in final


def test_demo_of_many_rounds_prints_their_last_100_and_how_to_see_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A finished run's table printed every round: 10,000 lines for 10,000 rounds.
    monkeypatch.chdir(tmp_path)
    code, said, err = _in_process(
        *("demo", "--rounds", "103", "--clients", "2", "--no-plot", "--run-dir", "r")
    )
    assert code == 0, said + err
    rows = [line.split()[0] for line in said.splitlines() if line.strip()[:1].isdigit()]
    assert rows[:100] == [str(rnd) for rnd in range(4, 104)], said
    assert "Rounds (the last 100 of 104)" in said
    assert "the first 4 rounds not shown (covey runs show r --all shows every round)" in said
    whole = covey.History.from_json((tmp_path / "r" / "history.json").read_text())
    assert len(whole.rounds) == 104


def test_demo_out_writes_the_final_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open

    monkeypatch.chdir(tmp_path)
    code, said, err = _in_process(
        *("demo", "--rounds", "2", "--clients", "20", "--no-plot"),
        *("--run-dir", "r", "--out", "model.safetensors"),
    )
    assert code == 0, said + err
    assert said.splitlines()[-2:] == [
        "run folder: r (history.json)",
        "model: model.safetensors (after round 2)",
    ]
    history = covey.History.load(tmp_path / "r")
    with safe_open(tmp_path / "model.safetensors", "np") as f:
        assert f.metadata()["covey_round"] == "2"
        model = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    data = covey.data.load_digits()
    loss, _ = covey.models.logistic_evaluate(model, data.x_test, data.y_test)
    assert loss == history.rounds[-1].central_loss
    assert not (tmp_path / "r" / "model.safetensors").exists()  # only where --out says


def test_demo_out_in_a_missing_folder_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, said, err = _in_process("demo", "--run-dir", "r", "--out", "no/such/m.safetensors")
    assert code == 2, said + err
    assert "--out no/such/m.safetensors: the folder no/such does not exist" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_demo_out_in_a_folder_that_takes_no_file_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the whole run went, then its error named the temporary file the model
    # is written through ('/proc/.x.5c95ba0273e9.tmp'), not the path given.
    monkeypatch.chdir(tmp_path)
    code, said, err = _in_process("demo", "--run-dir", "r", "--out", "/proc/x")
    err = " ".join(err.split())
    assert code == 2, said + err
    assert "--out /proc/x: a file cannot be written in the folder /proc (" in err
    assert "give a path in a folder you can write to" in err
    assert ".tmp" not in err
    assert not (tmp_path / "r").exists()


def test_demo_out_in_a_folder_the_user_cannot_write_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / ".m.x.tmp"))

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refused)  # as root, chmod would not refuse
    code, said, err = _in_process("demo", "--run-dir", "r", "--out", "ro/m.safetensors")
    err = " ".join(err.split())
    assert code == 2, said + err
    assert (
        "--out ro/m.safetensors: a file cannot be written in the folder ro (Permission denied)"
    ) in err
    assert not (tmp_path / "r").exists()


def test_demo_out_that_is_a_pipe_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model is renamed into place: over a pipe or a device, the node itself went.
    monkeypatch.chdir(tmp_path)
    os.mkfifo("pipe")
    code, said, err = _in_process("demo", "--run-dir", "r", "--out", "pipe")
    assert code == 2, said + err
    assert "--out pipe is not a regular file (a device, a pipe); give a file name" in err
    assert stat.S_ISFIFO(os.stat("pipe").st_mode)
    assert not (tmp_path / "r").exists()


def test_a_demo_stopped_by_an_error_keeps_the_last_complete_rounds_model_at_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import covey.cli._demo as demo

    real = demo.run_demo

    def stopped_after_round_2(config: demo.DemoConfig, **kwargs: Any) -> None:
        result = real(config, **kwargs)
        raise covey.FederationError("round 3: too few replies", result.history, result.weights)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "run_demo", stopped_after_round_2)
    code, said, err = _in_process(
        *("demo", "--rounds", "2", "--clients", "20", "--no-plot"),
        *("--run-dir", "r", "--out", "m.safetensors"),
    )
    assert code == 1, said + err
    assert said.splitlines()[-2:] == [
        "run stopped: round 3: too few replies",
        "the model after round 2, the last complete one, is in m.safetensors",
    ]
    assert (tmp_path / "m.safetensors").is_file()


@pytest.mark.parametrize(
    ("sig", "code", "how"),
    [
        ("SIGINT", 130, "interrupted"),
        ("SIGTERM", 143, "interrupted (SIGTERM)"),
        ("SIGHUP", 129, "interrupted (SIGHUP)"),  # the terminal closed
    ],
)
def test_a_stopped_demo_with_out_keeps_the_last_complete_rounds_model(
    tmp_path: Path, sig: str, code: int, how: str
) -> None:
    """Ctrl-C, or SIGTERM (`docker stop`; before, it ended the demo without a word or a model)."""
    import signal
    import time

    from safetensors import safe_open

    command = [*COVEY_TAKING_CTRL_C, "demo", "--rounds", "100000", "--clients", "20"]
    command += ["--no-plot", "--run-dir", "r", "--out", "m.safetensors"]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _rounds_done(tmp_path / "r" / "history.json"):
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        if not _rounds_done(tmp_path / "r" / "history.json"):
            proc.kill()
            out = proc.communicate(timeout=30)[0]
            pytest.fail(f"no round finished within 120 s; the demo printed:\n{out[-4000:]}")
        proc.send_signal(getattr(signal, sig))
        said = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == code, said
    (line,) = [line for line in said.splitlines() if line.startswith("interrupted")]
    history = covey.History.load(tmp_path / "r")
    done = history.rounds[-1].round
    assert line == (
        f"{how}: the demo in r stopped; its history.json keeps the rounds done: "
        f"`covey runs show r`; the model after round {done}, the last complete one, is in "
        "m.safetensors"
    )
    with safe_open(tmp_path / "m.safetensors", "np") as f:
        assert f.metadata()["covey_round"] == str(done)
        model = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    data = covey.data.load_digits()
    loss, _ = covey.models.logistic_evaluate(model, data.x_test, data.y_test)
    assert loss == history.rounds[-1].central_loss


def _rounds_done(path: Path) -> bool:
    """Whether the history at ``path`` holds round 1 or later."""
    try:
        return any(r["round"] >= 1 for r in json.loads(path.read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return False
