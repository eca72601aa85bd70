"""``host:port`` addresses checked before anything listens on or dials them.

gRPC accepts what it cannot use: a port above 65535 silently becomes another
port, and a host without a port dials 443. Both sides of the transport check the
address first and refuse a bad one with a message that says what is wrong.
"""

from __future__ import annotations

import re

__all__ = ["AddressError", "check_address"]

_HOST = re.compile(r"^[A-Za-z0-9_.\-]+$")


class AddressError(ValueError):
    """An address that is not ``host:port`` with a valid port."""


def check_address(address: str, *, listen: bool) -> tuple[str, int]:
    """Split ``address`` into host and port, refusing what gRPC would misread.

    Args:
        address: ``host:port``, ``[ipv6]:port``, or ``host:0`` to listen on a free port.
        listen: True for an address to listen on (port 0 allowed), False to dial.

    Returns:
        ``(host, port)``.

    Raises:
        AddressError: naming what is wrong.

    Example:
        >>> check_address("127.0.0.1:9092", listen=True)
        ('127.0.0.1', 9092)
    """
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise AddressError(f"{address!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
        if not host or not all(c in "0123456789abcdefABCDEF:." for c in host):
            raise AddressError(f"{address!r}: {host!r} is not an IPv6 address")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise AddressError(
                f"{address!r} has no port; give HOST:PORT (e.g. {text or 'localhost'}:9092)"
            )
        if not host or not _HOST.match(host):
            raise AddressError(f"{address!r}: {host!r} is not a host name or address")
    if not port_text.isdigit():
        raise AddressError(f"{address!r}: the port {port_text!r} is not a number")
    port = int(port_text)
    low = 0 if listen else 1
    if not low <= port <= 65535:
        raise AddressError(f"{address!r}: the port must be between {low} and 65535, not {port}")
    return host, port
