"""SIGHUP (the terminal closed) stops ``covey server`` and ``covey client`` as SIGTERM does.

Before, SIGHUP kept its default: the process ended at once, as if killed. The
clients were not told, the run was left marked running (shown as crashed), and a
DP run was charged once more for a round on resume. Now it is taken as Ctrl-C:
the run ends marked ``interrupted (SIGHUP)``, the clients are told, and the
command exits with 129 (128 + 1).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _childenv import apps_env
from _killmatrix import saved_round, wait_for
from _procs import DATED_STAMP, undated
from covey.core._interrupt import INTERRUPTED_REASONS, shown_status
from covey.server._store import RunStore
from covey.transport.grpc import GrpcServerTransport

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="SIGHUP is POSIX's"),
    pytest.mark.timeout(300),
]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "covey", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _server(run: Path, port_file: Path, *, resume: bool) -> list[str]:
    where = ["--resume", str(run)] if resume else ["--run-dir", str(run)]
    return [
        *("server", "--app", "tiny_app:server_app", "--insecure", "--no-plot"),
        *("--address", "127.0.0.1:0", "--port-file", str(port_file), "--wait-timeout", "60"),
        *where,
    ]


def _clients(port: str, env: dict[str, str], tmp: Path, tag: str) -> list[subprocess.Popen[bytes]]:
    args = ["client", "--app", "tiny_app:client_fn", "--insecure", "--server", f"127.0.0.1:{port}"]
    return [_start([*args, "--cid", str(k)], env, tmp / f"client-{tag}{k}.log") for k in range(2)]


def test_sighup_stops_covey_server_as_sigterm_does(tmp_path: Path) -> None:
    # round 2 lasts long enough to be stopped in
    env = apps_env(COVEY_TINY_DELAY="3", COVEY_TINY_DELAY_ROUND="2")
    run, port_file = tmp_path / "run", tmp_path / "port"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server = _start(_server(run, port_file, resume=False), env, tmp_path / "server.log")
        procs.append(server)
        wait_for(lambda: port_file.is_file() and port_file.read_text().strip(), 60, "listening")
        clients = _clients(port_file.read_text().strip(), env, tmp_path, "a")
        procs += clients
        wait_for(lambda: saved_round(run) >= 1, 120, "round 1 to be saved")  # round 2 runs
        server.send_signal(signal.SIGHUP)
        code = server.wait(60)
        dated = (tmp_path / "server.log").read_text()
        assert re.match(DATED_STAMP + "interrupted", dated.strip().splitlines()[-1]), dated
        said = undated(dated)
        assert code == 129, said
        assert "Traceback" not in said
        assert (
            said.strip()
            .splitlines()[-1]
            .startswith(f"interrupted (SIGHUP): the run in {run} is kept")
        ), said
        with RunStore.open(run, exclusive=True) as store:  # let go of: it resumes
            assert store.status == "failed"
            (reason,) = [event[3] for event in store.events() if event[2] == "stopped"]
        assert reason == "interrupted (SIGHUP)"
        assert shown_status("failed", reason) == "interrupted"
        told = [tmp_path / f"client-a{k}.log" for k in range(2)]  # told, they reconnect
        wait_for(
            lambda: all("the server was interrupted" in t.read_text() for t in told), 60, "told"
        )
        assert all(client.poll() is None for client in clients)

        port = port_file.read_text().strip()
        port_file.unlink()
        again = _server(run, port_file, resume=True)  # on the port they reconnect to
        again[again.index("127.0.0.1:0")] = f"127.0.0.1:{port}"
        resumed = _start(again, env, tmp_path / "resumed.log")
        procs.append(resumed)
        assert resumed.wait(120) == 0, (tmp_path / "resumed.log").read_text()
        for client, log in zip(clients, told, strict=True):  # the same clients finish it
            assert client.wait(60) == 0, log.read_text()
        with RunStore.open(run) as store:
            assert store.status == "finished"
            assert store.last_round() == 2
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def test_sighup_stops_covey_client_as_sigterm_does(tmp_path: Path) -> None:
    transport = GrpcServerTransport("127.0.0.1:0")
    log = tmp_path / "client.log"
    args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--insecure"]
    try:
        client = _start([*args, "--server", f"127.0.0.1:{transport.port}"], apps_env(), log)
        try:
            assert transport.wait_for_clients(1, 60), log.read_text()
            client.send_signal(signal.SIGHUP)
            code = client.wait(60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(10)
    finally:
        transport.close()
    said = undated(log.read_text())
    assert code == 129, said
    assert " ".join(said.strip().splitlines()[-1].split()).endswith(
        "interrupted (SIGHUP): this client left the federation; start it again to rejoin"
    ), said


_NOHUP = """
import os, signal, time
from covey.core._interrupt import stop_on_sigterm

signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts a command
stop_on_sigterm()
os.kill(os.getpid(), signal.SIGHUP)
time.sleep(0.2)
print("still running", flush=True)
"""


def test_a_command_started_under_nohup_keeps_sighup_ignored() -> None:
    child = subprocess.run(
        [sys.executable, "-c", _NOHUP],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=apps_env(),
    )
    assert (child.returncode, child.stdout) == (0, "still running\n"), child.stderr


def test_how_each_stop_exits_and_is_said() -> None:
    from covey.core._interrupt import exit_code, interrupted_how

    stops = [KeyboardInterrupt(), KeyboardInterrupt("SIGTERM"), KeyboardInterrupt("SIGHUP")]
    assert [exit_code(stop) for stop in stops] == [130, 143, 129]
    assert [interrupted_how(stop) for stop in stops] == [
        "interrupted",
        "interrupted (SIGTERM)",
        "interrupted (SIGHUP)",
    ]
    assert "interrupted (SIGHUP)" in INTERRUPTED_REASONS
