"""Certificate files gRPC cannot use, or that are not certificate files: refused by name, early.

A key on a curve gRPC's TLS cannot load (P-224, secp256k1, brainpool) or an
RSA-PSS certificate made a server report that its address could not be bound,
and a client that every connection was refused; a P-521 key failed every
handshake. A client certificate without a common name passed every check and
then broke the server's stream with an internal error, which the client
retried. A huge file given as a certificate was read into memory whole.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from covey.deploy._client import client_tls
from covey.deploy._pem import check_pair
from covey.deploy._tls import tls_from_dir
from covey.deploy.certs import init_federation, issue_client
from covey.transport.grpc._admission import Admission
from covey.transport.grpc.proto import covey_pb2 as pb

sys.path.insert(0, str(Path(__file__).parent))
from _admission import Aborted, Context, Events, client_cert


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    return init_federation(tmp_path / "fed").directory


def _named(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


@pytest.mark.parametrize(
    "curve", [ec.SECP521R1(), ec.SECP224R1(), ec.SECP256K1(), ec.BrainpoolP256R1()]
)
def test_an_ec_key_on_a_curve_grpc_cannot_use_is_refused_naming_it(
    fed: Path, curve: ec.EllipticCurve
) -> None:
    pem = client_cert(fed, "site", ec.generate_private_key(curve), _named("site"))
    said = rf"site\.key is an EC key on the curve {curve.name}, which gRPC's TLS cannot use"
    with pytest.raises(ValueError, match=said):
        client_tls(fed / "ca.pem", pem, fed / "site.key")
    with pytest.raises(ValueError, match=said):
        check_pair(pem.read_bytes(), (fed / "site.key").read_bytes(), "site.pem", "site.key")


def test_p256_and_p384_keys_pass(fed: Path) -> None:
    for curve in (ec.SECP256R1(), ec.SECP384R1()):
        pem = client_cert(fed, curve.name, ec.generate_private_key(curve), _named("site"))
        client_tls(fed / "ca.pem", pem, fed / f"{curve.name}.key")


# An RSA-PSS client certificate (its public key's algorithm RSASSA-PSS) and its key, made
# with `openssl genpkey -algorithm RSA-PSS` and `openssl x509 -req` (cryptography makes none).
_PSS_CERT = b"""\
-----BEGIN CERTIFICATE-----
MIICSDCCAe6gAwIBAgIUErfmzUSj0q+c+QA18zCFyY8HNRowCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKaGFuZCBDQSBlYzAeFw0yNjEyMDYwODM5MDVaFw0yNzAzMTYw
ODM5MDVaMBExDzANBgNVBAMMBnNpdGUtYTCCASAwCwYJKoZIhvcNAQEKA4IBDwAw
ggEKAoIBAQDIEjVDmYUYytcDIhT5u+dwdI+BYZUNupYhTSIePUMi5dBiLXmBSPaO
UaRqWusTEF0EiXIIBp/8ilZI63kRuvvp+obzLQuXRyxNR+v3VVsHC0J8gmeOmWlf
wyp8FlFvWW7qRfDq7w8LzbfJgZAu1fken10YzYfaANHhJSf4C4f7awXtnvztx5if
yd8Oe7XKwlEq4t/eb5/7NhoW8WbHeS+UC7+TMXxcit8PkPGY1zGAs0Zh3ceSxTns
+W3XdCUHJ1o4v9uLnUzD9g8MleuhGr5slXKA7+1WSgRtiWL9YddPaPcgy7r8Y+J8
kJf+ZEfG+4WiwKQlY3Yk2wBkMl4vVLsNAgMBAAGjVzBVMBMGA1UdJQQMMAoGCCsG
AQUFBwMCMB0GA1UdDgQWBBRIaUq3xkr6Ip1EB3CGXZemeBis+DAfBgNVHSMEGDAW
gBRFsl7pcUnDHpzZX9rBo3feSR89fDAKBggqhkjOPQQDAgNIADBFAiEAvTDgara5
CMYItfGsv/LuBGeSpEL2hB/CyQZHLtgVWDkCIHB+v3n1/Q1dpokkwfAwDAff7cJT
0M82GiPjzZsJH4qj
-----END CERTIFICATE-----
"""
_PSS_KEY = b"""\
-----BEGIN PRIVATE KEY-----
MIIEugIBADALBgkqhkiG9w0BAQoEggSmMIIEogIBAAKCAQEAyBI1Q5mFGMrXAyIU
+bvncHSPgWGVDbqWIU0iHj1DIuXQYi15gUj2jlGkalrrExBdBIlyCAaf/IpWSOt5
Ebr76fqG8y0Ll0csTUfr91VbBwtCfIJnjplpX8MqfBZRb1lu6kXw6u8PC823yYGQ
LtX5Hp9dGM2H2gDR4SUn+AuH+2sF7Z787ceYn8nfDnu1ysJRKuLf3m+f+zYaFvFm
x3kvlAu/kzF8XIrfD5DxmNcxgLNGYd3HksU57Plt13QlBydaOL/bi51Mw/YPDJXr
oRq+bJVygO/tVkoEbYli/WHXT2j3IMu6/GPifJCX/mRHxvuFosCkJWN2JNsAZDJe
L1S7DQIDAQABAoIBAAYSXrlIY4dAVqdNcDyw/2yErmXoinpnbyQfwA6SC44iUoE8
QeZSysrAabXhlaXsi/TLNWGkI9RT9XDn691wzYbeYnHnAXr2lGlcVVSvq4rKmcVc
vBxSMGYRLqJOl2uX7PthTSxavhvnWHHI2RGWzvqR2bna458nLGIXENVgsjXcI0Uy
g7q5TPMvkBiCpavYcxbiizNGYny0EUzxLqRFThhubPOUrE3tuIdmefnUIkmdids3
wmg4n+edKFuMnjf59QS3AH1WA9Vd2jmbM8BR9g424krFTZlklLH3iMAQGUVL9G4k
YhUopORhpbp4pT5XLZDVh1ZNcjqNufStlQSMKWkCgYEA8wEvlF7hsHCWBiaOTmvj
u5NedsVcT2mo/QlzYiaFAkqCKdY5XibhbfHyYCBpvJIFRuBgpM63LcHWL+nCR5i7
x3D5YnPmQix3sWb/o+b7ig6FjqA7M3f4BEjZld4OaY9xodG4Tk9j8XYd3GX5Kvc5
Dd3t9klIFPYUX55COsDx7MUCgYEA0sU/jBhkZidOdGdVPcaTS6KcwjDdoQZEA7ok
U4k5Sq20so7y636FZZoKo5Rol/bB405acTVXBcF6O/tc7DBj1GxoXjZhXyD0+Vox
HoD04nY0H0JP394ErOnNlMa/aIzpvEna1jnbpgZjs71Eob30JEv1swTymwzSo9po
yCriiakCgYA8uHcjI/JRHFDgiJHWlq75GAHqu7YtQcGwOMRUKjviLqwHuDfthtmd
l29xBahmLjaTV03O4Lh0/pJ+tnKNYWTKmTg3ma5XqrTd51bJpdYE0UweL3ubiMa4
i1uTT0FarzU9siHTr5LRqyobAIAadFwVUvc7K2SPmE3O9sSl2cCZ4QKBgBHOqnTK
psjer0k0ZcZHXbB5N6dMe50cK2jpNCJ+qIF/tZGUdD+jO9/+qMFzS3bzWSQ8PXXt
HMIWu54PuaUW3YhX9GVpUMa5wRjEHvxFxurPM84kSx1N47U8N6tHM2rA5QqMbtnE
n6MiTRAlgIPtyY+7fzG1zE1/QtinHk0zGlqpAoGALCBAqsn7OP9Ai/q/FECHz9kV
LROU/uDqgXx/NMtgltF4Kbpa1phofNdZjqbCApgMxw2/YKGjyQnSkDItvcM9rwDY
6QXbqIF6s5XO+cwVeBGuKNAKa1JHW7dm6gs8FVPABuZXw5yPmoNmBYbPcLzIZdCM
DKJN3Uo7yTMBDBmpvqY=
-----END PRIVATE KEY-----
"""


def test_an_rsa_pss_key_is_refused() -> None:
    with pytest.raises(ValueError, match=r"site\.key is an RSA-PSS key .* gRPC's TLS cannot use"):
        check_pair(_PSS_CERT, _PSS_KEY, "site.pem", "site.key")


def test_a_client_certificate_without_a_common_name_is_refused_by_the_client(fed: Path) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hospital A")])
    pem = client_cert(fed, "nocn", ec.generate_private_key(ec.SECP256R1()), subject)
    with pytest.raises(ValueError, match=r"nocn\.pem has no common name \(CN\)"):
        client_tls(fed / "ca.pem", pem, fed / "nocn.key")


@pytest.mark.parametrize("names", [[b""], []])
def test_a_client_certificate_without_a_common_name_is_refused_by_the_server(
    fed: Path, names: list[bytes]
) -> None:
    # gRPC gives an empty name for it: the stream failed with "client name must be a
    # non-empty string", which the client took for a failure to retry.
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hospital A")])
    pem = client_cert(fed, "nocn", ec.generate_private_key(ec.SECP256R1()), subject)
    context = Context({"x509_pem_cert": [pem.read_bytes()], "x509_common_name": names})
    events = Events()
    admission = Admission(events, tls=object())  # type: ignore[arg-type]
    with contextlib.suppress(Aborted):
        admission._identify(context, pb.Hello(version=admission.version, name="client-0"))
    assert context.aborted is not None
    assert context.aborted[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "the client certificate has no common name (CN)" in context.aborted[1]
    assert [event[1] for event in events.events] == ["refused"]


MAX_PEM_BYTES = 4 << 20  # covey.deploy._pem.MAX_PEM_BYTES


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_a_client_file_over_the_size_cap_is_refused_naming_it(fed: Path) -> None:
    issue_client(fed, "site")
    big = _sparse(fed / "big.pem", MAX_PEM_BYTES + 1)
    with pytest.raises(ValueError, match=r"big\.pem is larger than 4,194,304 bytes: not the CA"):
        client_tls(big, fed / "clients" / "site.pem", fed / "clients" / "site.key")
    with pytest.raises(ValueError, match=r"big\.pem is larger than .* not the client cert"):
        client_tls(fed / "ca.pem", big, fed / "clients" / "site.key")


def test_a_server_file_over_the_size_cap_is_refused_naming_it(fed: Path) -> None:
    _sparse(fed / "server.pem", MAX_PEM_BYTES + 1)
    with pytest.raises(ValueError, match=r"server\.pem is larger than .* not the server cert"):
        tls_from_dir(fed)


def test_a_ca_bundle_under_the_cap_still_passes(fed: Path, tmp_path: Path) -> None:
    issue_client(fed, "site")
    other = init_federation(tmp_path / "other").directory
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((fed / "ca.pem").read_bytes() + (other / "ca.pem").read_bytes())
    client_tls(bundle, fed / "clients" / "site.pem", fed / "clients" / "site.key")
