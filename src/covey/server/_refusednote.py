"""The connections a deployed server refused while it waited for clients, said at its stop.

A run (a query) that stops short of clients names them, counted by cause: a
revoked certificate, a failed TLS handshake, a refused data connection.
"""

from __future__ import annotations

__all__ = ["refusal_mark", "refused_note"]


def _refusing(transport: object) -> object:
    """``transport``, or the transport it wraps (counting bytes, compressing) that refuses."""
    for _ in range(10):
        if hasattr(transport, "refused_in_wait") or not hasattr(transport, "inner"):
            break
        transport = transport.inner
    return transport


def refusal_mark(transport: object) -> int | None:
    """How many connections ``transport`` refused so far, for :func:`refused_note`; or None."""
    count = getattr(_refusing(transport), "refusals", None)
    return count() if callable(count) else None


def refused_note(transport: object, since: int | None = None) -> str:
    """``; N connections refused in the wait: ...`` from a transport's last wait, or "".

    ``since``: a :func:`refusal_mark` taken as a wait of several calls began; the
    connections refused since then are counted, not only those of the last call.
    A wrapping transport (one counting bytes, compressing) is looked through to its ``inner``.
    """
    transport = _refusing(transport)
    counted = getattr(transport, "refused_since", None)
    if since is not None and callable(counted):
        note = counted(since)
    else:
        note = getattr(transport, "refused_in_wait", "")
    return f"; {note}" if isinstance(note, str) and note else ""
