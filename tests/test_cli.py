"""The `covey` command as a user runs it: version, help and the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import covey


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
    assert "inline or process" in out.stdout + out.stderr


def test_demo_checks_its_start_method(tmp_path: Path) -> None:
    out = covey_cli("demo", "--start-method", "spawn", "--run-dir", str(tmp_path), cwd=tmp_path)
    assert out.returncode != 0
    assert "--start-method spawn: applies to --backend process only" in out.stdout + out.stderr
    out = covey_cli("demo", "--backend", "process", "--start-method", "thread", cwd=tmp_path)
    assert out.returncode != 0
    assert "'fork', 'forkserver' or 'spawn', got 'thread'" in out.stdout + out.stderr


def test_demo_default_run_folder_is_under_runs(tmp_path: Path) -> None:
    out = covey_cli("demo", "--rounds", "1", "--clients", "20", "--no-plot", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    assert (folder / "history.json").exists()
    assert not (folder / "plot.png").exists()
