"""Federation files mixed up between folders: refused before any connection, naming the file.

A server given another federation's server.pem and server.key started, and
every client was then refused at the handshake, told only that the server's
certificate was not trusted. A client whose ca.pem had expired dialled the
server and was told its certificate came from another federation.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from covey.deploy._client import client_tls, tls_from_certs
from covey.deploy._tls import tls_from_dir
from covey.deploy.certs import init_federation, issue_client, renew_server
from covey.deploy.certs._common import cert_to_pem, sign


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    return init_federation(tmp_path / "fed").directory


def test_a_server_certificate_of_another_federation_is_refused(fed: Path, tmp_path: Path) -> None:
    other = init_federation(tmp_path / "other").directory
    for name in ("server.pem", "server.key"):
        shutil.copy(other / name, fed / name)
    with pytest.raises(ValueError, match=r"server\.pem was not issued by the CA in .*ca\.pem"):
        tls_from_dir(fed)
    renew_server(fed)  # the fix the error names
    assert tls_from_dir(fed).cert == (fed / "server.pem").read_bytes()


def test_a_client_with_an_expired_ca_refuses_to_start(fed: Path, tmp_path: Path) -> None:
    issue_client(fed, "site")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old federation")])
    now = _dt.datetime.now(_dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=10))
        .not_valid_after(now - _dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    (fed / "ca.pem").write_bytes(cert_to_pem(sign(builder, key)))
    with pytest.raises(ValueError, match=r"ca\.pem expired at .* UTC"):
        tls_from_certs(fed, "site")
    with pytest.raises(ValueError, match=r"ca\.pem expired at"):
        client_tls(fed / "ca.pem")


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"key": "nope.key"}, "cannot read the client private key {d}/nope.key: No such file"),
        ({"cert": "clients"}, "cannot read the client certificate {d}/clients: it is a folder"),
        ({"ca": "nope.pem"}, "cannot read the CA certificate {d}/nope.pem: No such file"),
    ],
)
def test_a_client_file_that_cannot_be_read_is_named_with_what_it_holds(
    fed: Path, given: dict[str, str], said: str
) -> None:
    # The error was Python's own, "[Errno 2] No such file or directory: 'nope.key'".
    issue_client(fed, "site")
    files = {"ca": "ca.pem", "cert": "clients/site.pem", "key": "clients/site.key", **given}
    with pytest.raises(OSError, match=r"^cannot read the ") as refused:
        client_tls(fed / files["ca"], fed / files["cert"], fed / files["key"])
    assert str(refused.value).startswith(said.format(d=fed))
