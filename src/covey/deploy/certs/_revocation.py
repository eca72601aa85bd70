"""The revocation list: revoke a client certificate, read the list, check a certificate."""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from cryptography import x509

from covey.core._files import atomic_write, read_given
from covey.deploy._pem import cannot_read, read_pem
from covey.deploy.certs._common import (
    CERT_MODE,
    CLIENTS_DIRNAME,
    REVOKED,
    existing_federation,
    load_cert,
    locked,
    subject_common_name,
    utc_now,
    validate_client_id,
)

__all__ = [
    "add_revoked",
    "is_revoked",
    "load_revoked",
    "parse_serial",
    "revoke",
    "serial_hex",
    "write_revoked",
]

MAX_REVOKED_BYTES = 16 << 20
"""The largest revocation list read (some 150,000 revoked certificates)."""


def serial_hex(serial: int) -> str:
    """A certificate's serial as ``openssl x509 -noout -serial`` prints it: ``0A1B...``.

    Upper-case hex, whole bytes (a leading ``0`` for an odd count of digits), so that
    the serial ``covey certs`` shows is found as it is in what openssl prints.
    """
    if serial < 0:  # a malformed certificate's; openssl prints the sign before the bytes
        return f"-{serial_hex(-serial)}"
    digits = f"{serial:X}"
    return digits.zfill(len(digits) + len(digits) % 2)


MAX_SERIAL = 1 << 160
"""Above every serial a certificate can carry (RFC 5280: at most 20 octets)."""


def parse_serial(text: str, known: Collection[int] = ()) -> int:
    """A certificate serial as it is written: hex with or without ``0x``, or decimal.

    Hex is taken in either case, with ``0x``, without it (as ``covey certs list``
    and ``openssl x509 -serial`` print it, ``serial=`` included) or with colons
    between the bytes (as ``openssl x509 -text`` does). A serial of digits alone
    reads either way: it is the one of its two readings in ``known`` (the
    federation's certificates and revoked serials), else the decimal one when the
    hex reading is too large for a certificate's, else refused.

    Raises:
        ValueError: Not a serial, not positive, or digits that read both ways.
    """
    given = text.strip()
    digits = given[len("serial=") :] if given.lower().startswith("serial=") else given
    hexadecimal = digits[2:] if digits.lower().startswith("0x") else None
    if hexadecimal is None and (":" in digits or not digits.isdigit()):
        hexadecimal = digits.replace(":", "")
    if hexadecimal is not None:
        if not hexadecimal or any(c not in "0123456789abcdefABCDEF" for c in hexadecimal):
            raise ValueError(f"not a certificate serial: {text!r} (give its hex or decimal digits)")
        number = int(hexadecimal, 16)
    else:
        readings = {int(digits), int(digits, 16)}
        found = readings & set(known)
        number = min(readings)
        if len(found) == 1:
            number = found.pop()
        elif len(readings) > 1 and max(readings) < MAX_SERIAL:
            raise ValueError(
                f"serial {digits} reads as decimal (0x{int(digits):x}) and as hex "
                f"(0x{int(digits, 16):x}): give it with 0x, as one of these"
            )
    if not 0 < number < MAX_SERIAL:
        raise ValueError(f"a certificate serial is positive and at most 20 bytes, not {text!r}")
    return number


def revoke(directory: str | os.PathLike[str], client_id_or_serial: str | int) -> int:
    """Revoke a client certificate: add its serial (and common name) to ``revoked.json``.

    Revoking twice is harmless.  The certificate files are left in place (so
    ``list_clients`` can still show them); the id can be issued again.

    Args:
        directory: The federation directory.
        client_id_or_serial: A client id (a ``str``; its current certificate
            in ``clients/`` is revoked) or a certificate serial number (an
            ``int``, for a certificate whose file is gone).

    Returns:
        The revoked serial number.

    Raises:
        FileNotFoundError: The directory, its CA, or the client's certificate
            is missing.
        ValueError: A bad client id, or a serial that is not positive.
        TypeError: ``client_id_or_serial`` is neither a ``str`` nor an ``int``.
    """
    root = existing_federation(directory)
    with locked(root):
        if isinstance(client_id_or_serial, bool):
            raise TypeError("expected a client id (str) or a serial number (int), not a bool")
        if isinstance(client_id_or_serial, int):
            serial = client_id_or_serial
            if serial <= 0:
                raise ValueError(f"a certificate serial is positive, not {serial}")
            common_name = _common_name_of_serial(root, serial)
        elif isinstance(client_id_or_serial, str):
            client_id = client_id_or_serial
            validate_client_id(client_id)
            cert_path = root / CLIENTS_DIRNAME / f"{client_id}.pem"
            if not cert_path.is_file():
                raise FileNotFoundError(
                    f"no certificate for client {client_id!r} in {root / CLIENTS_DIRNAME}"
                )
            cert = x509.load_pem_x509_certificate(read_pem(cert_path, "a client certificate"))
            serial = cert.serial_number
            common_name = subject_common_name(cert)
        else:
            raise TypeError(
                f"expected a client id (str) or a serial number (int), not {client_id_or_serial!r}"
            )
        add_revoked(root, serial, common_name)
    return serial


