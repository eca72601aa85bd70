"""Every line ``covey server`` and ``covey client`` write outside a terminal is dated once.

Before, the last lines (``done: ...``, ``interrupted (SIGTERM): ...``, ``error: ...``)
had no time of day where every other line had one; and ``covey server -v`` wrote that
it listened, and each join and leave, twice: its console's line and an INFO record.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _childenv import child_pythonpath
from _procs import DATED_STAMP, undated

pytestmark = pytest.mark.timeout(300)

APPS = Path(__file__).parent / "apps"
DATED = re.compile(DATED_STAMP + r"\S")  # written to a file: each line has its date too


def _covey(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "covey", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def test_a_verbose_server_and_its_clients_date_every_line_once(tmp_path: Path) -> None:
    path = child_pythonpath(APPS, base=os.pathsep.join(sys.path))
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "250"}
    port_file = tmp_path / "port"
    server = _covey(
        [
            *("server", "--app", "tiny_app:server_app", "--insecure", "--no-plot", "-v"),
            *("--address", "127.0.0.1:0", "--port-file", str(port_file)),
            *("--run-dir", str(tmp_path / "run"), "--wait-timeout", "60"),
        ],
        env,
        tmp_path / "server.log",
    )
    procs = [server]
    try:
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        for k in range(2):
            args = ["client", "--app", "tiny_app:client_fn", "--cid", str(k), "--insecure"]
            procs.append(_covey([*args, "--server", address], env, tmp_path / f"c{k}.log"))
        codes = [proc.wait(120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    said = (tmp_path / "server.log").read_text()
    assert codes == [0, 0, 0], said
    lines = said.strip().splitlines()
    assert [line for line in lines if not DATED.match(line)] == [], said
    for k in range(2):
        client = (tmp_path / f"c{k}.log").read_text().strip().splitlines()
        assert [line for line in client if not DATED.match(line)] == [], client
        assert undated(client[-1]).startswith("done: "), client
        assert client[-1].endswith("server said: the run is over"), client
    assert sum("listening on port" in line for line in lines) == 1, said
    for k in range(2):
        assert sum(f"client-{k} joined" in line for line in lines) == 1, said
        # it left as the run ended, told so: no drop
        assert sum(f"client-{k} left: the run is over (" in line for line in lines) == 1, said
        assert sum(f"client-{k} left" in line or f"client-{k} (" in line for line in lines) == 1
