"""Every line `covey site` writes to standard error begins with its date, as the docs say.

Its own lines were dated, but its log records (a policy's warning, the
warning of a connection without TLS, each failed attempt to reach the query
server) were written by Python's last-resort handler: no date, no level, so a
site's log read over days could not tell when it lost its server.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from _childenv import apps_env
from _ports import unused_port
from _procs import DATED_STAMP


def test_covey_site_dates_its_log_records_as_its_own_lines(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("x\n1\n2\n")
    (tmp_path / "policy.toml").write_text("[policy]\nmax_epsilon = 1.0\n")
    log = tmp_path / "site.log"
    with log.open("wb") as out:
        site = subprocess.Popen(
            [sys.executable, "-m", "covey", "site", "--table", f"t={tmp_path / 't.csv'}",
             "--policy", str(tmp_path / "policy.toml"), "--name", "a", "--insecure",
             "--server", f"127.0.0.1:{unused_port()}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=apps_env(),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "could not connect" not in log.read_text(errors="replace"):
            assert site.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        site.send_signal(signal.SIGTERM)
        site.wait(timeout=60)
    finally:
        if site.poll() is None:
            site.kill()
            site.wait(timeout=30)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    undated = [line for line in lines if not re.match(DATED_STAMP, line)]
    assert not undated, lines
    said = "\n".join(lines)
    assert "WARNING site 'a': its policy sets max_epsilon=1" in said
    assert "WARNING connecting WITHOUT TLS" in said
    assert "WARNING could not connect to 127.0.0.1:" in said
