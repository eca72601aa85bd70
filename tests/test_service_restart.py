"""``covey server`` and ``covey client`` under a service manager that restarts them.

systemd's ``Restart=on-failure`` runs one fixed command line again: the server's
must start a run the first time and resume it after a crash
(``--run-dir X --resume-if-present``), and clients must outlive a server that is
stopped and started again (``systemctl restart``) rather than exit with it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _childenv import apps_env
from _killmatrix import saved_round, wait_for
from _ports import unused_port
from _procs import CoveyProcesses, undated
from covey.server._store import RunStore

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.timeout(300),
]


def _server(run: Path, address: str, *more: str) -> list[str]:
    """The one command line of the service: start the run in ``run``, or resume it."""
    return [
        *("server", "--app", "tiny_app:server_app", "--insecure", "--no-plot"),
        *("--address", address, "--wait-timeout", "60", "--run-dir", str(run)),
        "--resume-if-present",
        *more,
    ]


def _client(address: str, k: int) -> list[str]:
    return [
        *("client", "--app", "tiny_app:client_fn", "--insecure", "--server", address),
        *("--cid", str(k), "--retry-for", "120"),
    ]


def _signalled_in_round_2(
    procs: CoveyProcesses, run: Path, address: str, sig: signal.Signals
) -> tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]:
    """The service's server and two clients, the server sent ``sig`` once round 2 trains."""
    first = procs._spawn(_server(run, address), "server-1.log")
    clients = [procs._spawn(_client(address, k), f"client-{k}.log") for k in range(2)]
    wait_for(lambda: saved_round(run) >= 1, 120, "round 1 to be saved")  # round 2 trains
    first.send_signal(sig)
    return first, clients


def test_one_command_line_starts_the_run_and_resumes_it_after_a_kill(tmp_path: Path) -> None:
    procs = CoveyProcesses(tmp_path, apps_env(COVEY_TINY_DELAY="2", COVEY_TINY_DELAY_ROUND="2"))
    run, address = tmp_path / "run", f"127.0.0.1:{unused_port()}"
    try:
        first, clients = _signalled_in_round_2(procs, run, address, signal.SIGKILL)
        first.wait(30)
        last = saved_round(run)
        again = procs._spawn(_server(run, address), "server-2.log")  # the same command
        assert again.wait(180) == 0, procs.log("server-2.log")
        said = undated(procs.log("server-2.log"))
        assert "run finished after round 2" in said, said
        first_line = next(line for line in said.splitlines() if "WARNING" not in line)
        assert first_line == f"resuming run {run} after round {last} (of 2)", said
        for k, client in enumerate(clients):  # the same processes, back with the server
            assert client.wait(60) == 0, procs.log(f"client-{k}.log")
        with RunStore.open(run) as store:
            assert store.status == "finished"
            assert store.last_round() == 2
    finally:
        procs.close()


def _covey(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "covey", *args],
        env=apps_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_run_of_another_app_is_refused_as_resume_refuses_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    started = _covey([*_server(run, "127.0.0.1:0"), "--rounds", "0"], tmp_path)
    assert started.returncode == 0, started.stderr
    other = ["--app", "held_app:server_app", "--insecure", "--no-plot", "--rounds", "2"]
    other += ["--address", "127.0.0.1:0"]
    resumed = _covey(["server", "--resume", str(run), *other], tmp_path)
    present = _covey(["server", "--run-dir", str(run), "--resume-if-present", *other], tmp_path)
    assert resumed.returncode == present.returncode == 2, (resumed.stderr, present.stderr)
    assert "do not have the layout of the model the run in" in present.stderr
    assert undated(present.stderr) == undated(resumed.stderr)


OWN_LOOP = """
from covey.deploy import ServerApp

def server():
    return ServerApp(main=lambda transport: None)
"""


@pytest.mark.parametrize(
    "named",
    [
        ["--app", "tiny_app:server_app"],
        ["--app", "tiny_app"],  # no object named
        ["--app", "own_loop:server"],  # ServerApp(main=...)
        ["--app", "own_loop:missing"],
        ["--app", "no_such_module:server"],
        ["--config", "server.toml"],  # app = "own_loop:server"
    ],
)
def test_resume_if_present_without_run_dir_is_refused_first_for_any_app(
    tmp_path: Path, named: list[str]
) -> None:
    """However the app is named (or whether it loads), the flag's own mistake is named first."""
    (tmp_path / "own_loop.py").write_text(OWN_LOOP)
    (tmp_path / "server.toml").write_text('[server]\napp = "own_loop:server"\n')
    refused = _covey(["server", *named, "--insecure", "--resume-if-present"], tmp_path)
    assert refused.returncode == 2, refused.stderr
    last = " ".join(undated(refused.stderr).strip().splitlines()[-1].split())
    assert last.startswith("error: --resume-if-present needs --run-dir PATH"), refused.stderr
    # an app with main= would then refuse --run-dir: the message says so up front
    assert last.endswith(
        "(an --app whose ServerApp has main= keeps no run folder: leave the flag out for it)"
    ), refused.stderr


def test_resume_if_present_needs_run_dir_and_no_resume(tmp_path: Path) -> None:
    bare = ["server", "--app", "tiny_app:server_app", "--insecure", "--resume-if-present"]
    alone = _covey(bare, tmp_path)
    assert alone.returncode == 2
    assert "--resume-if-present needs --run-dir PATH" in " ".join(alone.stderr.split())
    (tmp_path / "run").mkdir()
    both = _covey([*bare, "--resume", str(tmp_path / "run")], tmp_path)
    assert both.returncode == 2
    assert "--resume-if-present goes with --run-dir" in " ".join(both.stderr.split())


