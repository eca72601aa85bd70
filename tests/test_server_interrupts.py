"""A server interrupted at any moment once its run exists ends it marked, and lets go of it."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import numpy as np
import pytest

import covey
from _live import serve_interrupted
from _ports import unused_port
from _procs import DATED_STAMP, IGNORING_SIGINT, interrupt_tiny_server, undated
from covey.deploy._server import serve
from covey.server._store import RunStore


def test_ctrl_c_as_the_server_starts_listening_marks_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    port = serve_interrupted(run_dir)
    with RunStore.open(run_dir, exclusive=True) as store:  # let go of: it resumes
        assert store.status == "failed"
        assert store.events()[-1][2:] == ("stopped", "interrupted (SIGINT)")
    with socket.create_server(("127.0.0.1", port)):  # no longer listening there
        pass


def test_sigterm_stops_covey_server_as_ctrl_c_does(tmp_path: Path) -> None:
    """``docker stop`` and ``systemctl stop`` send SIGTERM: the run ends marked, resumable."""
    code, err, run = interrupt_tiny_server(tmp_path, signal.SIGTERM)
    assert code == 143, err
    assert "Traceback" not in err
    assert undated(err).strip().splitlines()[-1] == (
        f"interrupted (SIGTERM): the run in {run} is kept; continue it with "
        f"`covey server --resume {run} --app tiny_app:server_app --insecure --no-plot "
        "--wait-timeout 60`"
    )
    with RunStore.open(run, exclusive=True) as store:
        assert store.status == "failed"
        assert store.events()[-1][2:] == ("stopped", "interrupted (SIGTERM)")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_server_started_ignoring_sigint_stops_on_it_as_on_ctrl_c(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """``covey server ... &`` in a script: bash starts it with SIGINT ignored.

    Before: ``kill -INT PID`` did nothing; the server went on waiting for its clients.
    """
    code, err, run = interrupt_tiny_server(tmp_path, sig, ignoring_sigint=True)
    assert code == 128 + sig, err
    how = "interrupted" if sig == signal.SIGINT else "interrupted (SIGTERM)"
    last = undated(err).strip().splitlines()[-1]
    assert last.startswith(f"{how}: the run in {run} is kept"), err
    with RunStore.open(run, exclusive=True) as store:
        assert store.events()[-1][2:] == ("stopped", f"interrupted ({sig.name})")


_TWICE = """
import os, signal, sys, time
from covey.core._interrupt import SAME_STOP, stop_on_sigterm

stop_on_sigterm()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except KeyboardInterrupt as exc:
    print("stopping:", exc.args[0], flush=True)
