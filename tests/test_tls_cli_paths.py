"""TLS files and names of a deployed federation: each mistake named, none reaching outside.

A client that connected without TLS said nothing, while a server serving without
it warned. A folder where revoked.json (or ca.pem, a client's key, ca.key)
should be gave Python's "[Errno 21] Is a directory", or was reported missing. A
client name such as ``../x`` read the certificate files outside the folder's
``clients/``. A CA key protected by a password was "not an unencrypted PEM
private key", which did not say it was encrypted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

import covey
from _procs import undated
from covey.cli import app
from covey.deploy._client import tls_from_certs
from covey.deploy._tls import tls_from_dir
from covey.deploy.certs import init_federation, issue_client, load_revoked, renew_server

sys.path.insert(0, str(Path(__file__).parent))
from _live import Served

APPS = Path(__file__).parent / "apps"
FOLDER = "it is a folder, not a file"


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    root = init_federation(tmp_path / "fed").directory
    issue_client(root, "a")
    return root


def _covey(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def _folder_in_place_of(path: Path) -> None:
    path.unlink()
    path.mkdir()


# --- covey client --insecure ------------------------------------------------------------------


def test_covey_client_insecure_warns_once_on_standard_error(tmp_path: Path) -> None:
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 1, initial_weights={"w": np.zeros(8)})
    env = {**os.environ, "COLUMNS": "250"}
    src = Path(covey.__file__).parents[1]  # the covey under test, wherever the folder runs
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(src), os.environ.get("PYTHONPATH", "")])
    args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--retry-for", "30"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "covey",
            *args,
            "--server",
            f"127.0.0.1:{served.port}",
            "--insecure",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    served.join(60)
    assert run.returncode == 0, run.stderr
    said = f"connecting WITHOUT TLS: anyone on the way to 127.0.0.1:{served.port} can see"
    assert run.stderr.count("WITHOUT TLS") == 1, run.stderr
    assert said in run.stderr
    assert "WITHOUT TLS" not in run.stdout  # what a script reads is as it was
    assert undated(run.stderr).strip().splitlines()[-1].startswith("done: 1 task(s)"), run.stderr


def test_covey_site_insecure_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from covey.analytics import _cli

    (tmp_path / "t.csv").write_text("x\n1\n2\n")

    def joined(*args: Any) -> None:
        raise ValueError("no query server in this test")

    monkeypatch.setattr(_cli, "_serve_queries", joined)
    code, out = _covey(
        *("site", "--table", f"t={tmp_path / 't.csv'}", "--server", "127.0.0.1:1"),
        *("--insecure", "--name", "a", "--ledger", str(tmp_path / "a.json")),
    )
    assert code == 1, out
    assert "no query server in this test" in out
    # written by the site's own log handler, dated as its other lines
    assert out.count("WITHOUT TLS") == 1, out
    assert (
        "WARNING connecting WITHOUT TLS: anyone on the way to 127.0.0.1:1 can see the queries "
        "and the site's answers and pose as the server"
    ) in out


def test_covey_query_insecure_warns_as_covey_server_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from covey.transport import grpc as grpc_module

    def listening(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no listening in this test")

    monkeypatch.setattr(grpc_module, "GrpcServerTransport", listening)
    code, out = _covey(
        "query", "SELECT COUNT(*) FROM p", "--server", "127.0.0.1:9", "--insecure", "--no-secure"
    )
    assert code == 1, out
    assert out.count("WITHOUT TLS") == 1, out
    assert (
        "WARNING serving WITHOUT TLS: anyone who can reach 127.0.0.1:9 can join and see the "
        "query and the sites' answers"
    ) in out


# --- a folder where a file should be ----------------------------------------------------------


def test_a_revocation_list_that_is_a_folder_is_named_as_one(fed: Path) -> None:
    _folder_in_place_of(fed / "revoked.json")
    said = f"cannot read the revocation list {fed / 'revoked.json'}: {FOLDER}"
    for read in (load_revoked, tls_from_dir):
        with pytest.raises(IsADirectoryError) as refused:
            read(fed)
        assert str(refused.value) == said
    code, out = _covey("certs", "revoke", "a", "--dir", str(fed))
    assert code == 2, out
    assert said in out
    assert "Errno" not in out


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("ca.pem", "the CA certificate"),
        ("clients/a.pem", "the client certificate"),
        ("clients/a.key", "the client private key"),
    ],
)
def test_a_client_file_that_is_a_folder_is_named_as_one(fed: Path, name: str, what: str) -> None:
    # It was reported "not found", with a command to issue the certificate again.
    _folder_in_place_of(fed / name)
    with pytest.raises(IsADirectoryError) as refused:
        tls_from_certs(fed, "a")
    assert str(refused.value) == f"cannot read {what} {fed / name}: {FOLDER}"


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("ca.pem", "the CA certificate"),
        ("server.pem", "the server certificate"),
        ("server.key", "the server private key"),
    ],
)
def test_a_server_file_that_is_a_folder_is_named_as_one(
    fed: Path, name: str, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was "not a federation folder (missing ca.pem)".
    from covey.dashboard._server import tls_options

    monkeypatch.syspath_prepend(str(APPS))
    _folder_in_place_of(fed / name)
    said = f"cannot read {what} {fed / name}: {FOLDER}"
    for read in (tls_from_dir, tls_options):
        with pytest.raises(IsADirectoryError) as refused:
            read(fed)
        assert str(refused.value) == said
    code, out = _covey("server", "--app", "tiny_app:server_app", "--certs", str(fed))
    assert code == 2, out
    assert f"error: --certs {fed}: {said}" in out


def test_a_ca_file_that_is_a_folder_is_named_as_one(fed: Path) -> None:
    (fed / "ca.key").rename(fed / "ca.key.kept")
    (fed / "ca.key").mkdir()
    with pytest.raises(IsADirectoryError, match=r"ca\.key is a folder, not the CA private key"):
        issue_client(fed, "b")
    code, out = _covey("certs", "issue", "b", "--dir", str(fed))
    assert code == 2, out
    assert "ca.key is a folder, not the CA private key" in out
    _folder_in_place_of(fed / "ca.pem")
    with pytest.raises(IsADirectoryError, match=r"ca\.pem is a folder, not the federation's CA"):
        renew_server(fed)
    code, out = _covey("certs", "issue", "b", "--dir", str(fed))
    assert code == 2, out
    assert "ca.pem is a folder, not the federation's CA certificate" in out


# --- a client name that is a path --------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", "a\\b", "", ".", ".."])
def test_a_client_name_that_is_no_file_name_is_refused(fed: Path, name: str) -> None:
    # Outside clients/: a certificate and key put there were loaded as the client's.
    for suffix in (".pem", ".key"):
        shutil.copy(fed / "clients" / f"a{suffix}", fed / f"x{suffix}")
    with pytest.raises(ValueError, match=f"^client id {re.escape(repr(name))}: ") as refused:
        tls_from_certs(fed, name)
    assert "give the name its certificate was issued to" in str(refused.value)


@pytest.mark.parametrize("name", ["../x", "/etc/x", ""])
def test_covey_client_refuses_a_name_that_is_a_path(
    fed: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    code, out = _covey(
        *("client", "--app", "tiny_app:client_fn", "--cid", "0", "--server", "127.0.0.1:1"),
        *("--certs", str(fed), "--name", name),
    )
    assert code == 2, out
    assert f"error: --name {name!r}: " in out


def test_covey_site_refuses_a_name_that_is_a_path(fed: Path, tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("x\n1\n")
    code, out = _covey(
        *("site", "--table", f"t={tmp_path / 't.csv'}", "--server", "127.0.0.1:1"),
        *("--certs", str(fed), "--name", "../x", "--ledger", str(tmp_path / "a.json")),
    )
    assert code == 2, out
    assert "--name '../x': it holds the path separator '/'" in out


def test_a_client_name_of_the_federation_still_works(fed: Path) -> None:
    issue_client(fed, "site-1.b_2")
    assert (
        tls_from_certs(fed, "site-1.b_2").cert == (fed / "clients" / "site-1.b_2.pem").read_bytes()
    )


# --- an encrypted CA key -----------------------------------------------------------------------


def test_an_encrypted_ca_key_is_said_to_be_encrypted(fed: Path) -> None:
    key = serialization.load_pem_private_key((fed / "ca.key").read_bytes(), password=None)
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (fed / "ca.key").write_bytes(locked)
    said = r"ca\.key is encrypted \(protected by a password\); covey needs an unencrypted key"
    with pytest.raises(ValueError, match=said):
        issue_client(fed, "b")
    with pytest.raises(ValueError, match=said):
        renew_server(fed)
    code, out = _covey("certs", "issue", "b", "--dir", str(fed))
    assert code == 2, out
    assert "is encrypted (protected by a password); covey needs an unencrypted key" in out
    (fed / "ca.key").write_text("not a key\n")
    with pytest.raises(ValueError, match=r"ca\.key is not a PEM private key"):
        issue_client(fed, "b")
