"""A ``covey server`` or ``covey client`` whose output cannot be written keeps running.

Their output is often piped (``covey server ... 2>&1 | tee server.log``, a log
shipper). When the reader ends, every later write fails with a broken pipe, and
rich's console ended the process on the first one (``SystemExit(1)``): the
server's run stopped, marked failed with ``SystemExit: 1``, its clients told
that the server failed, and a client that finished its run exited with status 1.
A log file on a full disk did the same with ``OSError: [Errno 28] No space left
on device``, raised from the server's console into its round loop.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from _childenv import child_pythonpath
from _procs import until_listening
from covey.server._store import RunStore

APPS = Path(__file__).parent / "apps"


def _covey(env: dict[str, str], output: Any, *args: str) -> subprocess.Popen[str]:
    """``python -m covey ARGS``, its standard output and error both to ``output``."""
    return subprocess.Popen(
        [sys.executable, "-m", "covey", *args],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.parametrize("output", ["a pipe whose reader ends", "a full disk"])
def test_a_server_and_a_client_whose_output_fails_finish_the_run(
    tmp_path: Path, output: str
) -> None:
    full = output == "a full disk"
    if full and not Path("/dev/full").exists():
        pytest.skip("no /dev/full here: every write to it fails as on a full disk")
    path = child_pythonpath(APPS, base=os.pathsep.join(sys.path))
    env = {**os.environ, "PYTHONPATH": path, "COVEY_TINY_CLIENTS": "1"}
    port_file, run = tmp_path / "port", tmp_path / "run"
    sink: Any = open("/dev/full", "w") if full else subprocess.PIPE  # noqa: SIM115 - closed below
    server = _covey(
        env,
        sink,
        *("server", "--app", "tiny_app:server_app", "--insecure", "--no-plot"),
        *("--address", "127.0.0.1:0", "--port-file", str(port_file), "--run-dir", str(run)),
        *("--wait-timeout", "60", "--round-timeout", "60"),
    )
    client = None
    try:
        port = until_listening(server, port_file)
        if not full:
            assert server.stdout is not None
            server.stdout.close()  # the server's log reader ends: its next line finds no reader
        client = _covey(
            env,
            sink,
            *("client", "--app", "tiny_app:client_fn", "--cid", "0", "--insecure"),
            *("--server", f"127.0.0.1:{port}", "--retry-for", "60"),
        )
        if not full:
            assert client.stdout is not None
            client.stdout.close()  # and so does the client's
        assert server.wait(120) == 0
        assert client.wait(120) == 0
    finally:
        if full:
            sink.close()
        for proc in (server, client):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    with RunStore.open(run) as store:
        assert store.status == "finished"
        assert store.last_round() == 2
