"""Certificate tooling of a deployed federation: files, chains, revocation, CLI, real mTLS."""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import stat
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from covey.deploy._cli_certs import certs_app
from covey.deploy.certs import (
    ClientPaths,
    FederationPaths,
    identity_from_cert,
    init_federation,
    is_revoked,
    issue_client,
    list_clients,
    load_revoked,
    revoke,
    verify_chain,
)
from covey.deploy.certs._inspect import serial_hex

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def fed(tmp_path: Path) -> FederationPaths:
    return init_federation(tmp_path / "fed")


# --------------------------------------------------------------------------- #
# init_federation
# --------------------------------------------------------------------------- #


def test_init_writes_every_file(fed: FederationPaths) -> None:
    for path in (fed.ca_cert, fed.ca_key, fed.server_cert, fed.server_key, fed.revoked):
        assert path.is_file(), path
    assert fed.clients_dir.is_dir()
    assert json.loads(fed.revoked.read_text()) == []
    assert load_revoked(fed.directory) == frozenset()
    assert b"BEGIN PRIVATE KEY" in fed.ca_key.read_bytes()  # PKCS#8, unencrypted
    assert not [p for p in fed.directory.iterdir() if p.name.endswith(".tmp")]


@posix_only
def test_init_file_permissions(fed: FederationPaths) -> None:
    assert _mode(fed.ca_key) == 0o600
    assert _mode(fed.server_key) == 0o600
    assert _mode(fed.ca_cert) == 0o644
    assert _mode(fed.server_cert) == 0o644
    assert _mode(fed.directory) == 0o700
    assert _mode(fed.clients_dir) == 0o700


def test_ca_certificate(fed: FederationPaths) -> None:
    ca = _cert(fed.ca_cert)
    assert ca.subject == ca.issuer
    assert identity_from_cert(fed.ca_cert.read_bytes()) == "covey federation"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert verify_chain(fed.ca_cert.read_bytes(), fed.ca_cert.read_bytes())  # self-signed


def test_server_certificate_chains_and_has_sans(tmp_path: Path) -> None:
    fed = init_federation(tmp_path / "f", hosts=("fl.example.org", "localhost", "10.0.0.7", "::1"))
    server_pem = fed.server_cert.read_bytes()
    assert verify_chain(server_pem, fed.ca_cert.read_bytes())
    server = _cert(fed.server_cert)
    assert identity_from_cert(server_pem) == "covey-server"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_init_refuses_to_overwrite(fed: FederationPaths) -> None:
    old_ca = fed.ca_cert.read_bytes()
    with pytest.raises(FileExistsError, match=r"ca\.key already exists"):
        init_federation(fed.directory)
    assert fed.ca_cert.read_bytes() == old_ca
    new = init_federation(fed.directory, overwrite=True)
    assert new.ca_cert.read_bytes() != old_ca


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hosts": ()}, "at least one host"),
        ({"hosts": ("bad host!",)}, "invalid host"),
        ({"days": 0}, "days"),
        ({"key_type": "dsa"}, "key_type"),
        ({"key_type": "rsa", "rsa_bits": 1024}, "rsa_bits"),
    ],
)
def test_init_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        init_federation(tmp_path / "f", **kwargs)
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    ("key_type", "key_class"),
    [("rsa", rsa.RSAPublicKey), ("ed25519", ed25519.Ed25519PublicKey)],
)
def test_other_key_types(tmp_path: Path, key_type: Any, key_class: type) -> None:
    fed = init_federation(tmp_path / "f", key_type=key_type, rsa_bits=2048)
    client = issue_client(fed.directory, "alice")
    assert isinstance(_cert(client.cert).public_key(), key_class)
    assert verify_chain(client.cert.read_bytes(), fed.ca_cert.read_bytes())
    assert verify_chain(fed.server_cert.read_bytes(), fed.ca_cert.read_bytes())


# --------------------------------------------------------------------------- #
# issue_client, verify_chain, identity
# --------------------------------------------------------------------------- #


def test_issue_client(fed: FederationPaths) -> None:
    paths = issue_client(fed.directory, "alice-01.lab_a")
    assert paths == ClientPaths(
        cert=fed.clients_dir / "alice-01.lab_a.pem",
        key=fed.clients_dir / "alice-01.lab_a.key",
        ca=fed.ca_cert,
    )
    pem = paths.cert.read_bytes()
    cert = _cert(paths.cert)
    assert identity_from_cert(pem) == "alice-01.lab_a"
    assert identity_from_cert(cert.public_bytes(Encoding.DER)) == "alice-01.lab_a"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice-01.lab_a"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert verify_chain(pem, fed.ca_cert.read_bytes())
    assert sorted(p.name for p in fed.clients_dir.iterdir()) == [
        "alice-01.lab_a.key",
        "alice-01.lab_a.pem",
    ]
    if os.name == "posix":
        assert _mode(paths.key) == 0o600
        assert _mode(paths.cert) == 0o644


