"""A file the user names that is a named pipe is refused at once, never waited on."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer

from _clirun import covey, in_tmp
from covey.cli._project_files import read_project
from covey.deploy._cli_errors import TomlFileError, read_toml_file
from covey.deploy._client import client_tls
from covey.deploy._pem import read_pem
from covey.deploy._tls import tls_from_dir
from covey.deploy.certs import (
    init_federation,
    issue_client,
    list_clients,
    load_revoked,
    renew_server,
    revoke,
)

__all__ = ["in_tmp"]

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")


def _unblocked(call: Callable[[], Any], pipe: Path) -> Any:
    """What ``call`` returns or raises; a failure if it waits on the named pipe ``pipe``."""
    said: list[Any] = []

    def run() -> None:
        try:
            said.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            said.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # let the blocked reader go before failing
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(30)
        pytest.fail(f"reading {pipe} waited for a writer of the named pipe")
    return said[0]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_a_pem_file_that_is_a_named_pipe_is_refused(tmp_path: Path) -> None:
    pipe = _fifo(tmp_path / "ca.pem")
    refused = _unblocked(lambda: read_pem(pipe, "the CA certificate"), pipe)
    assert isinstance(refused, OSError), refused
    assert str(refused) == (
        f"cannot read the CA certificate {pipe}: a named pipe that no process writes, "
        "not a file: give the file itself"
    )


@pytest.mark.parametrize("which", ["ca", "cert", "key"])
def test_client_tls_refuses_a_named_pipe_for_each_file(tmp_path: Path, which: str) -> None:
    fed = tmp_path / "fed"
    init_federation(fed)
    paths = issue_client(fed, "site-1")
    files = {"ca": paths.ca, "cert": paths.cert, "key": paths.key}
    pipe = _fifo(tmp_path / f"{which}.pipe")
    files[which] = pipe
    refused = _unblocked(lambda: client_tls(files["ca"], files["cert"], files["key"]), pipe)
    assert isinstance(refused, OSError), refused
    assert f"{pipe}: a named pipe that no process writes" in str(refused)


def test_a_federation_folder_whose_ca_is_a_named_pipe_is_refused(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    init_federation(fed)
    (fed / "ca.pem").unlink()
    pipe = _fifo(fed / "ca.pem")
    refused = _unblocked(lambda: tls_from_dir(fed), pipe)
    assert isinstance(refused, OSError), refused
    assert f"cannot read the CA certificate {pipe}: a named pipe" in str(refused)


def test_a_settings_file_that_is_a_named_pipe_is_refused(tmp_path: Path) -> None:
    pipe = _fifo(tmp_path / "settings.toml")
    refused = _unblocked(lambda: read_toml_file(pipe, "the TOML file"), pipe)
    assert isinstance(refused, TomlFileError), refused
    assert "a named pipe that no process writes" in str(refused)


@pytest.mark.usefixtures("in_tmp")
@pytest.mark.parametrize("command", ["server", "client"])
def test_config_that_is_a_named_pipe_is_refused_naming_the_flag(
    tmp_path: Path, command: str
) -> None:
    pipe = _fifo(tmp_path / "settings.toml")
    code, out = _unblocked(lambda: covey(command, "--config", "settings.toml"), pipe)
    assert code == 2, out
    assert "error: --config settings.toml: cannot read it (a named pipe that no process " in out


@pytest.mark.usefixtures("in_tmp")
def test_client_ca_that_is_a_named_pipe_is_refused_naming_the_flag(tmp_path: Path) -> None:
    pipe = _fifo(tmp_path / "ca.pem")
    args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--ca", "ca.pem"]
    code, out = _unblocked(lambda: covey(*args, "--server", "127.0.0.1:1"), pipe)
    assert code == 2, out
    flat = " ".join(out.split())
    assert "error: --ca: cannot read the CA certificate ca.pem: a named pipe" in flat, out


def test_a_project_whose_pyproject_is_a_named_pipe_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = _fifo(tmp_path / "pyproject.toml")
    refused = _unblocked(lambda: read_project(tmp_path), pipe)
    assert isinstance(refused, typer.Exit), refused  # covey's error, exit 2
    assert "a named pipe that no process writes" in " ".join(capsys.readouterr().err.split())


@pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="no /dev/fd")
def test_a_pipe_a_process_writes_is_read_as_a_file(tmp_path: Path) -> None:
    # --config <(...): the shell hands a pipe a process writes; it is read whole.
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"[server]\nrounds = 2\n")
        os.close(write_end)
        assert read_toml_file(Path(f"/dev/fd/{read_end}"), "the TOML file") == {
            "server": {"rounds": 2}
        }
    finally:
        os.close(read_end)


def _federation(tmp_path: Path) -> Path:
    fed = tmp_path / "fed"
    init_federation(fed, hosts=["localhost"])
    issue_client(fed, "site-1")
    return fed


def test_listing_clients_takes_a_named_pipe_for_a_certificate_as_unreadable(
    tmp_path: Path,
) -> None:
    fed = _federation(tmp_path)
    pipe = _fifo(fed / "clients" / "site-2.pem")
    listed = _unblocked(lambda: list_clients(fed), pipe)
    assert [(c.client_id, c.status) for c in listed] == [
        ("site-1", "valid"),
        ("site-2", "unreadable"),
    ]


def test_a_revocation_list_that_is_a_named_pipe_is_refused(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    (fed / "revoked.json").unlink()
    pipe = _fifo(fed / "revoked.json")
    refused = _unblocked(lambda: load_revoked(fed), pipe)
    assert isinstance(refused, OSError), refused
    assert str(refused) == (
        f"cannot read the revocation list {pipe}: a named pipe that no process writes, "
        "not a file: give the file itself"
    )


def test_a_revocation_list_too_large_is_refused(tmp_path: Path) -> None:
    from covey.deploy.certs._revocation import MAX_REVOKED_BYTES

    fed = _federation(tmp_path)
    (fed / "revoked.json").write_bytes(b" " * (MAX_REVOKED_BYTES + 1))
    with pytest.raises(ValueError, match=r"revoked\.json is larger than 16,777,216 bytes"):
        load_revoked(fed)


def test_issuing_over_a_named_pipe_certificate_is_refused_naming_it(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    pipe = _fifo(fed / "clients" / "site-2.pem")
    refused = _unblocked(lambda: issue_client(fed, "site-2"), pipe)
    assert isinstance(refused, OSError), refused
    assert f"cannot read the client certificate {pipe}: a named pipe" in str(refused)


def test_revoking_a_serial_passes_over_a_named_pipe_in_clients(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    (site,) = list_clients(fed)
    pipe = _fifo(fed / "clients" / "a-pipe.pem")  # read before site-1.pem
    serial = site.serial
    assert serial is not None
    assert _unblocked(lambda: revoke(fed, serial), pipe) == serial
    assert serial in load_revoked(fed)


def test_renewing_the_server_with_a_named_pipe_for_its_certificate_is_refused(
    tmp_path: Path,
) -> None:
    fed = _federation(tmp_path)
    (fed / "server.pem").unlink()
    pipe = _fifo(fed / "server.pem")
    refused = _unblocked(lambda: renew_server(fed), pipe)
    assert isinstance(refused, ValueError), refused
    assert f"cannot read the hosts of {pipe}: give them (--host)" in str(refused)
