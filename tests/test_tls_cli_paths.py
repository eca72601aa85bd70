"""TLS files and names of a deployed federation: each mistake named, none reaching outside.

A client that connected without TLS said nothing, while a server serving without
it warned. A folder where revoked.json (or ca.pem, a client's key, ca.key)
should be gave Python's "[Errno 21] Is a directory", or was reported missing. A
client name such as ``../x`` read the certificate files outside the folder's
``clients/``. A CA key protected by a password was "not an unencrypted PEM
private key", which did not say it was encrypted.
"""

from __future__ import annotations

import logging
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
