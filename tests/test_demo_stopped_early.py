"""``covey demo`` stopped before its first round says so in one line, by Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

LOADING = """
import pathlib, runpy, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even started ignoring it
import covey.data
def loading(*args, **kwargs):  # the demo's data, loaded before its rounds: held here
    pathlib.Path("loading").write_text("")
    time.sleep(60)
    raise SystemExit("never stopped")
covey.data.load_digits = loading
runpy.run_module("covey", run_name="__main__", alter_sys=True)
"""
"""``python -m covey`` whose demo, loading its data before the first round, waits there."""


@pytest.mark.parametrize(
    ("sig", "code", "how"),
    [(signal.SIGTERM, 143, "interrupted (SIGTERM)"), (signal.SIGINT, 130, "interrupted")],
)
def test_a_demo_stopped_before_its_first_round_says_so(
    tmp_path: Path, sig: signal.Signals, code: int, how: str
) -> None:
    # Before: SIGTERM as the demo loaded its data killed it (status -15) without a word,
    # and Ctrl-C then ended it with 130 without one.
    command = [sys.executable, "-c", LOADING, "demo", "--rounds", "3", "--clients", "20"]
    proc = subprocess.Popen(
        [*command, "--no-plot"],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "loading").exists() and proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail("the demo did not start loading its data within 120 s")
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == code, (out, err)
    assert out.splitlines() == [f"{how}: the demo stopped before its first round"], (out, err)
    assert err == ""  # no traceback
    assert not (tmp_path / "runs").exists()  # no run folder was made for it
