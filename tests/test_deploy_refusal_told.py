"""A deployed site whose update the server refused is told why, in its own log.

Real ``covey server`` and ``covey client`` processes on 127.0.0.1: site-1 sends
weights of the wrong shape in every round; the server refuses them for it alone,
and site-1's ``covey client`` log says so, round by round, in the server's words.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from covey.deploy.certs import init_federation, issue_client

pytestmark = pytest.mark.slow
APPS = Path(__file__).parent / "apps"
SAID = "the server refused this site's update: weights: 'w' has shape (9,), expected (8,)"


def _covey(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "covey", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _federation(tmp: Path, security: list[str], server_extra: list[str]) -> dict[str, str]:
    """Serve tiny_app's two rounds to site-0 and site-1 (wrong); every process's log."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(APPS), *sys.path]),
        "COVEY_TINY_WRONG": "1",
        "COLUMNS": "250",
    }
    port_file = tmp / "port"
    server = _covey(
        [
            *("server", "--app", "tiny_app:server_app", *security, *server_extra),
            *("--address", "127.0.0.1:0", "--port-file", str(port_file)),
            *("--run-dir", str(tmp / "run"), "--wait-timeout", "60", "--no-plot"),
        ],
        tmp / "server.log",
        env,
    )
    procs = [server]
    try:
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert server.poll() is None, (tmp / "server.log").read_text()
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        for k in (0, 1):
            args = ["client", "--app", "tiny_app:client_fn", "--cid", str(k), "--server", address]
            args += [*security, "--name", f"site-{k}", "-v"]
            procs.append(_covey(args, tmp / f"site-{k}.log", env))
        for proc in procs:
            assert proc.wait(120) == 0, (tmp / "server.log").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return {p.stem: p.read_text(errors="replace") for p in tmp.glob("*.log")}


@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls-data-port"])
def test_a_site_whose_update_was_refused_reads_why_in_its_log(tmp_path: Path, tls: bool) -> None:
    if tls:
        certs = tmp_path / "certs"
        init_federation(certs, hosts=("localhost", "127.0.0.1"))
        for k in (0, 1):
            issue_client(certs, f"site-{k}")
        logs = _federation(tmp_path, ["--certs", str(certs)], ["--data-port", "0"])
        assert "opened data connections to 127.0.0.1:" in logs["site-1"]
    else:
        logs = _federation(tmp_path, ["--insecure"], [])
    # The server's operator reads it by the site's name, as before ...
    assert "site-1's weights: 'w' has shape (9,), expected (8,)" in logs["server"]
    # ... and the site's operator reads it too, for each round, at WARNING.
    told = [line for line in logs["site-1"].splitlines() if "refused this site" in line]
    assert len(told) == 2, logs["site-1"]
    assert told[0].endswith(f"round 1: {SAID}"), told
    assert told[1].endswith(f"round 2: {SAID}"), told
    assert all("WARNING" in line for line in told), told
    assert "refused" not in logs["site-0"], logs["site-0"]  # its updates were taken
