"""Which failures a client retries and which end it: refusals, versions, retry budgets.

A server refuses a client for good when its certificate is not trusted or is
revoked, its covey version cannot speak to the server's, or the run is over; a
server with no ``Federation.Join`` of this client's protocol (``UNIMPLEMENTED``:
another service, or a covey release of another wire package) cannot take it either.
Retrying those only hides the cause behind "connection lost"; the client stops
at once with a message naming the cause. Everything else (a server restarting, a
network outage) is retried with exponential backoff for a bounded time.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import random
import time
from dataclasses import dataclass, field

import grpc
from cryptography import x509

from covey.core._text import clipped

__all__ = [
    "HANDSHAKE_STRIKES",
    "RUN_OVER",
    "STEADY_SECONDS",
    "VERSION_CHARS",
    "Refused",
    "RetryBudget",
    "compatible",
    "details_of",
    "handshake_closed",
    "permanent_cause",
    "server_named",
    "stated_version",
    "transient_text",
    "unimplemented_refusal",
    "version_refusal",
]

logger = logging.getLogger("covey")
_DETAILS_CHARS = 1000  # of a status text a peer wrote (gRPC allows 16 KB), as logged

#: TLS handshakes the server closed in a row before a client takes it as a refusal.
HANDSHAKE_STRIKES = 3

#: The most characters of a covey version a peer states (a server's ``Welcome``) or is quoted by.
VERSION_CHARS = 40

#: What a server says to a client that arrives while it closes (its run is over).
RUN_OVER = "the run is over (server closing)"

#: The status codes a server uses for a refusal that retrying cannot change.
_PERMANENT = {
    grpc.StatusCode.PERMISSION_DENIED: "the server refused this client",
    grpc.StatusCode.UNAUTHENTICATED: "the server refused this client's identity",
    grpc.StatusCode.FAILED_PRECONDITION: "the server cannot take this client",
}

#: What gRPC's details say when the TLS handshake fails: certificates, not the network.
_TLS_MARKERS = (
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "Handshake failed",
    "handshake failed",
    "SSL_ERROR_SSL",
    "TLSV1_ALERT",
    "tlsv1 alert",
    "certificate",
)


class Refused(ConnectionError):
    """The server refused this client for good; retrying would not help.

    Attributes:
        cause: What the refusal was about, in words for an operator.
    """

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def compatible(client: str, server: str) -> bool:
    """Whether a client of version ``client`` may join a server of version ``server``.

    Releases with the same major and minor number speak the same protocol.

    Example:
        >>> compatible("0.1.3", "0.1.0"), compatible("0.2.0", "0.1.0")
        (True, False)
    """
    return client.split(".")[:2] == server.split(".")[:2] and bool(client)


def stated_version(version: str) -> str:
    """A version a peer stated, as a refusal quotes it: at most 40 characters, one line.

    Example:
        >>> stated_version(""), stated_version("0.2.0"), stated_version("9." + "x" * 99)
        ('(unknown)', '0.2.0', '9.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...')
    """
    if not version:
        return "(unknown)"
    shown = version[:VERSION_CHARS].encode("ascii", "backslashreplace").decode()
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown + ("..." if len(version) > VERSION_CHARS else "")


def server_named(version: str) -> str:
    """The server as a client names it, by the covey version its ``Welcome`` states.

    A server older than the ``Welcome``'s version field states none.

    Example:
        >>> server_named("0.2.0"), server_named("")
        ('a server of covey 0.2.0', 'a server of an older covey (it states no version)')
    """
    if not version:
        return "a server of an older covey (it states no version)"
    return f"a server of covey {stated_version(version)}"


def version_refusal(client: str, server: str) -> str:
    """The message a server gives a client whose version it cannot serve."""
    return (
        f"incompatible covey versions: this server runs covey {server}, the client runs "
        f"covey {stated_version(client)}; install covey "
        f"{'.'.join(server.split('.')[:2])}.x on the client"
    )


def unimplemented_refusal(details: str) -> str:
    """What a client says when the server has no ``Federation.Join`` of this client's protocol.

    Example:
        >>> unimplemented_refusal("Method not found!").split(":")[0]
        'the server does not serve covey /covey.v1.Federation/Join (UNIMPLEMENTED'
    """
    from covey import __version__
    from covey.transport.grpc._options import METHOD

    return (
        f"the server does not serve covey {METHOD} (UNIMPLEMENTED: {details or 'no details'}): "
        f"it is not a covey server (check the address), or a covey release whose wire "
        f"protocol this client (covey {__version__}) does not speak; run the same covey "
        "major.minor version on both sides"
    )


def details_of(exc: BaseException) -> str:
    """What gRPC says went wrong, with IPv6 addresses in brackets (gRPC escapes them).

    Example:
        >>> details_of(ValueError("ipv6:%5B::1%5D:9092: Connection refused"))
        'ipv6:[::1]:9092: Connection refused'
    """
    details = str(exc.details() if hasattr(exc, "details") else exc) or ""
    # A peer's status text, logged with each retry: escaped, then cut.
    return clipped(details.replace("%5B", "[").replace("%5D", "]"), _DETAILS_CHARS)


def permanent_cause(exc: grpc.RpcError, server_name: str | None = None) -> str | None:
    """The cause of a refusal retrying cannot change, or None for a transient error.

    ``server_name`` is the host the client checked the certificate against in place of
    the address's (``connect(server_name=...)``), named when the certificate does not
    name it.
    """
    code = exc.code() if hasattr(exc, "code") else None
    details = details_of(exc)
    if code in _PERMANENT:
        return f"{_PERMANENT[code]}: {details}" if details else _PERMANENT[code]
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return unimplemented_refusal(details)
    if code == grpc.StatusCode.UNAVAILABLE and "Hostname Verification" in details and server_name:
        return (
            f"the server's certificate does not name {server_name!r}, the host given as "
            "--server-name (`server_name=` in Python): give one of the host names or IPs "
            f"the certificate names (`covey certs init --host ...` chose them): {details}"
        )
    if code == grpc.StatusCode.UNAVAILABLE and "Hostname Verification" in details:
        return (
            "the server's certificate is not issued for the address dialled: dial a host "
            "name or IP it names (`covey certs init --host ...` chose them when it made "
            "the certificate), or give that name with `--server-name HOST` (`covey client`, "
            "`covey site`; `server_name=` in Python) when dialling an IP or a load "
            f"balancer: {details}"
        )
    if code == grpc.StatusCode.UNAVAILABLE and "certificate has expired" in details:
        return (
            "the server's certificate (or the CA's) has expired by this machine's clock: "
            "the server needs a new one (or this machine's clock is wrong): " + details
        )
    if code == grpc.StatusCode.UNAVAILABLE and "certificate is not yet valid" in details:
        return (
            "the server's certificate (or the CA's) is not yet valid by this machine's "
            "clock: check the clocks of this machine and of the one that issued it: " + details
        )
    if code == grpc.StatusCode.UNAVAILABLE and "WRONG_VERSION_NUMBER" in details:
        return (
            "the server does not speak TLS (was it started with --insecure? or is the "
            "address another service's, a wrong host or port, not the covey server's?): "
            "a client with TLS cannot join it; check --server, serve with --certs, or "
            f"connect with --insecure for a local experiment: {details}"
        )
    if code == grpc.StatusCode.UNAVAILABLE and any(m in details for m in _TLS_MARKERS):
        return (
            "certificate not trusted: the TLS handshake with the server failed (a "
            f"certificate from another federation, or a wrong CA?): {details}"
        )
    return None


def transient_text(exc: grpc.RpcError) -> str:
    """How a retried failure reads in the client's log: status code and gRPC's details.

    gRPC's own cap on a server's concurrent calls says only ``Concurrent RPC
    limit exceeded!``: that is a server full of clients, and says so.
    """
    code = exc.code() if hasattr(exc, "code") else None
    details = details_of(exc)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Concurrent RPC limit" in details:
        details = f"the server is full: it serves as many clients at once as it can ({details})"
    return f"{code}: {details}"


def handshake_closed(exc: grpc.RpcError) -> bool:
    """Whether the server closed the connection during the TLS handshake.

    That is how a server refuses a client certificate it does not trust (or a
    missing one); a server that is down refuses the connection instead.
    """
    code = exc.code() if hasattr(exc, "code") else None
    details = details_of(exc)
    return (
        code == grpc.StatusCode.UNAVAILABLE
        and "failed to connect" in details
        and "Socket closed" in details
    )


def handshake_refusal(
    strikes: int, certificate: bytes | None = None, *, insecure: bool = False
) -> str:
    """The cause given when the server closed ``strikes`` TLS handshakes in a row.

    Args:
        strikes: The handshakes closed in a row.
        certificate: The client's own certificate (PEM), whose validity dates,
            by this machine's clock, may be the cause.
        insecure: The client connects without TLS: the server, which closes a
            connection that does not start a TLS handshake, requires it.

    Example:
        >>> handshake_refusal(3).split(";")[0]
        'certificate not trusted: the server closed the TLS handshake 3 times in a row'
    """
    if insecure:
        return (
            f"the server requires TLS: it closed the connection {strikes} times in a row as "
            "this client connected without TLS (--insecure); give --certs DIR and --name "
            "(or --ca, --cert and --key) from the federation's `covey certs`"
        )
    said = (
        f"certificate not trusted: the server closed the TLS handshake {strikes} times in a row; "
    )
    dates = _validity(certificate)
    if dates is not None:
        not_before, not_after = dates
        now = _dt.datetime.now(_dt.UTC)
        if now > not_after:
            return said + (
                f"this client's certificate expired at {not_after:%Y-%m-%d %H:%M:%S} UTC: "
                "it needs a new one (`covey certs issue NAME --overwrite`)"
            )
        if now < not_before:
            return said + (
                f"this client's certificate is not valid before {not_before:%Y-%m-%d %H:%M:%S} "
                "UTC by this machine's clock: check the clocks of this machine, the server "
                "and the one that issued it"
            )
    return said + (
        "its CA does not accept this client's certificate (issued by another "
        "federation? or, by the server's clock, expired or not valid yet: check the "
        "clocks of this machine and the server) or the client presented none"
    )


def expired_certificate(certificate: bytes | None) -> str | None:
    """Why a client cannot connect with ``certificate`` any more (it expired), or None.

    Checked before each retry: a client whose certificate expired while its
    server was down would otherwise retry until ``retry_for`` is spent, though
    no server will ever take it again.
    """
    dates = _validity(certificate)
    if dates is None or _dt.datetime.now(_dt.UTC) <= dates[1]:
        return None
    return (
        f"this client's certificate expired at {dates[1]:%Y-%m-%d %H:%M:%S} UTC (by this "
        "machine's clock): no server accepts it; it needs a new one "
        "(`covey certs issue NAME --overwrite`)"
    )


def _validity(certificate: bytes | None) -> tuple[_dt.datetime, _dt.datetime] | None:
    """The validity dates of a PEM certificate, or None if there is none or it does not parse."""
    if not certificate:
        return None
    try:
        cert = x509.load_pem_x509_certificate(certificate)
    except ValueError:
        return None
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def end_if_refused(strikes: int, certificate: bytes | None, *, insecure: bool) -> None:
    """Stop retrying once no later attempt could get through.

    That is when the server closed ``strikes`` handshakes in a row, or the
    client's own ``certificate`` has expired.

    Raises:
        Refused: Naming the cause.
    """
    if strikes >= HANDSHAKE_STRIKES:
        raise Refused(handshake_refusal(strikes, certificate, insecure=insecure))
    expired = expired_certificate(certificate)
    if expired is not None:
        raise Refused(expired)


MIN_ATTEMPT_SECONDS = 5.0
"""The least time an attempt is given to get through, however little is left of ``retry_for``."""


def unanswered(seconds: float) -> str:
    """Why an attempt was given up: the server took the connection and never answered."""
    return (
        f"no answer from the server within {seconds:.0f} s (it took the connection, "
        "but the TLS handshake or the stream's set-up never finished)"
    )


STEADY_SECONDS = 60.0
"""How long a session stays connected to count as good without performing a task."""


@dataclass
class RetryBudget:
    """Exponential backoff with jitter, for at most ``retry_for`` seconds of failures in a row.

    Args:
        backoff: First delay in seconds; it doubles on each failure, with jitter.
        max_backoff: Longest delay.
        retry_for: Seconds of failed attempts in a row before giving up (None: forever).
        max_attempts: Failed attempts in a row before giving up (None: no count limit).
    """

    backoff: float = 0.5
    max_backoff: float = 30.0
    retry_for: float | None = 600.0
    max_attempts: int | None = None
    failures: int = 0
    since: float | None = None
    started: float | None = None  # when the attempt under way started
    dropped: int = 0  # of the failures, sessions welcomed and ended before they got anywhere
    interrupted: bool = False  # the server said it was interrupted, since the last success
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        # A negative or NaN delay would reconnect in a tight loop; a NaN retry_for never
        # gives up. Refused here, naming the argument of connect() that set it.
        for name, value, zero in (
            ("backoff", self.backoff, False),
            ("max_backoff", self.max_backoff, False),
            ("retry_for", self.retry_for, True),
        ):
            if value is None and name == "retry_for":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
                or (value == 0 and not zero)
            ):
                bound = "0 or more" if zero else "above 0"
                raise ValueError(f"{name} must be a number of seconds {bound}, got {value!r}")
        attempts = self.max_attempts
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1
        ):
            raise ValueError(f"max_attempts must be None or an int >= 1, got {attempts!r}")

    def success(self) -> None:
        """A session got through: the next failure starts a new budget."""
        self.failures = self.dropped = 0
        self.interrupted = False
        self.since = self.started = None

    def session_ended(self, lasted: float, performed: int) -> None:
        """A session the server welcomed ended, after ``lasted`` seconds and ``performed`` tasks.

        ``performed`` counts the tasks the server sent on it, whether or not they
        were performed: a server that chose this client for a round got somewhere,
        and one killed while its clients train is a server restarting, which the
        client follows with a full budget. It got through if the server sent it a
        task, or it stayed connected for
        :data:`STEADY_SECONDS`: the next failure then starts a new budget. A session
        the server ended sooner counts as a failed attempt, its time as connected
        left out: a server that welcomes each client and then drops it (a crash
        loop, a hostile peer) is given up after ``retry_for`` (or ``max_attempts``)
        as one that cannot be reached is, rather than reconnected to for ever.
        """
        if performed or lasted >= STEADY_SECONDS:
            self.success()
            return
        self.dropped += 1
        self.started = None  # failing from now on, not from when it connected
        if self.since is not None:  # failing before it connected: not while connected
            self.since += lasted

    def attempt_deadline(self) -> float | None:
        """Note that an attempt starts; when it must have got through (a monotonic time).

        That is what is left of ``retry_for`` (the first failure's time counts from
        its attempt's start), but at least :data:`MIN_ATTEMPT_SECONDS`; None
        without ``retry_for``.
        """
        self.started = now = time.monotonic()
        if self.retry_for is None:
            return None
        left = self.retry_for - (0.0 if self.since is None else now - self.since)
        return now + max(MIN_ATTEMPT_SECONDS, left)

    def next_delay(self) -> float | None:
        """Record a failure; the delay before the next attempt, or None to give up."""
        now = time.monotonic()
        self.failures += 1
        if self.since is None:  # failing since its attempt started
            self.since = now if self.started is None else self.started
        if self.max_attempts is not None and self.failures >= self.max_attempts:
            return None
        if self.retry_for is not None and now - self.since >= self.retry_for:
            return None
        delay = min(self.max_backoff, self.backoff * 2.0 ** min(self.failures - 1, 16))
        delay *= float(self.rng.uniform(0.5, 1.0))
        if self.retry_for is not None:
            delay = min(delay, max(0.0, self.since + self.retry_for - now))
        return delay
