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


def _covey(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from covey.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_a_flag_refused_comes_without_the_warnings_of_a_start(tmp_path: Path) -> None:
    # `covey query --insecure --sites 1` warned that anyone could see the query, then
    # refused --sites; `covey site` warned of its missing --policy, then refused a
    # --csv-skip naming no table: a mistake in the flags starts nothing to warn of.
    code, out = _covey(
        "query", "SELECT COUNT(*) FROM p", "--server", "127.0.0.1:9", "--insecure", "--sites", "1"
    )
    assert code == 2, out
    assert "--sites 1: secure aggregation needs at least two sites" in out
    assert "WITHOUT TLS" not in out
    (tmp_path / "t.csv").write_text("x\n1\n2\n")
    code, out = _covey(
        *("site", "--table", f"t={tmp_path / 't.csv'}", "--csv-skip", "visits=1"),
        *("--server", "127.0.0.1:1", "--insecure", "--ledger", str(tmp_path / "a.json")),
    )
    assert code == 2, out
    assert "--csv-skip" in out
    assert "no --policy given" not in out
