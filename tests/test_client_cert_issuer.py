"""A client certificate that the client's own CA file did not issue: refused before connecting.

A site given another federation's certificate (or one issued by an intermediate
CA, without the intermediate in its file) passed every local check, then
dialled the server three times, each handshake closed, and ended with
`certificate not trusted: the server closed the TLS handshake 3 times in a row`,
which named neither file.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from covey.cli import app
from covey.deploy._client import client_tls, tls_from_certs
from covey.deploy.certs import init_federation, issue_client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    directory = init_federation(tmp_path / "fed", hosts=("127.0.0.1",)).directory
    issue_client(directory, "hospital-a")
    return directory


@pytest.fixture
def other(tmp_path: Path) -> Path:
    directory = init_federation(tmp_path / "other", hosts=("127.0.0.1",)).directory
    issue_client(directory, "stray")
    return directory


def test_a_client_certificate_of_another_federation_is_refused_naming_both_files(
    fed: Path, other: Path
) -> None:
    cert, key = other / "clients" / "stray.pem", other / "clients" / "stray.key"
    with pytest.raises(ValueError, match="was not issued by") as refused:
        client_tls(fed / "ca.pem", cert, key)
    said = str(refused.value)
    assert f"{cert} was not issued by the CA in {fed / 'ca.pem'}" in said, said
    assert "would refuse it; give the client the certificate" in said, said


def test_the_federation_files_pass(fed: Path) -> None:
    assert tls_from_certs(fed, "hospital-a").cert is not None


def test_a_ca_bundle_holding_both_cas_of_a_rotation_passes(
    fed: Path, other: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "both.pem"
    bundle.write_bytes((other / "ca.pem").read_bytes() + (fed / "ca.pem").read_bytes())
    mine = fed / "clients"
    assert client_tls(bundle, mine / "hospital-a.pem", mine / "hospital-a.key").cert


def _intermediate_client(fed: Path, tmp_path: Path, *, chain: bool) -> tuple[Path, Path]:
    """A client certificate issued by an intermediate CA the federation CA signed."""
    now = dt.datetime.now(dt.UTC)
    ca_cert = x509.load_pem_x509_certificate((fed / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((fed / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)

    def build(
        name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name
    ) -> x509.CertificateBuilder:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
        )

    middle_key = ec.generate_private_key(ec.SECP256R1())
    middle = (
        build("regional", middle_key, ca_cert.subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        build("hospital-b", leaf_key, middle.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(middle_key, hashes.SHA256())
    )
    cert, key = tmp_path / "hospital-b.pem", tmp_path / "hospital-b.key"
    pem = serialization.Encoding.PEM
    cert.write_bytes(leaf.public_bytes(pem) + (middle.public_bytes(pem) if chain else b""))
    key.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key.chmod(0o600)
    return cert, key


def test_a_certificate_with_its_intermediate_in_the_file_passes(fed: Path, tmp_path: Path) -> None:
    cert, key = _intermediate_client(fed, tmp_path, chain=True)
    assert client_tls(fed / "ca.pem", cert, key).cert is not None


def test_a_certificate_of_an_intermediate_left_out_of_the_file_is_refused(
    fed: Path, tmp_path: Path
) -> None:
    cert, key = _intermediate_client(fed, tmp_path, chain=False)
    with pytest.raises(ValueError, match=r"was not issued by the CA in .* but by 'CN=regional'"):
        client_tls(fed / "ca.pem", cert, key)


def test_covey_client_exits_with_status_2_before_dialling(
    fed: Path, other: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stray_site.py").write_text(
        "import covey\n\ndef client_fn(cid):\n    return covey.Client()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    stray = other / "clients"
    # Nothing listens on port 9 here: a client that dialled would retry, not exit at once.
    result = CliRunner().invoke(
        app,
        [
            "client",
            "--app",
            "stray_site:client_fn",
            "--cid",
            "0",
            "--server",
            "127.0.0.1:9",
            "--ca",
            str(fed / "ca.pem"),
            "--cert",
            str(stray / "stray.pem"),
            "--key",
            str(stray / "stray.key"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "was not issued by the CA in" in result.output, result.output
