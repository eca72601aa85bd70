"""The dashboard and trackers example runs as its docstring says, again and again in one folder."""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dashboard_and_trackers.py"

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


@pytest.mark.slow
def test_the_example_run_twice_in_one_folder_writes_new_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--rounds", "1"])
    folders: list[set[str]] = []
    for _ in range(2):
        runpy.run_path(str(EXAMPLE), run_name="__main__")
        folders.append({p.name for p in (tmp_path / "runs").iterdir()})
        time.sleep(1.1)  # its runs are named by the second they start in
    assert len(folders[0]) == 2
    assert folders[0] < folders[1]
    assert len(folders[1]) == 4
    assert len(list(tmp_path.glob("*-report.html"))) == 4