def load_revoked(directory: str | os.PathLike[str]) -> frozenset[int]:
    """Read the serial numbers in a federation's ``revoked.json``.

    A missing or malformed file is an error rather than "nothing revoked", so
    that a damaged directory never silently lets revoked clients back in.

    Args:
        directory: The federation directory.

    Returns:
        The revoked serial numbers.

    Raises:
        FileNotFoundError: ``revoked.json`` is missing.
        OSError: ``revoked.json`` cannot be read (a folder in its place: IsADirectoryError).
        ValueError: ``revoked.json`` is malformed.
    """
    return frozenset(int(entry["serial"], 16) for entry in _read_revoked(Path(directory)))


def is_revoked(
    cert_pem: bytes,
    directory_or_revoked: str | os.PathLike[str] | Collection[int],
) -> bool:
    """Tell whether a certificate has been revoked.

    Args:
        cert_pem: The certificate, PEM or DER (e.g. gRPC's
            ``context.auth_context()["x509_pem_cert"][0]``).
        directory_or_revoked: A federation directory (its ``revoked.json`` is
            read on every call, so revocations apply at once) or a collection
            of revoked serials as :func:`load_revoked` returns.

    Returns:
        Whether the certificate's serial number is revoked.

    Raises:
        ValueError: The certificate cannot be parsed.
    """
    if isinstance(directory_or_revoked, (str, os.PathLike)):
        revoked: Collection[int] = load_revoked(directory_or_revoked)
    else:
        revoked = directory_or_revoked
    return load_cert(cert_pem).serial_number in revoked


def _read_revoked(root: Path) -> list[dict[str, Any]]:
    """Read and check the revocation list, serials as :func:`serial_hex` strings.

    A serial in the file is hex text (``"0A1B..."``, as written since; ``"0xa1b..."``,
    as older covey wrote it; either case, colons between the bytes) or a JSON number.
    """
    path = root / REVOKED
    try:  # a named pipe no process writes is refused, not waited on
        data = read_given(path, MAX_REVOKED_BYTES)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"revocation list {path} is missing: copy {REVOKED} into {root} from the "
            "federation folder `covey certs init` made (`covey certs revoke` updates it); "
            "a file holding [] revokes no one"
        ) from None
    except OSError as exc:  # a folder in its place, a file this user cannot read
        raise cannot_read(exc, "the revocation list", path) from None
    if len(data) > MAX_REVOKED_BYTES:
        raise ValueError(
            f"revocation list {path} is larger than {MAX_REVOKED_BYTES:,} bytes: not the "
            f"{REVOKED} `covey certs revoke` writes"
        )
    try:
        entries = json.loads(data.decode("utf-8"))
        if not isinstance(entries, list):
            raise TypeError("not a list")
        cleaned: list[dict[str, Any]] = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or "serial" not in entry:
                raise TypeError(f'entry {index} is not an object with a "serial": {entry!r:.80}')
            serial = entry["serial"]
            number = serial if isinstance(serial, int) else _hex_serial(str(serial))
            if isinstance(number, bool) or number <= 0:
                raise ValueError("bad serial")
            cleaned.append({**entry, "serial": serial_hex(number)})
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"malformed revocation list {path}: {error}") from None
    return cleaned


def _hex_serial(text: str) -> int:
    """A serial written in ``revoked.json``: hex, with or without ``0x``, colons allowed."""
    digits = text.strip().replace(":", "")
    return int(digits[2:] if digits.lower().startswith("0x") else digits, 16)


def write_revoked(root: Path, entries: list[dict[str, Any]]) -> None:
    """Write the revocation list atomically."""
    data = (json.dumps(entries, indent=2) + "\n").encode("utf-8")
    atomic_write(root / REVOKED, data, mode=CERT_MODE)


def add_revoked(root: Path, serial: int, common_name: str | None) -> None:
    """Add a serial to the revocation list (one already there is left alone)."""
    entries = _read_revoked(root)
    if any(int(entry["serial"], 16) == serial for entry in entries):
        return
    entries.append(
        {
            "serial": serial_hex(serial),  # as `covey certs list` and openssl print it
            "common_name": common_name,
            "revoked_at": utc_now().isoformat(),
        }
    )
    write_revoked(root, entries)


def _common_name_of_serial(root: Path, serial: int) -> str | None:
    """The common name of the client certificate with this serial, if any."""
    clients = root / CLIENTS_DIRNAME
    for path in sorted(clients.glob("*.pem")) if clients.is_dir() else []:
        try:
            cert = x509.load_pem_x509_certificate(read_pem(path, "a client certificate"))
        except (OSError, ValueError):
            continue
        if cert.serial_number == serial:
            return subject_common_name(cert)
    return None
