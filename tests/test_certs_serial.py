"""``covey certs`` shows a certificate's serial as ``openssl x509 -serial`` prints it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from covey.deploy._cli_certs import certs_app
from covey.deploy.certs._inspect import serial_hex
from covey.deploy.certs._revocation import load_revoked, parse_serial

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


def test_revoked_json_holds_the_serial_as_covey_certs_list_prints_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ``"0xf1a1a..."``, which a search for the listed ``0F1A1A...`` did not find."""
    runner = CliRunner()
    fed = tmp_path / "fed"
    assert runner.invoke(certs_app, ["init", "--dir", str(fed)]).exit_code == 0
    monkeypatch.setattr(x509, "random_serial_number", lambda: ODD)
    assert runner.invoke(certs_app, ["issue", "alice", "--dir", str(fed)]).exit_code == 0
    result = runner.invoke(certs_app, ["revoke", "alice", "--dir", str(fed)])
    assert result.exit_code == 0, result.output
    entries = json.loads((fed / "revoked.json").read_text())
    assert [e["serial"] for e in entries] == [serial_hex(ODD)]


@pytest.mark.parametrize(
    "given",
    [
        "0F" + "1A" * 19,  # as covey certs list prints it
        "f" + "1a" * 19,
        "0x0F" + "1A" * 19,
        "0Xf" + "1a" * 19,
        "serial=0F" + "1A" * 19,  # as openssl x509 -serial prints it
        ":".join(["0F", *["1A"] * 19]),  # as openssl x509 -text does
        str(ODD),  # decimal: its hex reading is too large for a serial
    ],
)
def test_covey_certs_revoke_takes_a_serial_in_any_form(tmp_path: Path, given: str) -> None:
    """A certificate replaced by a new one (its file gone) is revoked by its serial."""
    runner = CliRunner()
    fed = tmp_path / "fed"
    assert runner.invoke(certs_app, ["init", "--dir", str(fed)]).exit_code == 0
    result = runner.invoke(certs_app, ["revoke", "--serial", given, "--dir", str(fed)])
    assert result.exit_code == 0, result.output
    assert f"serial {serial_hex(ODD)}" in " ".join(result.output.split())
    assert load_revoked(fed) == {ODD}
    again = runner.invoke(certs_app, ["revoke", "--serial", f"0x{ODD:x}", "--dir", str(fed)])
    assert again.exit_code == 0, again.output
    assert "already revoked" in again.output
    assert len(json.loads((fed / "revoked.json").read_text())) == 1


def test_a_serial_of_digits_alone_is_read_as_the_certificate_it_names(tmp_path: Path) -> None:
    runner = CliRunner()
    fed = tmp_path / "fed"
    assert runner.invoke(certs_app, ["init", "--dir", str(fed)]).exit_code == 0
    assert parse_serial("1234", known={0x1234}) == 0x1234
    assert parse_serial("1234", known={1234}) == 1234
    assert parse_serial("7") == 7
    refused = runner.invoke(certs_app, ["revoke", "--serial", "1234", "--dir", str(fed)])
    assert refused.exit_code == 2
    assert "reads as decimal (0x4d2) and as hex (0x1234)" in refused.output
    for bad in ("0x", "12g4", "-5", "0"):
        with pytest.raises(ValueError, match="serial"):
            parse_serial(bad)


def test_revocation_lists_of_older_covey_are_read_and_rewritten_alike(tmp_path: Path) -> None:
    runner = CliRunner()
    fed = tmp_path / "fed"
    assert runner.invoke(certs_app, ["init", "--dir", str(fed)]).exit_code == 0
    old = [{"serial": "0xab12"}, {"serial": 4660}, {"serial": "0c:0d"}, {"serial": "EF"}]
    (fed / "revoked.json").write_text(json.dumps(old))
    assert load_revoked(fed) == {0xAB12, 0x1234, 0x0C0D, 0xEF}
    result = runner.invoke(certs_app, ["revoke", "--serial", "0x99", "--dir", str(fed)])
    assert result.exit_code == 0, result.output
    written = [e["serial"] for e in json.loads((fed / "revoked.json").read_text())]
    assert written == ["AB12", "1234", "0C0D", "EF", "99"]


def test_issue_overwrite_says_it_revoked_the_certificate_it_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation revokes the old certificate: the client still using it is refused at once.

    Before: the command said only that it wrote the new files, and its refusal without
    ``--overwrite`` named the serial in lower-case hex (``f1a1a...``).
    """
    runner = CliRunner()
    fed = tmp_path / "fed"
    assert runner.invoke(certs_app, ["init", "--dir", str(fed)]).exit_code == 0
    monkeypatch.setattr(x509, "random_serial_number", lambda: ODD)
    assert runner.invoke(certs_app, ["issue", "alice", "--dir", str(fed)]).exit_code == 0
    monkeypatch.undo()
    refused = runner.invoke(certs_app, ["issue", "alice", "--dir", str(fed)])
    assert refused.exit_code == 2
    assert f"serial {serial_hex(ODD)})" in " ".join(refused.output.split())
    result = runner.invoke(certs_app, ["issue", "alice", "--overwrite", "--dir", str(fed)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"revoked the certificate it replaced (serial {serial_hex(ODD)})" in said
    assert "a client still using it is refused from now on" in said
    fresh = runner.invoke(certs_app, ["issue", "bob", "--dir", str(fed)])
    assert "revoked" not in fresh.output
