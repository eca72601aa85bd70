"""``covey site`` and ``covey client`` stopped as their channel closes leave at once, saying so.

A site stopped right after its query server closed stayed up: the stop came as
its gRPC channel was closing. Python's finalization, after the "left" line,
waited on gRPC's shutdown, which waits for that close (over a minute); and an
interrupt landing in a finalizer gRPC ran on the main thread was lost, so the
site went on to the next query server without a word. The helper below stalls
the close in each of those two ways, so the stop always comes during it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from _procs import undated
from covey.transport.grpc import GrpcServerTransport

_STALLED = """
import atexit, os, sys, threading, time

from covey.transport.grpc import _attempt

real = _attempt.close_channel
closed = threading.Event()


def say_closing():
    print("closing the channel", file=sys.stderr, flush=True)


def at_exit(channel, grace=_attempt.CLOSE_GRACE, stop=None):
    # gRPC's shutdown at exit waits for a channel being closed to be let go
    atexit.register(closed.wait)

    def close():
        say_closing()
        time.sleep(120)
        channel.close()
        closed.set()

    channel_close, channel.close = channel.close, close
    try:
        real(channel, grace, stop) if stop is not None else real(channel, grace)
    finally:
        channel.close = channel_close


class _Finalized:  # the channel let go on the main thread: closed in a finalizer
    def __init__(self, channel):
        self.channel = channel

    def __del__(self):
        say_closing()
        time.sleep(3)  # the stop comes now, and is raised in the finalizer
        self.channel.close()


def in_finalizer(channel, grace=_attempt.CLOSE_GRACE, stop=None):
    held = _Finalized(channel)
    del held


_attempt.close_channel = at_exit if os.environ["STALL"] == "exit" else in_finalizer
sys.argv = ["covey", *sys.argv[1:]]
from covey.cli import main

main()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX's")
@pytest.mark.parametrize("stall", ["exit", "finalizer"])
@pytest.mark.parametrize("command", ["site", "client"])
def test_a_stop_as_the_channel_closes_ends_the_command_at_once(
    tmp_path: Path, command: str, stall: str
) -> None:
    apps = Path(__file__).parent / "apps"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(apps), *sys.path])}
    env.update(COLUMNS="250", STALL=stall)
    (tmp_path / "stalled.py").write_text(_STALLED)
    if command == "site":
        pd.DataFrame({"age": [30, 40, 50]}).to_csv(tmp_path / "a.csv", index=False)
        args = ["site", "--table", f"t={tmp_path / 'a.csv'}", "--name", "a"]
        budget = tmp_path / "a.covey-budget.json"
        said = f"interrupted (SIGTERM): site a left; its privacy budget is kept in {budget}"
    else:
        args = ["client", "--app", "tiny_app:client_fn", "--cid", "0"]
        said = "interrupted (SIGTERM): this client left the federation; start it again to rejoin"
    transport = GrpcServerTransport("127.0.0.1:0")
    server = ["--server", f"127.0.0.1:{transport.port}", "--insecure"]
    log = tmp_path / "out.txt"
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, str(tmp_path / "stalled.py"), *args, *server],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        assert transport.wait_for_clients(1, 60), log.read_text()
        transport.close("the query is answered")  # the query server closes
        deadline = time.monotonic() + 60
        while "closing the channel" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the channel was never closed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)  # the stall holds the old code 120 s, or for ever
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after SIGTERM: {log.read_text()}")
    finally:
        transport.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = undated(log.read_text())
    assert code == 143, text
    assert " ".join(text.strip().splitlines()[-1].split()) == said
    if stall == "exit":  # Python itself shows what a finalizer raised ("Exception ignored")
        assert "Traceback" not in text
