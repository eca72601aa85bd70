"""`covey client` and `covey server`: clean exits, clear refusals, checked addresses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.deploy.certs import init_federation, issue_client, revoke

sys.path.insert(0, str(Path(__file__).parent))
from _live import Served
from _ports import unused_port

APPS = Path(__file__).parent / "apps"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), env.get("PYTHONPATH", "")])
    return env


def _client(port: int, k: int, *extra: str) -> subprocess.Popen[str]:
    args = ["client", "--app", "tiny_app:client_fn", "--cid", str(k)]
    args += ["--server", f"127.0.0.1:{port}", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "covey", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    """Wait for ``proc`` to exit by itself; kill it (and fail) if it does not."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(f"covey client did not exit by itself:\n{out[-3000:]}") from None
    return proc.returncode, out


def _until(proc: subprocess.Popen[str], text: str) -> str:
    """What ``proc`` printed up to and including its first line holding ``text``."""
    assert proc.stdout is not None
    seen = ""
    while text not in seen:
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise AssertionError(f"the client exited before printing {text!r}:\n{seen}")
        seen += line
    return seen


def _client_first(k: int, *extra: str) -> tuple[subprocess.Popen[str], int, str]:
    """``covey client`` started before its server: the process, the port it dials, its output.

    Returns once the client is past its imports and retrying the port, so that a
    server started then on the port, with a short wait for clients, sees it join
    even on a loaded machine (where starting the command can take seconds).
    """
    port = unused_port()  # dialled before anything listens there
    proc = _client(port, k, *extra)
    try:
        return proc, port, _until(proc, "retrying")
    except BaseException:
        _reap(proc)
        raise


def _reap(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if it still runs (a failed test), and wait for it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_the_client_command_exits_by_itself_every_time() -> None:
    strategy = covey.FedAvg(min_available_clients=4, min_fit_clients=4, fraction_evaluate=0.0)
    for _ in range(3):  # 12 runs of the command
        served = Served(strategy, 2, initial_weights={"w": np.zeros(8)})
        procs = [_client(served.port, k, "--insecure", "--name", f"c{k}") for k in range(4)]
        served.join(90)
        for proc in procs:
            code, out = _finish(proc)
            assert code == 0, out
            assert "done: 2 task(s)" in out


def test_a_revoked_client_exits_at_once_naming_the_cause(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    init_federation(fed)
    issue_client(fed, "gone")
    revoke(fed, "gone")
    proc, port, seen = _client_first(0, "--certs", str(fed), "--name", "gone")
    try:
        served = Served(covey.FedAvg(), 1, certs=fed, wait_timeout=5, address=f"127.0.0.1:{port}")
        code, out = _finish(proc)
    finally:
        _reap(proc)
    assert code == 2, seen + out
    assert "revoked" in out
    with pytest.raises(covey.FederationError, match="only 0 of the 2 clients"):
        served.join(30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server", "localhost"], "no port"),
        (["--server", "127.0.0.1:99999"], "between 1 and 65535"),
    ],
)
def test_client_addresses_are_checked(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    result = CliRunner().invoke(
        app, ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--insecure", *args]
    )
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("address", "message"),
    [("127.0.0.1:99999", "between 0 and 65535"), (":9092", "not a host")],
)
def test_a_bad_server_address_leaves_no_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, address: str, message: str
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            *("server", "--app", "tiny_app:server_app", "--insecure"),
            *("--address", address, "--run-dir", str(run)),
        ],
    )
    assert result.exit_code == 2
    assert message in result.output
    assert not run.exists()


def test_the_client_refuses_a_task_larger_than_its_cap() -> None:
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 1, initial_weights={"w": np.zeros(4096)}, round_timeout=5)
    # The client tells the server why and stops for good (exit 2, a refusal): it used
    # to hang up, then reconnect and fetch the same model again, round after round,
    # while the server read only that it had disconnected.
    code, out = _finish(
        _client(served.port, 0, "--insecure", "--max-task-mb", "0.01", "--retry-for", "30")
    )
    assert code == 2, out
    said = " ".join(out.split())  # rich wraps lines
    assert "more than this client accepts (10485 bytes)" in said
    assert "raise --max-task-mb" in said
    with pytest.raises(covey.FederationError) as info:
        served.join(60)
    assert "more than this client accepts (10485 bytes)" in str(info.value)


def test_the_client_task_cap_is_told_in_the_mib_it_is_read_in() -> None:
    # --max-task-mb 1 is 1024 * 1024 bytes; the help said "this many MB" and "default 4096"
    shown = CliRunner().invoke(app, ["client", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    said = " ".join(shown.output.replace("│", " ").split())
    assert "more than this many MiB (2**20 bytes) of arrays (default 4096 MiB, 4 GiB;" in said
    assert " MB " not in said


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("0", "--max-task-mb must be a number above 0, got 0.0"),
        ("nan", "--max-task-mb must be a number above 0, got nan"),
        # Was a bare OverflowError (its bytes are no integer).
        ("inf", "--max-task-mb must be a number above 0, got inf"),
        ("1e308", "--max-task-mb must be at most 1,099,511,627,776 (an exbibyte), got 1e+308"),
    ],
)
def test_the_client_task_cap_must_be_a_size(
    monkeypatch: pytest.MonkeyPatch, value: str, said: str
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--insecure"]
    result = CliRunner().invoke(app, [*args, "--server", "127.0.0.1:9", "--max-task-mb", value])
    assert result.exit_code == 2
    assert said in result.output


@pytest.mark.parametrize("value", ["true", "1e308"])
def test_the_client_task_cap_in_a_config_file_must_be_a_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # true was taken as 1 MB, and 1e308 raised an OverflowError.
    monkeypatch.syspath_prepend(str(APPS))
    settings = tmp_path / "client.toml"
    settings.write_text(f"[client]\nmax_task_mb = {value}\n")
    args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--insecure"]
    args += ["--server", "127.0.0.1:9", "--config", str(settings)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"client.max_task_mb in {settings} must be" in result.output


def test_the_client_exits_non_zero_when_the_run_stops_without_finishing() -> None:
    """A supervisor must tell a failed or interrupted run from a finished one."""
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)
    proc, port, seen = _client_first(0, "--insecure", "--name", "lonely")
    try:
        served = Served(
            strategy,
            1,
            initial_weights={"w": np.zeros(8)},
            wait_timeout=5,
            address=f"127.0.0.1:{port}",
        )
        code, out = _finish(proc)
    finally:
        _reap(proc)
    with pytest.raises(covey.FederationError):
        served.join(60)
    assert code == 1, seen + out
    assert "stopped: round 1: only 1 of the 2 clients" in " ".join(out.split())


def test_the_client_exits_zero_when_the_run_finishes() -> None:
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 1, initial_weights={"w": np.zeros(8)})
    code, out = _finish(_client(served.port, 0, "--insecure"))
    served.join(60)
    assert code == 0, out
    assert "done: 1 task(s)" in out


def test_ctrl_c_on_the_client_says_it_left() -> None:
    proc, _, seen = _client_first(0, "--insecure")  # nobody listens: the client keeps retrying
    try:  # connect() runs: past the imports, in its backoff
        proc.send_signal(signal.SIGINT)
        code, out = _finish(proc, 60)
    finally:
        _reap(proc)
    assert code == 130, seen + out
    assert "Traceback" not in seen + out
    assert "interrupted: this client left the federation" in " ".join(out.split())
