"""``--log-level`` on ``covey server`` and ``covey client``: which records reach standard error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from _childenv import apps_env
from _ports import unused_port
from _procs import undated
from covey.transport.grpc import GrpcServerTransport

pytestmark = pytest.mark.timeout(300)


def _covey(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "covey", *args],
        env=apps_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _client(tmp_path: Path, *more: str) -> subprocess.CompletedProcess[str]:
    nowhere = f"127.0.0.1:{unused_port()}"  # nothing listens: the client gives up
    args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--insecure"]
    return _covey(*args, "--server", nowhere, "--retry-for", "0.5", *more, cwd=tmp_path)


def test_client_log_level_error_leaves_warnings_out(tmp_path: Path) -> None:
    default = _client(tmp_path)
    assert default.returncode == 1, default.stderr
    assert "WARNING connecting WITHOUT TLS" in default.stderr
    quiet = _client(tmp_path, "--log-level", "error")
    assert quiet.returncode == 1, quiet.stderr
    said = undated(quiet.stderr)
    assert "WARNING" not in said, said
    assert said.startswith("error: could not connect to"), said  # the ending is still said


def _told_goodbye(tmp_path: Path, *more: str) -> str:
    """What ``covey client`` logs joining a server that says goodbye at once."""
    transport = GrpcServerTransport("127.0.0.1:0")
    try:
        args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--insecure", *more]
        client = subprocess.Popen(
            [sys.executable, "-m", "covey", *args, "--server", f"127.0.0.1:{transport.port}"],
            env=apps_env(),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert transport.wait_for_clients(1, 60)
            transport.close("the run is over")
            _, err = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(10)
    finally:
        transport.close()
    assert client.returncode == 0, err
    return undated(err)


def test_client_log_level_info_logs_as_verbose_does(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text('[client]\nlog_level = "INFO"\n')
    goodbye = "INFO the server said goodbye: the run is over"
    assert goodbye not in _told_goodbye(tmp_path)
    for flags in (["--log-level", "info"], ["-v"], ["--config", str(config)]):
        said = _told_goodbye(tmp_path, *flags)
        assert goodbye in said, (flags, said)


def test_server_log_level_error_leaves_warnings_out(tmp_path: Path) -> None:
    args = ["server", "--app", "tiny_app:server_app", "--insecure", "--no-plot", "--rounds", "0"]
    args += ["--address", "127.0.0.1:0"]
    default = _covey(*args, "--run-dir", "a", cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    assert "WARNING serving WITHOUT TLS" in default.stderr
    quiet = _covey(*args, "--run-dir", "b", "--log-level", "error", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    said = undated(quiet.stderr)
    assert "WARNING" not in said, said
    assert "run finished after round 0" in said, said  # the console's lines stay


@pytest.mark.parametrize("command", ["server", "client"])
def test_an_unknown_log_level_is_refused_naming_the_levels(tmp_path: Path, command: str) -> None:
    done = _covey(command, "--log-level", "loud", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert "--log-level 'loud': give one of debug, info, warning, error" in said, said
