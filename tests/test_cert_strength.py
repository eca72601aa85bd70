"""Certificates weaker than current guidance (short RSA keys, SHA-1) are refused on both sides."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from covey.deploy._client import client_tls
from covey.deploy._tls import tls_from_dir
from covey.deploy.certs import init_federation, issue_client
from covey.deploy.certs._common import PrivateKey
from covey.transport.grpc._admission import Admission

sys.path.insert(0, str(Path(__file__).parent))
from _admission import Aborted, Context, Events, client_cert


def _leaf(fed: Path, name: str, key: PrivateKey, algorithm: hashes.HashAlgorithm) -> Path:
    """Write ``fed/name.pem`` and ``.key``: a client certificate named ``name``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return client_cert(fed, name, key, subject, algorithm)


# A client certificate signed with SHA-1 by another PKI's RSA CA, valid until 2109
# (``cryptography`` refuses to sign with SHA-1, so it was made once with ``openssl x509 -sha1``).
_SHA1_CERT = b"""\
-----BEGIN CERTIFICATE-----
MIIC3TCCAUWgAwIBAgIUf8AVKgfrpfYwr+xRT6fH9dlkstowDQYJKoZIhvcNAQEF
BQAwGDEWMBQGA1UEAwwNaG9zcGl0YWwgcm9vdDAgFw0yNjEyMDEyMDIzNTlaGA8y
MTA5MDEyMDIwMjM1OVowDjEMMAoGA1UEAwwDb2xkMFkwEwYHKoZIzj0CAQYIKoZI
zj0DAQcDQgAEpQemdvRCMyoscJzstrxjpMvqf6+ypvubdatf2iyu6RN+HhffUa7t
XeR6ECIMZKtMaHXpjug8XZDY8JL3qOybtKNyMHAwCQYDVR0TBAIwADAOBgNVHQ8B
Af8EBAMCBaAwEwYDVR0lBAwwCgYIKwYBBQUHAwIwHQYDVR0OBBYEFGf+/vekvRdl
KoqtgnxqP3LAC90jMB8GA1UdIwQYMBaAFL1ZZN+/xX3RAfsQ0PJEu4/tl8AgMA0G
CSqGSIb3DQEBBQUAA4IBgQDA/EJkVBxvUpEfMUZfvboWCwLi64Jbynid6Ezkj1w9
M93TwkAZuTecFY88IHUR/NhzOLC+tq+Dvvz1x6Kf0KXUk+u18/DlP3dc+wOV239H
TRHt6b+Hoah73bgNNXhU7L9GA8QKq4a12fEld2/baqkANhlhtGfmtJMWvykvVME7
z77K2HgmdWMkTc3171M1rNmfwPqiYc1Y1LFpxzPqGP0r9a1xJLtdg6mnSVOZNYAE
rAPHKwZt5QPY3u9ljRmU+WOYxUhfG9R42ju1teRmPSK4RqHa6RZfxTHwuxzZhpMA
n+5MAtL2TGC/brzozETFwMge1gK2IPNRH/sbqSh3NmJ48pKy0Ou/XoM7su/5U7sR
aN11dE4lmj5bHbtbqAJl8Uq85EDJhkwFyt2geQBvQwaPwk2YkPgwipjNDutkkona
bh9VSP/YBCmbQ/0+UlHLxsFQBzbYt/9VJZw7NVDPFZ/n/Td8kPOtOJ0z19okQUTG
lacYSKDIpHZ4e3T6vnydWLw=
-----END CERTIFICATE-----
"""
_SHA1_KEY = b"""\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYYa2DLb3yJNfRmq0
6jeBOjhd8VsyP1D3M5Pxk5jRmgyhRANCAASlB6Z29EIzKixwnOy2vGOky+p/r7Km
+5t1q1/aLK7pE34eF99Rru1d5HoQIgxkq0xodemO6DxdkNjwkveo7Ju0
-----END PRIVATE KEY-----
"""
_SHA1_CA = b"""\
-----BEGIN CERTIFICATE-----
MIIEITCCAomgAwIBAgIUIa5syzLUClAu6MBAg85wcI8tgeQwDQYJKoZIhvcNAQEL
BQAwGDEWMBQGA1UEAwwNaG9zcGl0YWwgcm9vdDAeFw0yNjEyMDEyMDE2MzFaFw0y
NjEyMzEyMDE2MzFaMBgxFjAUBgNVBAMMDWhvc3BpdGFsIHJvb3QwggGiMA0GCSqG
SIb3DQEBAQUAA4IBjwAwggGKAoIBgQDGSskUbGNZxXAiNBQIz6xmqJ9xQ/bfZpHK
bEubdnQBylaai7s956KzhwPjH5Qgn6H6D0iDKTBXY4oQxu0KQQ6u4VtDuJ8K2/zP
suHP8nqu34FGOdwiXBKOE5iBVvccoyNlntkQ2tnKrl/JzEkBsc0Om+ejMVm/+9On
ihUoa644Q9Ce2Qu6EsdwrsPqo7il7AL7jxVWGPsJe5f4KFfZzqhHYMR2ECw87nop
YVE6j0Pj+4ZcJFrNk+L12f06rRjcKwpWBxt8znkv4KSJc+Op8su0DFh0Vmlj8h4d
AmTBZiW8ehKNSjZepvOgRzW6c5/ajGq9tkquB90XTe2u268zyKGehtfqmztmHWud
r0ojLh+gG1ac396j4Wgo6Z0ZZrQK147cwdmb7xh/Tf5hk4z2nDnxjwrwQvwK+kQx
kDxv1vrEu7P2xxMtp8RkLPr0CcJ4W1THM6DT2ae7/h9Gj6/Qpr4e3KZ7NLfXO3Fc
Vi+nWZBssxh42RHqNJLoz7aln8T9m50CAwEAAaNjMGEwHQYDVR0OBBYEFL1ZZN+/
xX3RAfsQ0PJEu4/tl8AgMB8GA1UdIwQYMBaAFL1ZZN+/xX3RAfsQ0PJEu4/tl8Ag
MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMA0GCSqGSIb3DQEBCwUA
A4IBgQBD22XH+j+zPV5aCJRlY1248KcY2HG5en+IlL6dTCUJ7mGVTvD5VvyAnG04
9WGxjT/Oxx6wV1RkhwL2NtnTQ0uvKshGFpE3OwldGAQRMhmBK53/S1zM8Uxth/+6
qaO2QDSyCi9JGUUWJ6f0grdhaPT8LA5ukz+p4BzBKqph4NPNyAnS3ZQnXkTOqr/W
IZGAL4n477RhLGbunM0x+47LoRJlAC8bgRzoCGB+Gss+TkpcjI6MXow110aXZ+Ci
QIYQGGYOuj0/a9R78oV2/+vK6axx4DKX4VKRp1OpdKoDHYxvTvwUKgPfwb+bHb8A
maU4f6huEIPBqJsslAe/45ZaS8obWHLRIGJ5eRjIkr7PaOuZGy6ExkNPtO/hORHw
pVgrtec3E9zGs5OybGw/OGbJS9J+nY+QtnzY9KX4ZB8MY0gLp1gwLvZxEkVMg+l8
wLw6lH7LAom+CkdPBrUDwTG5kcavbjoYKrxpFLgvQNWxwbsmHAtf/K91VFA0TA3w
rtUpr7k=
-----END CERTIFICATE-----
"""


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    return init_federation(tmp_path / "fed").directory


