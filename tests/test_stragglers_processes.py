"""A straggler among real ``covey server`` and ``covey client`` processes on 127.0.0.1.

The slow site sleeps in its ``fit`` (``COVEY_TINY_DELAY``, the only way to make
another process slow without reaching into it): its fit takes well over twice
the round deadline, so it misses every round it is sent a task in and is
still busy in others. Nothing here measures time; the test checks what the history records
against what the processes did.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from covey.core import History

APPS = Path(__file__).parent / "apps"

pytestmark = pytest.mark.slow


def _covey(*args: str, env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "covey", *args], env=env, stdout=sink, stderr=subprocess.STDOUT
        )


def test_a_straggling_site_is_sent_no_stale_tasks_and_every_process_exits_0(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
        "COVEY_TINY_CLIENTS": "3",
        "COLUMNS": "200",
    }
    port_file, run = tmp_path / "port", tmp_path / "run"
    server = _covey(
        *("server", "--app", "tiny_app:server_app", "--insecure", "--address", "127.0.0.1:0"),
        *("--port-file", str(port_file), "--run-dir", str(run), "--no-plot"),
        *("--rounds", "3", "--round-timeout", "1.5", "--wait-timeout", "60"),
        env=env,
        out=tmp_path / "server.out",
    )
    clients: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for _ in range(600):
            if port_file.exists() or server.poll() is not None:
                break
            time.sleep(0.1)
        assert port_file.exists(), (tmp_path / "server.out").read_text()
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        for cid, name in enumerate(("a", "b", "slow")):
            delay = {"COVEY_TINY_DELAY": "4"} if name == "slow" else {}  # > 2 deadlines
            clients[name] = _covey(
                *("client", "--app", "tiny_app:client_fn", "--cid", str(cid), "--insecure"),
                *("--server", address, "--name", name),
                env={**env, **delay},
                out=tmp_path / f"{name}.out",
            )
        assert server.wait(120) == 0, (tmp_path / "server.out").read_text()
        for name, process in clients.items():
            assert process.wait(60) == 0, (tmp_path / f"{name}.out").read_text()
    finally:
        for process in [server, *clients.values()]:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    history = History.load(run / "history.json")
    ids = {name: cid for cid, name in history.clients.items()}
    errors = []
    for record in history.rounds[1:]:
        assert record.fit_participants == sorted([ids["a"], ids["b"]])
        assert record.fit_examples == 2
        assert [f.name for f in record.fit_failures] == ["slow"]
        errors.append(record.fit_failures[0].error)
    # Round 1 closed without it. Each fit of its takes more than two rounds, so in
    # 3 rounds it can start 2 at most: at least one round found it still busy,
    # and it was sent no task to queue then. A round it was sent a task in
    # records "no reply in time": the site ran exactly those tasks.
    assert errors[0] == "no reply in time"
    busy = [e for e in errors if e.startswith("busy: ")]
    assert busy, errors
    assert all(e.startswith("busy: still working on its fit task of an earlier") for e in busy)
    assert len(busy) + errors.count("no reply in time") == len(errors)
    done = re.search(r"done: (\d+) task", (tmp_path / "slow.out").read_text())
    assert done is not None, (tmp_path / "slow.out").read_text()
    assert int(done.group(1)) == errors.count("no reply in time") < len(errors)
