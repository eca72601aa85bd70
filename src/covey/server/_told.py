"""A client's reply the server refused, told to that client on a transport that can tell it.

The round loops refuse a reply that does not fit (an update of another shape, a
non-finite value, a loss that is no number, too many metric names, an update an
aggregation step refuses) and record it as that client's failure. A deployed
server also tells the client (``refused`` of the gRPC transport), so the site's
operator reads why in its own log: the reason as the server's log says it, but
without the client's name, and the round of the task the reply answered. An
aggregation step's reason names the client by the server's id for it
(``qfedavg: client 0 reported ...``), which is not the site's own ``--cid``:
the client reads ``this site`` there.
Simulated clients have no operator of their own: their transports have no
``refused``, and nothing is sent.
"""

from __future__ import annotations

import re
from typing import Any

from covey.core._history import Failure

__all__ = ["as_told", "tell_refused", "unnamed"]


def unnamed(error: str, who: str) -> str:
    """``error`` without the client's name it starts with (``"site-1's weights: ..."``).

    Example:
        >>> unnamed("site-1's weights: 'w' has shape (7,), expected (8,)", "site-1")
        "weights: 'w' has shape (7,), expected (8,)"
    """
    return error.removeprefix(f"{who}'s ")


def tell_refused(
    transport: Any, failure: Failure, rnd: int, step: str, told: str | None = None
) -> None:
    """Tell ``failure``'s client that its reply to the task of ``rnd`` was refused, and why.

    Args:
        transport: The loop's transport; nothing is sent unless it has ``refused``.
        failure: The refusal, as recorded.
        rnd: The round (``step`` ``"update"``: the update) of the task the reply answered.
        step: What ``rnd`` counts: ``"round"`` or ``"update"``.
        told: The reason as the client reads it (default: ``failure.error``).
    """
    tell = getattr(transport, "refused", None)
    if tell is None:
        return
    unit = "update" if step == "update" else ""
    said = failure.error if told is None else told
    tell(failure.cid, rnd, as_told(said, failure.cid), stage=failure.stage, unit=unit)


def as_told(reason: str, cid: int) -> str:
    """``reason`` as client ``cid`` reads it: ``this site`` where it names ``client <cid>``.

    The server's id for a client is its own numbering, not the ``--cid`` the
    site gave, so the site is not told it.

    Example:
        >>> as_told("qfedavg: client 0 reported no numeric 'loss' metric", 0)
        "qfedavg: this site reported no numeric 'loss' metric"
    """
    return re.sub(rf"\bclient {cid}(?![0-9])", "this site", reason)
