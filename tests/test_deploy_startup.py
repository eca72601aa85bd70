"""What ``covey server``, ``covey client`` and ``covey certs`` say about their files and peers."""

from __future__ import annotations

import datetime as _dt
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from _procs import undated
from covey.cli import app
from covey.deploy._client import tls_from_certs
from covey.deploy._keymode import warn_if_open
from covey.deploy._tls import tls_from_dir
from covey.deploy.certs import init_federation, issue_client
from covey.deploy.certs._common import cert_to_pem, key_to_pem, load_ca, sign

APPS = Path(__file__).parent / "apps"
POSIX = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    directory = init_federation(tmp_path / "fed").directory
    issue_client(directory, "site-a")
    return directory


def _future_server_pair(fed: Path) -> None:
    """Give ``fed`` a server certificate (and key) valid only from an hour from now."""
    ca_cert, ca_key = load_ca(fed)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _dt.datetime.now(_dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + _dt.timedelta(hours=1))
        .not_valid_after(now + _dt.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    )
    (fed / "server.pem").write_bytes(cert_to_pem(sign(builder, ca_key)))
    (fed / "server.key").write_bytes(key_to_pem(key))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes connections and never says a word on them."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    taken: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                taken.append(listener.accept()[0])
            except OSError:  # the accept timed out, or the listener closed
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        done.set()
        thread.join(5)
        listener.close()
        for conn in taken:
            conn.close()


def test_a_client_gives_up_on_a_silent_server_within_retry_for(silent_port: int) -> None:
    # Each attempt waited gRPC's ~20 s for the HTTP/2 (or TLS) set-up a silent peer never
    # finishes: --retry-for 3 ended after two such attempts, some 44 s. An attempt is now
    # bounded by what is left of --retry-for (at least 5 s).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS), *sys.path]), "COLUMNS": "250"}
    run = [sys.executable, "-m", "covey", "client", "--app", "tiny_app:client_fn", "--cid", "0"]
    where = ["--server", f"127.0.0.1:{silent_port}", "--insecure", "--retry-for", "3"]
    # A generous bound, well under the old ~44 s: a slow machine does not fail it.
    out = subprocess.run([*run, *where], capture_output=True, text=True, timeout=25, env=env)
    assert out.returncode == 1, out.stderr  # given up after --retry-for, as documented
    line = undated(out.stderr).strip().splitlines()[-1]
    assert line.startswith(f"error: could not connect to 127.0.0.1:{silent_port} after 1 ")
    assert "no answer from the server within " in line


@POSIX
def test_a_key_others_can_read_is_warned_of_once_naming_the_fix(
    fed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = fed / "clients" / "site-a.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600  # as `covey certs` writes keys
    assert stat.S_IMODE((fed / "server.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((fed / "ca.key").stat().st_mode) == 0o600
    tls_from_dir(fed)
    tls_from_certs(fed, "site-a")
    issue_client(fed, "site-b")
    assert "chmod" not in caplog.text
    for path in (key, fed / "server.key", fed / "ca.key"):
        path.chmod(0o644)
    tls_from_dir(fed)
    tls_from_certs(fed, "site-a")
    issue_client(fed, "site-c")
    said = [r.getMessage() for r in caplog.records if "chmod" in r.getMessage()]
    assert len(said) == 3, said
    assert said[0] == (
        f"the server's private key {fed / 'server.key'} can be read by other users (mode "
        f"0644): anyone who reads it can pose as its owner; make it private with "
        f"`chmod 600 {fed / 'server.key'}`"
    )
    assert f"the client's private key {key} can be read by other users (mode 0644)" in said[1]
    assert f"the federation's CA private key {fed / 'ca.key'} " in said[2]
    key.chmod(0o620)
    assert warn_if_open(key, "a key")
    assert "can be changed by its group (mode 0620)" in caplog.records[-1].getMessage()


@POSIX
def test_the_server_warns_of_its_open_key_and_a_future_certificate_once(
    fed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI read the folder to check it, and serve() read it again: every warning
    # about its files was printed twice.
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(APPS))
    monkeypatch.setenv("COLUMNS", "250")
    _future_server_pair(fed)
    (fed / "server.key").chmod(0o644)
    result = CliRunner().invoke(
        app,
        [
            "server", "--app", "tiny_app:server_app", "--certs", str(fed),
            "--address", "127.0.0.1:0", "--wait-timeout", "1", "--run-dir", "run",
        ],
    )  # fmt: skip
    out = result.output
    assert "listening on port" in out, out
    assert out.count("server.pem is not valid before") == 1, out
    assert out.count(f"chmod 600 {fed / 'server.key'}") == 1, out
