"""The TLS choice of ``covey server`` (``--certs DIR`` or ``--insecure``), flags or file."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from covey.deploy._cli_errors import Settings, fail

__all__ = ["_security", "tls_choice"]


def tls_choice(certs: Any, insecure: bool | None, s: Settings) -> tuple[Any, bool]:
    """``--certs`` and ``--insecure`` as given, the file's where the command line chose nothing.

    A TLS choice on the command line overrides the file's whole: ``--insecure`` over
    the file's ``certs = "..."``, ``--certs`` or ``--no-insecure`` over its
    ``insecure = true``. Both on the command line are still refused as "not both".
    """
    if insecure is True:
        return certs, True
    if certs is not None or insecure is False:
        return certs if certs is not None else s.get("certs"), False
    return s.get("certs"), bool(s.get("insecure", False))


def _security(certs: Path | None, insecure: bool, flag: str = "--certs") -> tuple[Path | None, Any]:
    """Check ``--certs`` / ``--insecure``: exactly one, and the folder is a federation's.

    ``flag``: where ``certs`` came from, named in errors (a ``--config`` file's key).

    Returns the folder and the TLS material read from it (None without TLS), which
    the server is given as read: read again, every warning about a file (a
    certificate not valid yet, a key others can read) would be printed twice.
    """
    if certs is None and not insecure:
        fail(
            "no --certs: give --certs DIR (a folder made by `covey certs init --dir DIR`), "
            "or --insecure for a local experiment without TLS"
        )
    if certs is not None and insecure:
        fail("give --certs DIR or --insecure, not both")
    if certs is not None:
        from covey.deploy._pem import missing_server_files

        missing = missing_server_files(certs)
        if missing:
            fail(
                f"{flag} {certs} is not a federation folder (missing {', '.join(missing)}); "
                f"make one with `covey certs init --dir {shlex.quote(str(certs))}`"
            )
        from covey.deploy._tls import tls_from_dir

        try:
            return certs, tls_from_dir(certs)
        except (OSError, ValueError) as exc:
            fail(f"{flag} {certs}: {exc}")
    # Without TLS, serve() itself warns (naming the address anyone can join at).
    return certs, None