def _admit(pem: bytes, name: str) -> Context:
    from covey.transport.grpc.proto import covey_pb2 as pb

    context = Context({"x509_pem_cert": [pem], "x509_common_name": [name.encode()]})
    admission = Admission(Events(), tls=object())  # type: ignore[arg-type]
    hello = pb.Hello(version=admission.version, name=name)
    with contextlib.suppress(Aborted):
        admission._identify(context, hello)
    return context


def test_a_short_rsa_key_is_refused(fed: Path) -> None:
    pem = _leaf(fed, "weak", rsa.generate_private_key(65537, 1024), hashes.SHA256())  # noqa: S505
    with pytest.raises(ValueError, match=r"weak\.pem is too weak: a 1024-bit RSA key"):
        client_tls(fed / "ca.pem", pem, fed / "weak.key")
    context = _admit(pem.read_bytes(), "weak")
    assert context.aborted is not None
    assert context.aborted[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "certificate too weak: a 1024-bit RSA key" in context.aborted[1]


def test_a_sha1_signature_is_refused(tmp_path: Path) -> None:
    for name, data in (("ca.pem", _SHA1_CA), ("old.pem", _SHA1_CERT), ("old.key", _SHA1_KEY)):
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=r"old\.pem is too weak: a signature with SHA1"):
        client_tls(tmp_path / "ca.pem", tmp_path / "old.pem", tmp_path / "old.key")
    context = _admit(_SHA1_CERT, "old")
    assert context.aborted is not None
    assert "certificate too weak: a signature with SHA1" in context.aborted[1]


def test_covey_certificates_and_rsa_2048_pass(fed: Path) -> None:
    issue_client(fed, "site")
    pem = fed / "clients" / "site.pem"
    client_tls(fed / "ca.pem", pem, fed / "clients" / "site.key")
    assert _admit(pem.read_bytes(), "site").aborted is None
    ok = _leaf(fed, "rsa", rsa.generate_private_key(65537, 2048), hashes.SHA256())
    client_tls(fed / "ca.pem", ok, fed / "rsa.key")
    assert _admit(ok.read_bytes(), "rsa").aborted is None


def test_a_server_certificate_given_as_a_client_certificate_is_named_as_such(fed: Path) -> None:
    # It was admitted by every local check, and the server's TLS refused it at the
    # handshake: the client was told its CA did not accept it ("another federation?").
    with pytest.raises(ValueError, match=r"server\.pem is not a client certificate") as refused:
        client_tls(fed / "ca.pem", fed / "server.pem", fed / "server.key")
    assert "its extended key usage allows serverAuth, not client authentication" in str(
        refused.value
    )
    issue_client(fed, "site")
    client_tls(fed / "ca.pem", fed / "clients" / "site.pem", fed / "clients" / "site.key")


def test_a_server_folder_holding_a_client_certificate_as_its_own_is_refused(fed: Path) -> None:
    issue_client(fed, "site")
    for suffix in ("pem", "key"):
        (fed / f"server.{suffix}").write_bytes((fed / "clients" / f"site.{suffix}").read_bytes())
    with pytest.raises(ValueError, match=r"server\.pem is not a server certificate"):
        tls_from_dir(fed)


def test_a_common_name_holding_a_line_break_is_refused_not_logged_raw() -> None:
    # The CA signed it, so it was admitted, and its name written over two log lines.
    context = _admit(b"not read: the name is refused first", "site\nrefused evil")
    assert context.aborted is not None
    assert context.aborted[0] == grpc.StatusCode.PERMISSION_DENIED
    assert (
        "the certificate's common name 'site\\nrefused evil' cannot name a client"
        in (context.aborted[1])
    )
