"""The revocation list as a running server sees it: re-read whenever the file changes.

The server asks at every message of every client whether its certificate is
revoked, so a revocation takes effect at the client's next heartbeat. Reading
and parsing ``revoked.json`` each time would be wasteful: the list is re-read
only when the file's size, time or inode change, and each certificate's serial
number is parsed once. A list that becomes unreadable while the server runs
(an edit saved half-way, a file removed) is logged once, and the last list
read stays in force until a good one is written: no client that was revoked
gets back in, and the clients that were admitted are not all refused.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from cryptography import x509

__all__ = ["RevocationList"]

logger = logging.getLogger("covey")


class RevocationList:
    """``is_revoked(pem)`` for a federation folder, cached until ``revoked.json`` changes.

    Args:
        directory: The federation folder made by ``covey certs init``.

    Example:
        >>> check = RevocationList("fed")  # doctest: +SKIP
        >>> check(open("fed/clients/site-1.pem", "rb").read())  # doctest: +SKIP
        False
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """Watch the revocation list of ``directory``."""
        from covey.deploy.certs import REVOKED

        self._directory = Path(directory)
        self._path = self._directory / REVOKED
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._cert_serials: dict[bytes, int] = {}

    def _current(self) -> frozenset[int]:
        from covey.deploy.certs import load_revoked

        try:
            st = os.stat(self._path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._serials = load_revoked(self._directory)
                except (OSError, ValueError) as exc:
                    if self._stamp is None:  # never read: an error, never "nothing revoked"
                        raise
                    logger.error(
                        "%s; keeping the revocation list read before (%d revoked) until it "
                        "is fixed",
                        exc,
                        len(self._serials),
                    )
                self._stamp = stamp
            return self._serials

    def _serial(self, pem: bytes) -> int:
        serial = self._cert_serials.get(pem)
        if serial is None:
            serial = x509.load_pem_x509_certificate(pem).serial_number
            if len(self._cert_serials) > 100_000:
                self._cert_serials.clear()
            self._cert_serials[pem] = serial
        return serial

    def __call__(self, pem: bytes) -> bool:
        """Whether the certificate ``pem`` is on the list now."""
        return self._serial(pem) in self._current()
