"""Certificate validity dates: expired and not yet valid certificates on both sides of a run."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from covey.deploy._client import client_tls
from covey.deploy._tls import tls_from_dir
from covey.deploy.certs import init_federation, issue_client
from covey.deploy.certs._common import cert_to_pem, key_to_pem, load_ca, sign
from covey.transport.grpc._admission import Admission, Refusal
from covey.transport.grpc._handshakes import WHY
from covey.transport.grpc._refusal import handshake_refusal, permanent_cause


def _dated(fed: Path, name: str, start: float, end: float, *, server: bool = False) -> None:
    """Write ``name.pem`` and ``.key`` signed by the CA, valid ``start`` to ``end`` s from now."""
    ca_cert, ca_key = load_ca(fed)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _dt.datetime.now(_dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + _dt.timedelta(seconds=start))
        .not_valid_after(now + _dt.timedelta(seconds=end))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        san = [x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    (fed / f"{name}.pem").write_bytes(cert_to_pem(sign(builder, ca_key)))
    (fed / f"{name}.key").write_bytes(key_to_pem(key))


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    return init_federation(tmp_path / "fed").directory


def test_a_server_with_an_expired_certificate_refuses_to_start(fed: Path) -> None:
    _dated(fed, "old", -7200, -60, server=True)
    (fed / "server.pem").write_bytes((fed / "old.pem").read_bytes())
    (fed / "server.key").write_bytes((fed / "old.key").read_bytes())
    with pytest.raises(ValueError, match=r"server\.pem expired at .* UTC"):
        tls_from_dir(fed)


def test_a_client_with_an_expired_certificate_refuses_to_start(fed: Path) -> None:
    _dated(fed, "site", -7200, -60)
    with pytest.raises(ValueError, match=r"site\.pem expired at .*covey certs issue"):
        client_tls(fed / "ca.pem", fed / "site.pem", fed / "site.key")
    issue_client(fed, "fresh")  # a valid one still loads
    client_tls(fed / "ca.pem", fed / "clients" / "fresh.pem", fed / "clients" / "fresh.key")


def test_a_not_yet_valid_client_certificate_is_warned_of(
    fed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _dated(fed, "site", 3600, 7200)
    client_tls(fed / "ca.pem", fed / "site.pem", fed / "site.key")  # the server's clock decides
    assert "not valid before" in caplog.text


class _Events:
    def event(self, *args: Any) -> None:
        pass


class _Conn:
    def __init__(self, certificate: bytes) -> None:
        self.certificate = certificate


def test_a_connection_whose_certificate_expires_is_dropped(fed: Path) -> None:
    # TLS checks the dates at the handshake only: a stream open for days outlives them.
    _dated(fed, "expired", -7200, -1)
    _dated(fed, "valid", -60, 3600)
    admission = Admission(_Events(), tls=object())  # type: ignore[arg-type]
    admission.check(_Conn((fed / "valid.pem").read_bytes()))  # type: ignore[arg-type]
    with pytest.raises(Refusal, match=r"certificate expired at .* UTC"):
        admission.check(_Conn((fed / "expired.pem").read_bytes()))  # type: ignore[arg-type]


def test_the_handshake_refusal_names_an_expired_own_certificate(fed: Path) -> None:
    _dated(fed, "expired", -7200, -1)
    _dated(fed, "early", 3600, 7200)
    said = handshake_refusal(3, (fed / "expired.pem").read_bytes())
    assert "this client's certificate expired at" in said
    assert "another federation" not in said
    assert "not valid before" in handshake_refusal(3, (fed / "early.pem").read_bytes())
    assert "another federation" in handshake_refusal(3, None)


def test_a_certificate_valid_here_but_refused_names_the_server_s_clock_as_a_cause(
    fed: Path,
) -> None:
    # Valid by this machine's clock, closed by the server all the same: its clock may
    # put the certificate outside its dates, which neither end can see from a closed
    # handshake; both say so rather than blame only another federation's CA.
    _dated(fed, "valid_here", -60, 3600)
    said = handshake_refusal(3, (fed / "valid_here.pem").read_bytes())
    assert "another federation" in said
    assert "by the server's clock, expired or not valid yet" in said
    assert "not valid by this server's clock" in WHY


class _Failed(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details


def test_an_expired_server_certificate_is_named_as_such_by_the_client() -> None:
    details = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls "
        "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
        "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: certificate has expired"
    )
    said = permanent_cause(_Failed(details))
    assert said is not None
    assert said.startswith("the server's certificate (or the CA's) has expired")
    early = details.replace("has expired", "is not yet valid")
    said = permanent_cause(_Failed(early))
    assert said is not None
    assert "not yet valid" in said
    assert "clock" in said


def test_ed25519_keys_are_refused_before_any_connection(tmp_path: Path) -> None:
    # gRPC's TLS has no EdDSA signature algorithm: every handshake would fail.
    fed = init_federation(tmp_path / "fed", key_type="ed25519").directory
    issue_client(fed, "site")
    with pytest.raises(ValueError, match=r"server\.key is an EdDSA .*key-type ec"):
        tls_from_dir(fed)
    with pytest.raises(ValueError, match=r"site\.key is an EdDSA"):
        client_tls(fed / "ca.pem", fed / "clients" / "site.pem", fed / "clients" / "site.key")


def test_renew_server_keeps_the_ca_and_the_clients(fed: Path) -> None:
    from covey.deploy.certs import list_clients, renew_server

    issue_client(fed, "site")
    ca_before = (fed / "ca.pem").read_bytes()
    _dated(fed, "old", -7200, -60, server=True)  # the server's certificate has expired
    (fed / "server.pem").write_bytes((fed / "old.pem").read_bytes())
    (fed / "server.key").write_bytes((fed / "old.key").read_bytes())
    with pytest.raises(ValueError, match="covey certs renew-server"):
        tls_from_dir(fed)
    renew_server(fed, hosts=["fl.example.org", "10.0.0.5"])
    tls_from_dir(fed)  # starts again
    cert = x509.load_pem_x509_certificate((fed / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert (fed / "server.key").stat().st_mode & 0o777 == 0o600
    assert (fed / "ca.pem").read_bytes() == ca_before
    assert [c.status for c in list_clients(fed)] == ["valid"]
    renew_server(fed, days=30)  # the hosts of the current certificate by default
    again = x509.load_pem_x509_certificate((fed / "server.pem").read_bytes())
    assert again.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == san
    assert again.serial_number != cert.serial_number


def test_cli_renew_server(fed: Path) -> None:
    from typer.testing import CliRunner

    from covey.deploy._cli_certs import certs_app

    before = (fed / "server.pem").read_bytes()
    result = CliRunner().invoke(certs_app, ["renew-server", "--dir", str(fed), "--days", "90"])
    assert result.exit_code == 0, result.output
    assert "Renewed" in result.output
    # the hosts dialled and the new last day, which the command did not say
    renewed = x509.load_pem_x509_certificate((fed / "server.pem").read_bytes())
    until = f"{renewed.not_valid_after_utc:%Y-%m-%d}"
    assert renewed.not_valid_after_utc - renewed.not_valid_before_utc >= _dt.timedelta(days=89)
    assert f"for: localhost, 127.0.0.1; valid until {until}" in result.output, result.output
    moved = CliRunner().invoke(
        certs_app, ["renew-server", "--dir", str(fed), "--host", "fl.example.org"]
    )
    assert "for: fl.example.org; valid until" in moved.output, moved.output
    assert "BEGIN" not in result.output  # no key material is printed
    assert (fed / "server.pem").read_bytes() != before
    tls_from_dir(fed)
    bad = CliRunner().invoke(certs_app, ["renew-server", "--dir", str(fed), "--host", "a b"])
    assert bad.exit_code == 2


def test_a_client_whose_certificate_expires_while_retrying_stops_naming_it(fed: Path) -> None:
    # It retried until retry_for was spent (600 s by default), then said only that the
    # server was unreachable, though no server would ever take it again.
    import time

    from _live import Fit
    from _ports import unused_port
    from covey.transport.grpc._client import connect
    from covey.transport.grpc._refusal import Refused

    _dated(fed, "site", -60, 1.5)
    tls = client_tls(fed / "ca.pem", fed / "site.pem", fed / "site.key")
    port = unused_port()  # a port where nothing listens
    ends = x509.load_pem_x509_certificate((fed / "site.pem").read_bytes()).not_valid_after_utc
    while _dt.datetime.now(_dt.UTC) <= ends:
        time.sleep(0.2)
    with pytest.raises(Refused, match=r"this client's certificate expired at .* UTC"):
        connect(Fit(), f"127.0.0.1:{port}", tls=tls, retry_for=60, backoff=0.1)