def test_clients_outlive_a_server_stopped_and_started_again(tmp_path: Path) -> None:
    procs = CoveyProcesses(tmp_path, apps_env(COVEY_TINY_DELAY="2", COVEY_TINY_DELAY_ROUND="2"))
    run, address = tmp_path / "run", f"127.0.0.1:{unused_port()}"
    try:
        # systemctl restart: a graceful stop
        first, clients = _signalled_in_round_2(procs, run, address, signal.SIGTERM)
        assert first.wait(60) == 143, procs.log("server-1.log")
        # told its own command line, the service's, not --resume's
        hint = f"`covey server --run-dir {run} --resume-if-present --app tiny_app:server_app"
        assert hint in " ".join(procs.log("server-1.log").split()), procs.log("server-1.log")
        last = saved_round(run)
        told = [f"client-{k}.log" for k in range(2)]
        wait_for(
            lambda: all("the server was interrupted" in procs.log(t) for t in told), 120, "told"
        )
        assert all(client.poll() is None for client in clients), [procs.log(t) for t in told]
        again = procs._spawn(_server(run, address), "server-2.log")
        assert again.wait(180) == 0, procs.log("server-2.log")
        said = undated(procs.log("server-2.log"))
        assert f"resuming run {run} after round {last} (of 2)\n" in said, said
        for k, client in enumerate(clients):  # the same processes finish the run
            said = undated(procs.log(f"client-{k}.log"))
            assert client.wait(60) == 0, said
            assert not any(line.startswith("stopped:") for line in said.splitlines()), said
            assert "server said: the run is over" in said, said
        with RunStore.open(run) as store:
            assert store.status == "finished"
            assert store.last_round() == 2
    finally:
        procs.close()


def test_a_client_ends_once_an_interrupted_server_stays_away(tmp_path: Path) -> None:
    procs = CoveyProcesses(tmp_path, apps_env(COVEY_TINY_DELAY="2", COVEY_TINY_CLIENTS="1"))
    run, address = tmp_path / "run", f"127.0.0.1:{unused_port()}"
    try:
        server = procs._spawn(_server(run, address), "server.log")
        args = [*_client(address, 0)[:-2], "--retry-for", "3"]
        client = procs._spawn(args, "client.log")
        wait_for(lambda: saved_round(run) >= 0, 120, "round 0 to be saved")
        wait_for(lambda: "task" in procs.log("client.log") or saved_round(run) >= 1, 60, "a task")
        server.send_signal(signal.SIGTERM)  # stopped for good: no server comes back
        assert server.wait(60) == 143, procs.log("server.log")
        assert client.wait(120) == 1, procs.log("client.log")
        said = " ".join(undated(procs.log("client.log")).split())
        assert "the server was interrupted" in said, said
        assert f"could not reconnect to {address}" in said, said
        assert "waiting for it to come back for up to 3 s (--retry-for" in said, said
        last = undated(procs.log("client.log")).strip().splitlines()[-1]
        assert last.startswith(f"error: gave up on {address}: the server was interrupted"), last
        assert "did not come back within 3 s (--retry-for" in last, last
    finally:
        procs.close()


def test_a_client_says_it_waits_for_an_interrupted_server_and_why_it_gave_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from types import SimpleNamespace

    from covey.transport.grpc._attempt import INTERRUPTED, retry_delay
    from covey.transport.grpc._refusal import RetryBudget
    from covey.transport.grpc._tasks import ConnectResult

    address = "127.0.0.1:9"
    budget = RetryBudget(backoff=0.01, max_backoff=0.01, retry_for=90.0, max_attempts=2)
    result = ConnectResult()
    result.sessions = 1
    session = SimpleNamespace(welcomed=True, welcomed_at=0.0, received=1)
    with caplog.at_level("WARNING", logger="covey"):
        retry_delay(budget, session, result, 0, address, INTERRUPTED)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"connection to {address} lost: the server was interrupted before its" in said, said
    assert "waiting for it to come back for up to 90 s (--retry-for, retry_for)" in said, said
    refused = "StatusCode.UNAVAILABLE: failed to connect"
    session = SimpleNamespace(welcomed=False)
    with pytest.raises(ConnectionError) as gave_up:
        retry_delay(budget, session, result, 1, address, refused)
    assert str(gave_up.value) == (
        f"gave up on {address}: the server was interrupted before its run was over and did "
        "not come back after 2 attempt(s) (max_attempts); 2 attempt(s) to reconnect failed "
        f"(the last attempt: {refused})"
    )


def test_the_documented_unit_does_not_restart_a_server_that_refuses() -> None:
    # a server killed after its run finished is refused with status 2 when started again;
    # under Restart=on-failure alone systemd would start it again until its start limit
    docs = (Path(__file__).parent.parent / "docs" / "deployment.md").read_text()
    units = [b for b in docs.split("```ini")[1:] if "--resume-if-present" in b.split("```")[0]]
    assert units, "the unit running covey server --resume-if-present"
    for unit in units:
        lines = unit.split("```")[0].splitlines()
        assert "Restart=on-failure" in lines, unit
        assert "RestartPreventExitStatus=2" in lines, unit