def test_client_validity(fed: FederationPaths) -> None:
    cert = _cert(issue_client(fed.directory, "bob", days=30).cert)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert _dt.timedelta(days=30) <= lifetime <= _dt.timedelta(days=30, minutes=10)
    der = cert.public_bytes(Encoding.DER)
    ca_pem = fed.ca_cert.read_bytes()
    later = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=31)
    assert verify_chain(der, ca_pem)
    assert not verify_chain(der, ca_pem, at=later)
    assert not verify_chain(der, ca_pem, at=_dt.datetime(2000, 1, 1))


def test_foreign_ca_fails_verify_chain(tmp_path: Path) -> None:
    ours = init_federation(tmp_path / "ours")
    theirs = init_federation(tmp_path / "theirs", name="covey federation")  # same CA name
    foreign = issue_client(theirs.directory, "mallory")
    ca_pem = ours.ca_cert.read_bytes()
    assert not verify_chain(foreign.cert.read_bytes(), ca_pem)
    assert not verify_chain(theirs.server_cert.read_bytes(), ca_pem)
    assert not verify_chain(b"not a certificate", ca_pem)
    # A leaf is no CA: nothing chains to it.
    own = issue_client(ours.directory, "alice").cert.read_bytes()
    assert not verify_chain(own, ours.server_cert.read_bytes())
    assert verify_chain(own, ca_pem)


@pytest.mark.parametrize(
    "bad_id", ["", "a" * 65, "alice bob", "../evil", "a/b", "é", "x\n", ".", ".."]
)
def test_bad_client_ids_rejected(fed: FederationPaths, bad_id: str) -> None:
    with pytest.raises(ValueError, match="invalid client id"):
        issue_client(fed.directory, bad_id)
    assert list(fed.clients_dir.iterdir()) == []


def test_reissue_refused_unless_overwrite(fed: FederationPaths) -> None:
    first = issue_client(fed.directory, "alice")
    first_pem = first.cert.read_bytes()
    with pytest.raises(FileExistsError, match="already has a certificate"):
        issue_client(fed.directory, "alice")
    assert first.cert.read_bytes() == first_pem
    # Overwriting replaces the certificate and revokes the old one.
    second = issue_client(fed.directory, "alice", overwrite=True)
    assert second.cert.read_bytes() != first_pem
    assert is_revoked(first_pem, fed.directory)
    assert not is_revoked(second.cert.read_bytes(), fed.directory)


def test_reissue_after_revoke_allowed(fed: FederationPaths) -> None:
    first = issue_client(fed.directory, "alice").cert.read_bytes()
    revoke(fed.directory, "alice")
    second = issue_client(fed.directory, "alice").cert.read_bytes()
    assert second != first
    assert is_revoked(first, fed.directory)
    assert not is_revoked(second, fed.directory)


def test_issue_needs_a_federation(tmp_path: Path, fed: FederationPaths) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        issue_client(tmp_path / "nowhere", "alice")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no federation CA"):
        issue_client(tmp_path / "empty", "alice")
    fed.ca_key.unlink()  # the CA key moved offline
    with pytest.raises(FileNotFoundError, match="CA private key"):
        issue_client(fed.directory, "alice")


# --------------------------------------------------------------------------- #
# Revocation
# --------------------------------------------------------------------------- #


def test_revoke(fed: FederationPaths) -> None:
    alice = issue_client(fed.directory, "alice").cert.read_bytes()
    bob = issue_client(fed.directory, "bob").cert.read_bytes()
    assert not is_revoked(alice, fed.directory)
    serial = revoke(fed.directory, "alice")
    assert serial == x509.load_pem_x509_certificate(alice).serial_number
    assert is_revoked(alice, fed.directory)
    assert not is_revoked(bob, fed.directory)
    revoked = load_revoked(fed.directory)
    assert revoked == frozenset({serial})
    assert is_revoked(alice, revoked)
    assert not is_revoked(bob, revoked)
    entries = json.loads(fed.revoked.read_text())
    assert len(entries) == 1
    assert entries[0]["common_name"] == "alice"
    assert int(entries[0]["serial"], 16) == serial
    revoke(fed.directory, "alice")  # idempotent
    assert len(json.loads(fed.revoked.read_text())) == 1
    # By serial number too (e.g. when the file is gone).
    bob_serial = x509.load_pem_x509_certificate(bob).serial_number
    (fed.clients_dir / "bob.pem").unlink()
    assert revoke(fed.directory, bob_serial) == bob_serial
    assert is_revoked(bob, fed.directory)


