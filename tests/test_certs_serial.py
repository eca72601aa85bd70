"""``covey certs`` shows a certificate's serial as ``openssl x509 -serial`` prints it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from covey.deploy._cli_certs import certs_app
from covey.deploy.certs._inspect import serial_hex

pytestmark = pytest.mark.timeout(120)

ODD = int("F" + "1A" * 19, 16)
"""A serial of 39 hex digits: openssl prints it with a leading zero, as whole bytes."""


def test_serial_hex_is_openssl_s_form() -> None:
    assert serial_hex(ODD) == "0F" + "1A" * 19
    assert serial_hex(0xABCD) == "ABCD"
    assert serial_hex(1) == "01"
    assert serial_hex(0) == "00"


def test_certs_list_and_revoke_show_the_serial_openssl_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    fed = tmp_path / "fed"
    init = ["init", "--dir", str(fed), "--host", "localhost"]
    assert runner.invoke(certs_app, init).exit_code == 0
    monkeypatch.setattr(x509, "random_serial_number", lambda: ODD)
    result = runner.invoke(certs_app, ["issue", "alice", "--dir", str(fed)])
    assert result.exit_code == 0, result.output
    pem = fed / "clients" / "alice.pem"
    assert x509.load_pem_x509_certificate(pem.read_bytes()).serial_number == ODD
    shown = "0F" + "1A" * 19
    if shutil.which("openssl"):  # the tool an operator compares with
        printed = subprocess.run(
            ["openssl", "x509", "-in", str(pem), "-noout", "-serial"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert printed.strip() == f"serial={shown}"
    listed = runner.invoke(certs_app, ["list", "--dir", str(fed)])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "alice" in line)
    assert row.split()[1] == shown, listed.output
    revoked = runner.invoke(certs_app, ["revoke", "alice", "--dir", str(fed)])
    assert revoked.exit_code == 0, revoked.output
    assert f"(serial {shown})" in " ".join(revoked.output.split())
