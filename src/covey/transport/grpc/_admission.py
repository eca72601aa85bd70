"""Who may join and stay: identity, certificate, revocation and version checks on a stream.

A refusal is logged with the peer's address, recorded as a ``refused`` event
of the run, and sent to the client as a status it will not retry
(``PERMISSION_DENIED`` for identities, ``FAILED_PRECONDITION`` for versions and
a run that is over; a client of another wire protocol is refused like one of
another version). A certificate revoked while its client is connected is
noticed at the client's next message (heartbeats included), and the
connection dropped; so is a certificate that expires while its client is
connected (TLS checks the validity dates only at the handshake).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import logging
import threading
from typing import NoReturn

import grpc
from cryptography import x509

from covey.core._version import covey_version
from covey.transport.grpc._checks import kinds_problem, name_problem
from covey.transport.grpc._frames import PROTOCOL, protocol_refusal
from covey.transport.grpc._refusal import RUN_OVER, compatible, stated_version, version_refusal
from covey.transport.grpc._registry import Connection, Registry, peer_of
from covey.transport.grpc._strength import weakness
from covey.transport.grpc.proto import covey_pb2 as pb

__all__ = ["Admission", "Refusal"]

logger = logging.getLogger("covey")

REFUSALS_KEPT = 100
"""The latest refusals whose causes a server keeps, for the stop of a run short of clients."""


class Refusal(Exception):
    """A connected client is no longer accepted (e.g. its certificate was revoked)."""


class Admission:
    """The checks a client's stream passes before and while it takes part.

    Args:
        registry: Where refusals are recorded as events.
        tls: The server's TLS material (its ``is_revoked``), or None when insecure.
    """

    def __init__(self, registry: Registry, tls: object | None) -> None:
        """Checks for ``registry``'s clients under ``tls`` (None: no identity checks)."""
        self.registry = registry
        self.tls = tls
        self.version = covey_version()
        self._not_after: dict[bytes, _dt.datetime] = {}
        self.refused = 0  # the refusals so far (see :meth:`refused_since`)
        self._causes: collections.deque[str] = collections.deque(maxlen=REFUSALS_KEPT)
        self._lock = threading.Lock()

    def note(self, why: str, name: str = "", certificate: bytes | None = None) -> None:
        """Count a refusal of client ``name`` for ``why`` (its certificate's serial named)."""
        said = [f"client {name}"] if name else []
        if certificate is not None:
            with contextlib.suppress(ValueError):
                serial = x509.load_pem_x509_certificate(certificate).serial_number
                digits = f"{serial:X}"  # as `covey certs list` and openssl print it
                said.append(f"serial {digits.zfill(len(digits) + len(digits) % 2)}")
        with self._lock:
            self.refused += 1
            self._causes.append(f"{why} ({', '.join(said)})" if said else why)

    def note_handshake(self, host: str) -> None:
        """Count a connection from ``host`` whose TLS handshake failed (see ``_handshakes``)."""
        self.note(
            f"TLS handshake failed from {host} (a client certificate of another CA or expired, "
            "or a host name the server's certificate does not list: see the server's log)"
        )

    def note_data(self, host: str, why: str) -> None:
        """Count a data connection from ``host`` closed for ``why``."""
        self.note(f"data connection from {host} closed: {why}")

    def refused_since(self, mark: int) -> str:
        """The refusals since :attr:`refused` was ``mark``, counted by cause; "" if none.

        Example: ``2 connections refused in the wait: certificate revoked (client a,
        serial 0A1B); certificate revoked (client b, serial 0C)``.
        """
        with self._lock:
            count = self.refused - mark
            causes = list(self._causes)[-count:] if count > 0 else []
        if not causes:
            return ""
        seen = collections.Counter(causes)
        shown = [c if seen[c] == 1 else f"{c} x{seen[c]}" for c in dict.fromkeys(causes)]
        more = f"; {len(shown) - 3} more" if len(shown) > 3 else ""
        plural = "connection" if count == 1 else "connections"
        return f"{count} {plural} refused in the wait: {'; '.join(shown[:3])}{more}"

    def refuse(
        self,
        context: grpc.ServicerContext,
        name: str,
        code: grpc.StatusCode,
        why: str,
        certificate: bytes | None = None,
    ) -> NoReturn:
        """Log and record the refusal of ``name``, then end its stream with ``code``."""
        peer = peer_of(context)
        logger.warning("refused %s from %s: %s", name or "a client", peer, why)
        self.registry.event(name or peer, "refused", f"{why} (peer {peer})")
        self.note(why, name, certificate)
        context.abort(code, why)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def admit(self, context: grpc.ServicerContext, hello: pb.Hello) -> tuple[str, bytes | None]:
        """The client's name and certificate, or a refusal that ends the stream."""
        name, certificate = self._identify(context, hello)
        why = kinds_problem(hello.kinds)  # before the connection keeps them
        if why is not None:
            self.refuse(context, name, grpc.StatusCode.INVALID_ARGUMENT, why)
        if not compatible(hello.version, self.version):
            self.refuse(
                context,
                name,
                grpc.StatusCode.FAILED_PRECONDITION,
                version_refusal(hello.version, self.version),
            )
        if hello.protocol != PROTOCOL:
            self.refuse(
                context,
                name,
                grpc.StatusCode.FAILED_PRECONDITION,
                protocol_refusal(hello.protocol, PROTOCOL, hello.version, self.version),
            )
        return name, certificate

    def version_note(self, version: str) -> str:
        """What a join line says of a client's covey ``version``: nothing if it is the server's.

        The version is as the peer stated it, so it is shown as refusals quote it
        (at most 40 characters, printable, one line).

        Example: ``covey 0.1.1; this server 0.1.0``.
        """
        if version == self.version:
            return ""
        return f"covey {stated_version(version)}; this server {self.version}"

    def _identify(self, context: grpc.ServicerContext, hello: pb.Hello) -> tuple[str, bytes | None]:
        if self.tls is None:
            why = name_problem(hello.name)
            if why is not None:
                self.refuse(context, "", grpc.StatusCode.INVALID_ARGUMENT, f"client name: {why}")
            return hello.name or peer_of(context), None
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        names = auth.get("x509_common_name") or []
        if not pems:
            self.refuse(
                context,
                "" if name_problem(hello.name) else hello.name,
                grpc.StatusCode.PERMISSION_DENIED,
                "no client certificate (this server requires mutual TLS)",
            )
        name = str(names[0].decode(errors="replace")) if names else ""
        if not name:  # a certificate of another PKI that names its holder in its SAN only
            self.refuse(
                context,
                "" if name_problem(hello.name) else hello.name,
                grpc.StatusCode.PERMISSION_DENIED,
                "the client certificate has no common name (CN), which names the client in "
                "the federation: issue it one with `covey certs issue NAME`",
            )
        certificate = bytes(pems[0])
        bad_name = name_problem(name)  # the CA signed it, but a line break would forge log lines
        if bad_name is not None:
            self.refuse(
                context,
                "",
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate's common name {name[:60]!r} cannot name a client: {bad_name}",
            )
        why = self.problem(certificate) or self.weak(certificate)
        if why is not None:
            self.refuse(context, name, grpc.StatusCode.PERMISSION_DENIED, why, certificate)
        return name, certificate

    @staticmethod
    def weak(certificate: bytes) -> str | None:
        """Why ``certificate`` is too weak to admit (a short RSA key, SHA-1), or None."""
        try:
            why = weakness(x509.load_pem_x509_certificate(certificate))
        except ValueError:  # gRPC parsed it at the handshake; nothing more to say
            return None
        return None if why is None else f"certificate too weak: {why}"

    def revoked(self, certificate: bytes | None) -> bool:
        """Whether ``certificate`` is on the federation's revocation list now."""
        check = getattr(self.tls, "is_revoked", None)
        return certificate is not None and check is not None and bool(check(certificate))

    def expired(self, certificate: bytes | None) -> str | None:
        """When ``certificate`` expired (``"YYYY-MM-DD HH:MM:SS UTC"``), or None if it has not."""
        if certificate is None:
            return None
        not_after = self._not_after.get(certificate)
        if not_after is None:
            try:
                not_after = x509.load_pem_x509_certificate(certificate).not_valid_after_utc
            except ValueError:  # gRPC checked it at the handshake; nothing more to say
                return None
            if len(self._not_after) > 100_000:
                self._not_after.clear()
            self._not_after[certificate] = not_after
        if _dt.datetime.now(_dt.UTC) <= not_after:
            return None
        return f"{not_after:%Y-%m-%d %H:%M:%S} UTC"

    def problem(self, certificate: bytes | None) -> str | None:
        """Why ``certificate`` is no longer accepted (revoked, expired), or None if it is."""
        if self.revoked(certificate):
            return "certificate revoked"
        when = self.expired(certificate)
        if when is not None:
            return f"certificate expired at {when}; issue the client a new one"
        return None

    def check(self, conn: Connection) -> None:
        """Raise :class:`Refusal` if ``conn``'s certificate was revoked or expired since then."""
        why = self.problem(conn.certificate)
        if why is not None:
            raise Refusal(why)

    def run_over(self, context: grpc.ServicerContext, name: str) -> NoReturn:
        """Refuse a client that arrives when the run is over."""
        self.refuse(context, name, grpc.StatusCode.FAILED_PRECONDITION, RUN_OVER)