def test_revoke_errors(fed: FederationPaths) -> None:
    with pytest.raises(FileNotFoundError, match="no certificate for client"):
        revoke(fed.directory, "ghost")
    with pytest.raises(ValueError, match="invalid client id"):
        revoke(fed.directory, "../ca")
    fed.revoked.write_text("{not json")
    with pytest.raises(ValueError, match="malformed revocation list"):
        load_revoked(fed.directory)
    fed.revoked.unlink()
    with pytest.raises(FileNotFoundError, match="revocation list"):
        load_revoked(fed.directory)


def test_list_clients(fed: FederationPaths, tmp_path: Path) -> None:
    issue_client(fed.directory, "alice")
    issue_client(fed.directory, "bob")
    revoke(fed.directory, "bob")
    other = init_federation(tmp_path / "other")
    foreign = issue_client(other.directory, "carol")
    (fed.clients_dir / "carol.pem").write_bytes(foreign.cert.read_bytes())
    clients = list_clients(fed.directory)
    status = {c.client_id: (c.common_name, c.revoked, c.status) for c in clients}
    assert status == {
        "alice": ("alice", False, "valid"),
        "bob": ("bob", True, "revoked"),
        "carol": ("carol", False, "foreign CA"),
    }


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def test_cli_init_issue_revoke_list(tmp_path: Path) -> None:
    d = tmp_path / "fed"
    result = runner.invoke(
        certs_app, ["init", "--dir", str(d), "--host", "fl.example.org", "--host", "10.1.2.3"]
    )
    assert result.exit_code == 0, result.output
    assert "ca.key" in result.output
    assert "secret" in result.output
    san = _cert(d / "server.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["fl.example.org"]

    result = runner.invoke(certs_app, ["init", "--dir", str(d)])
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert runner.invoke(certs_app, ["init", "--dir", str(d), "--overwrite"]).exit_code == 0

    result = runner.invoke(certs_app, ["issue", "alice", "--dir", str(d), "--days", "10"])
    assert result.exit_code == 0, result.output
    assert identity_from_cert((d / "clients" / "alice.pem").read_bytes()) == "alice"
    assert runner.invoke(certs_app, ["issue", "bob", "--dir", str(d)]).exit_code == 0

    result = runner.invoke(certs_app, ["issue", "alice", "--dir", str(d)])
    assert result.exit_code == 2
    assert "already has a certificate" in result.output
    result = runner.invoke(certs_app, ["issue", "alice", "--dir", str(d), "--overwrite"])
    assert result.exit_code == 0, result.output

    result = runner.invoke(certs_app, ["revoke", "bob", "--dir", str(d)])
    assert result.exit_code == 0, result.output
    assert "Revoked" in result.output
    bob = (d / "clients" / "bob.pem").read_bytes()
    assert is_revoked(bob, d)
    listed = (d / "revoked.json").read_bytes()
    result = runner.invoke(certs_app, ["revoke", "bob", "--dir", str(d)])
    assert result.exit_code == 0, result.output
    assert "already revoked" in result.output
    assert "unchanged" in result.output
    assert (d / "revoked.json").read_bytes() == listed

    result = runner.invoke(certs_app, ["list", "--dir", str(d)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    serial = serial_hex(x509.load_pem_x509_certificate(bob).serial_number)
    assert serial in lines["bob"]
    assert "yes" in lines["bob"]
    assert " no " in lines["alice"]
    assert "valid" in lines["alice"]


def test_cli_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = runner.invoke(certs_app, ["issue", "alice", "--dir", str(missing)])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert runner.invoke(certs_app, ["list", "--dir", str(missing)]).exit_code == 2

    (tmp_path / "empty").mkdir()
    result = runner.invoke(certs_app, ["issue", "alice", "--dir", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no federation CA" in result.output

    d = tmp_path / "fed"
    assert runner.invoke(certs_app, ["init", "--dir", str(d)]).exit_code == 0
    result = runner.invoke(certs_app, ["issue", "bad/id", "--dir", str(d)])
    assert result.exit_code == 2
    assert "invalid client id" in result.output
    result = runner.invoke(certs_app, ["revoke", "ghost", "--dir", str(d)])
    assert result.exit_code == 2
    assert "no certificate for client" in result.output
    result = runner.invoke(certs_app, ["init", "--dir", str(tmp_path / "x"), "--host", "a b"])
    assert result.exit_code == 2
    assert "invalid host" in result.output
    result = runner.invoke(certs_app, ["list", "--dir", str(d)])
    assert result.exit_code == 0
    assert "No client certificates" in result.output


def test_cli_commands_to_paste_quote_a_folder_with_a_space(tmp_path: Path) -> None:
    # "Next: covey certs issue CLIENT_ID --dir my fed" ran `issue` on the folder "my".
    import shlex

    d = tmp_path / "my fed ü"
    result = runner.invoke(certs_app, ["init", "--dir", str(d)], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    command = result.output.strip().splitlines()[-1].removeprefix("Next: ")
    assert shlex.split(command) == ["covey", "certs", "issue", "CLIENT_ID", "--dir", str(d)]
    (tmp_path / "no ca").mkdir()
    result = runner.invoke(certs_app, ["issue", "a", "--dir", str(tmp_path / "no ca")])
    assert result.exit_code == 2
    command = " ".join(result.output.split()).partition("create one with: ")[2]
    assert shlex.split(command) == ["covey", "certs", "init", "--dir", str(tmp_path / "no ca")]


# --------------------------------------------------------------------------- #
# A real mutual-TLS handshake with gRPC
# --------------------------------------------------------------------------- #

_METHOD = "/covey.test.Certs/WhoAmI"


def test_grpc_mutual_tls(tmp_path: Path) -> None:
    grpc = pytest.importorskip("grpc")
    fed = init_federation(tmp_path / "fed", hosts=("localhost", "127.0.0.1"))
    alice = issue_client(fed.directory, "alice")
    mallory = issue_client(fed.directory, "mallory")
    revoke(fed.directory, "mallory")
    other = init_federation(tmp_path / "other")
    eve = issue_client(other.directory, "eve")
    ca_pem = fed.ca_cert.read_bytes()

    def who_am_i(request: bytes, context: Any) -> bytes:
        auth = context.auth_context()
        peer_pem: bytes = auth["x509_pem_cert"][0]
        if is_revoked(peer_pem, fed.directory):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "certificate revoked")
        assert identity_from_cert(peer_pem) == auth["x509_common_name"][0].decode()
        common_name: bytes = auth["x509_common_name"][0]
        return common_name

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "covey.test.Certs", {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)}
            ),
        )
    )
    credentials = grpc.ssl_server_credentials(
        [(fed.server_key.read_bytes(), fed.server_cert.read_bytes())],
        root_certificates=ca_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port > 0
    server.start()
    try:

        def call(host: str, client: ClientPaths | None) -> bytes:
            channel_credentials = grpc.ssl_channel_credentials(
                root_certificates=ca_pem,
                private_key=client.key.read_bytes() if client else None,
                certificate_chain=client.cert.read_bytes() if client else None,
            )
            with grpc.secure_channel(f"{host}:{port}", channel_credentials) as channel:
                reply: bytes = channel.unary_unary(_METHOD)(b"", timeout=5)
                return reply

        # Identified by its CN, whether the server is reached by IP or DNS SAN.
        assert call("127.0.0.1", alice) == b"alice"
        assert call("localhost", alice) == b"alice"

        for client in (None, eve):  # no certificate; a certificate from another CA
            with pytest.raises(grpc.RpcError) as info:
                call("127.0.0.1", client)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        with pytest.raises(grpc.RpcError) as info:  # passes TLS, stopped by revocation
            call("127.0.0.1", mallory)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        server.stop(None)


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["init", "--days", "100000000"], "days"),
        (["init", "--server-days", "3000000"], "server_days"),
        (["issue", "alice", "--days", "99999999"], "days"),
        (["renew-server", "--days", "99999999999999999999"], "days"),
    ],
)
def test_cli_refuses_a_validity_past_the_year_9999(
    tmp_path: Path, args: list[str], what: str
) -> None:
    # The date overflowed: "error: OverflowError: date value out of range", exit 1.
    d = tmp_path / "fed"
    if args[0] != "init":
        assert runner.invoke(certs_app, ["init", "--dir", str(d)]).exit_code == 0
    result = runner.invoke(certs_app, [*args, "--dir", str(d)])
    assert result.exit_code == 2, result.output
    assert f"error: {what} must be at most " in result.output
    assert "no certificate is valid past 9999-12-31" in result.output
    assert "OverflowError" not in result.output
    if args[0] == "init":
        assert not (d / "ca.key").exists()
