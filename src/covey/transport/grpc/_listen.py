"""Where the server listens: every address its host name stands for, or none of them.

Given a host name, gRPC binds each address the name resolves to (``localhost``
is ``127.0.0.1`` and ``::1``) and, if some of them are taken, goes on with the
others and only logs it. A server asked for ``localhost:9092`` while another
process holds ``127.0.0.1:9092`` would then listen on ``[::1]:9092`` alone, and
clients dialling ``127.0.0.1:9092`` would reach the other process. So the
server resolves a name itself and binds each address on its own: an address in
use refuses the start, naming it. An address this machine cannot listen on
(``::1`` where IPv6 is off) is left out, as gRPC leaves it out. An IP address
or a wildcard (``0.0.0.0``, ``[::]``) is handed to gRPC as it is, once a probe
found its port free (gRPC's own error for a port in use names no cause).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable

from covey.transport.grpc._checks import check_address

__all__ = ["ListenError", "PortTaken", "bind_all", "listen_targets"]

logger = logging.getLogger("covey")

_LOOPBACK = ("127.0.0.1", "::1")
"""What ``localhost`` names whatever the hosts file says (RFC 6761), as gRPC resolves it."""


def _target(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _resolve(host: str, port: int) -> list[str]:
    """The distinct IP addresses ``host`` resolves to, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ListenError(f"{host!r} does not resolve to an address: {exc.strerror}") from None
    ips = [str(info[4][0]).partition("%")[0] for info in infos]
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        ips += _LOOPBACK
    return list(dict.fromkeys(ips))


class ListenError(OSError):
    """An address a server cannot listen on: in use, not resolving, not this machine's.

    A mistake in the address given (the command line exits 2), not a failure of
    the work: each message names the address and what to do.
    """


def _usable(ip: str, port: int) -> str | None:
    """Why ``ip:port`` cannot be listened on, or None if it can.

    Raises:
        ListenError: Another process listens there.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # no IPv6 (or IPv4) on this machine
        return f"this machine has no {'IPv6' if family == socket.AF_INET6 else 'IPv4'}"
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(
                    f"{_target(ip, port)} is in use (another server listens there): stop "
                    "it, or choose another port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{ip} is not an address of this machine"
            return exc.strerror or str(exc)  # a port this user may not use, say
    return None


def listen_targets(address: str) -> list[str]:
    """The ``host:port`` targets to bind for ``address``: itself, or one per address of its name.

    Raises:
        ListenError: The name does not resolve, one of its addresses is in use, or
            none of them can be listened on here.

    Example:
        >>> listen_targets("127.0.0.1:0")
        ['127.0.0.1:0']
    """
    host, port = check_address(address, listen=True)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if literal.is_unspecified:  # raises, naming the address, if another process listens
            # gRPC listens on both families for a wildcard: either one taken stops it.
            if port:
                for probe in ("0.0.0.0", "::"):  # noqa: S104 (what gRPC binds for it)
                    _usable(probe, port)
        else:
            why = _usable(host, port)
            if why is not None:  # gRPC would say only that it failed to bind
                raise ListenError(why)
        return [address.strip()]
    ips = _resolve(host, port)
    usable = [ip for ip in ips if _usable(ip, port) is None]
    if not usable:
        raise ListenError(f"none of the addresses of {host} ({', '.join(ips)}) can be listened on")
    for ip in ips:
        if ip not in usable:
            logger.info("%s resolves to %s too, which this machine cannot listen on", host, ip)
    return [_target(ip, port) for ip in usable]


class PortTaken(ListenError):
    """The port the first address got (port 0) is taken on another address of the name."""


def bind_all(address: str, add_port: Callable[[str], int]) -> int:
    """Bind every target of ``address`` with ``add_port`` (gRPC's); the port they share.

    A port 0 is chosen by the first bind and used for the others.

    Raises:
        PortTaken: Port 0 was asked for, and the port the first address got is
            in use on another (bind again on a new server: another port is chosen).
        ListenError: An address cannot be bound (see :func:`listen_targets`), or
            gRPC refused a bind.
    """
    try:
        targets = listen_targets(address)
    except ListenError as exc:
        raise ListenError(f"cannot listen on {address}: {exc}") from None
    port = 0
    for target in targets:
        host = target.rpartition(":")[0]
        if port:
            target = f"{host}:{port}"
        chosen = port != 0 and targets[0].endswith(":0")  # the first bind picked this port
        try:
            got = add_port(target)
        except RuntimeError as exc:  # gRPC's way of saying it could not bind
            if chosen:
                raise PortTaken(f"{target} is in use") from None
            raise ListenError(f"cannot listen on {address}: {exc}") from None
        if got == 0:
            if chosen:
                raise PortTaken(f"{target} is in use")
            raise ListenError(f"cannot listen on {address}: {target} cannot be bound")
        port = got
    if len(targets) > 1:
        shown = ", ".join(f"{t.rpartition(':')[0]}:{port}" for t in targets)
        logger.info("listening on %s (every address of %s)", shown, address.rpartition(":")[0])
    return port
