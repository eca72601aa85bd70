"""The dashboard and trackers example runs as its docstring says, again and again in one folder."""

from __future__ import annotations

import io
import runpy
import socket
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


@pytest.mark.slow
@pytest.mark.parametrize("stdin", ["", None], ids=["stdin-closed", "ctrl-c"])
def test_serve_without_a_terminal_or_stopped_by_ctrl_c_stops_the_dashboard_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdin: str | None
) -> None:
    """``--serve`` run with no terminal to read (stdin closed) or stopped by Ctrl-C ends cleanly."""
    import covey.dashboard
    from covey.dashboard import DashboardServer

    urls: list[str] = []

    class OnAFreePort(DashboardServer):  # the example's 8765 may be taken here
        def __init__(self, runs_dir: str, port: int) -> None:
            super().__init__(runs_dir, port=0)

        def start(self, timeout: float = 30.0) -> OnAFreePort:
            urls.append(super().start(timeout).url)
            return self

    def ctrl_c(prompt: str = "") -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(covey.dashboard, "DashboardServer", OnAFreePort)
    if stdin is None:
        monkeypatch.setattr("builtins.input", ctrl_c)
    else:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--serve", "--rounds", "1"])
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the rounds' pause to watch them
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert len(urls) == 1
    port = int(urls[0].rstrip("/").rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):  # stopped: nothing listens on its port any more
        socket.create_connection(("127.0.0.1", port), timeout=5)