os.kill(os.getpid(), signal.SIGTERM)  # the same stop again, as `timeout` sends it
time.sleep(0.1)
print("still stopping", flush=True)
time.sleep(SAME_STOP)
os.kill(os.getpid(), signal.SIGTERM)  # a second stop: at once
time.sleep(5)
print("not reached", flush=True)
"""


def test_one_stop_sent_twice_is_one_stop_and_a_later_one_ends_at_once() -> None:
    """GNU ``timeout`` signals its command, then the command's process group: two SIGTERMs.

    Before: the second, if it came after the first was handled, ended the server at
    once, its run recorded as stopped without a reason and no resume command said.
    """
    import subprocess
    import sys

    child = subprocess.run(
        [sys.executable, "-c", _TWICE], capture_output=True, text=True, timeout=60, check=False
    )
    assert child.stdout.splitlines() == ["stopping: SIGTERM", "still stopping"], child.stderr
    assert child.returncode == -signal.SIGTERM


_POLICY = """[policy]
columns = ["age"]
bounds = { age = [0, 110] }
min_group_size = 10
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("command", ["client", "site", "query"])
def test_sigterm_stops_covey_client_site_and_query_as_ctrl_c_does(
    tmp_path: Path, command: str, sig: signal.Signals
) -> None:
    """``docker stop`` of a client, a site or a query: it says so and exits 143.

    A site and a query said nothing before (killed by the signal, status -15).
    SIGINT is sent to one started with it ignored (``covey client ... &`` in a script).
    """
    import os
    import subprocess
    import sys
    import time

    port = unused_port()  # a port no one listens on: it keeps retrying
    apps = Path(__file__).parent / "apps"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(apps), *sys.path]), "COLUMNS": "250"}
    started = "could not connect"
    if command == "client":
        args = ["client", "--app", "tiny_app:client_fn", "--cid", "0"]
        said = "interrupted (SIGTERM): this client left the federation; start it again to rejoin"
    elif command == "query":
        args, started = ["query", "SELECT COUNT(*) FROM t", "--sites", "2"], "waiting for 2"
        said = "interrupted (SIGTERM): the query was not answered"
    else:
        import pandas as pd

        pd.DataFrame({"age": [30, 40, 50]}).to_csv(tmp_path / "a.csv", index=False)
        (tmp_path / "policy.toml").write_text(_POLICY)
        args = ["site", "--table", f"t={tmp_path / 'a.csv'}", "--policy"]
        args += [str(tmp_path / "policy.toml"), "--name", "a"]
        budget = tmp_path / "a.covey-budget.json"
        said = f"interrupted (SIGTERM): site a left; its privacy budget is kept in {budget}"
    log = tmp_path / "client.err"
    with log.open("w") as err:
        client = subprocess.Popen(
            [
                *(sys.executable, *(("-c", IGNORING_SIGINT) if sig == signal.SIGINT else ())),
                *("-m", "covey", *args, "--server", f"127.0.0.1:{port}", "--insecure"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 60
            while started not in log.read_text():
                assert client.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "it never tried to connect"
                time.sleep(0.05)
            client.send_signal(sig)
            code = client.wait(60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(10)
    text = undated(log.read_text())
    assert code == 128 + sig, text
    if sig == signal.SIGINT:  # as Ctrl-C says it
        said = said.replace("interrupted (SIGTERM)", "interrupted")
    assert "Traceback" not in text
    assert " ".join(text.strip().splitlines()[-1].split()) == said
    # dated as covey server's and covey client's lines are
    assert re.match(DATED_STAMP + r"\S", log.read_text().strip().splitlines()[-1])


def test_a_resumed_run_interrupted_before_its_next_round_says_why(tmp_path: Path) -> None:
    """``history.json`` (read by ``covey runs show`` and the dashboard) records the interrupt."""
    run_dir = tmp_path / "run"
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    serve(strategy, 0, {"w": np.zeros(2)}, "127.0.0.1:0", insecure=True, run_dir=run_dir)
    assert covey.History.load(run_dir).stopped_reason is None
    serve_interrupted(run_dir, resume=True)
    history = covey.History.load(run_dir)
    assert history.stopped_reason == "interrupted (SIGINT)"
    assert [r.round for r in history.rounds] == [0]


def test_a_command_run_in_process_leaves_sigterm_as_it_found_it() -> None:
    """`covey run` or `covey demo` called in a process that goes on (a test, a notebook)."""
    import threading

    from covey.core._interrupt import stopping_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    try:
        with stopping_on_sigterm():
            assert signal.getsignal(signal.SIGTERM) is not before
        assert signal.getsignal(signal.SIGTERM) is before
        with pytest.raises(RuntimeError), stopping_on_sigterm():
            raise RuntimeError("the run failed")
        assert signal.getsignal(signal.SIGTERM) is before
        # Stopped by SIGTERM: the process is ending; the same stop sent again is taken
        # for it, not left to kill the process before it said why it stopped.
        with pytest.raises(KeyboardInterrupt), stopping_on_sigterm():
            raise KeyboardInterrupt("SIGTERM")
        assert signal.getsignal(signal.SIGTERM) is not before
        signal.signal(signal.SIGTERM, before)
        errors: list[BaseException] = []

        def elsewhere() -> None:  # signal.signal() would raise off the main thread
            try:
                with stopping_on_sigterm():
                    pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(10)
        assert not errors
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, before)
