"""A reply the server refused, told to its client: the server's notice and the client's log line.

The server checks each reply before it counts it (an update's names, shapes
and dtypes, finite values, its metrics; an evaluation's loss) and refuses a
bad one for that client alone. Its operator reads why in the server's log; the
site's operator is told too. The server sends the client a ``Heartbeat`` that
carries a ``Refusal``: the round of the refused reply, what it was (an update
or an evaluation) and why, in the words of the server's log without the
client's name. An older client takes it for a plain heartbeat and goes on; an
older server never sends one. The client logs it as a WARNING::

    round 3: the server refused this site's update: weights: 'w' has shape (7,), expected (8,)

A server's words are a peer's text: the client shows at most
:data:`REFUSAL_CHARS` characters of them, their control characters escaped, and
only for a round it replied in (once for each reply it sent), so a server cannot
fill a site's log with notices of its own making.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from covey.core._text import clipped
from covey.transport.grpc._frames import control
from covey.transport.grpc.proto import covey_pb2 as pb

__all__ = ["REFUSAL_CHARS", "REPLIES_KEPT", "Told", "refusal_frame", "sent_reason"]

logger = logging.getLogger("covey")

REFUSAL_CHARS = 2000
"""The most characters of a refusal's reason sent by a server, and shown by a client."""

REPLIES_KEPT = 64
"""The rounds a client keeps of the replies it sent, for the refusals of them still to come."""

_WHAT = {"fit": "update", "evaluate": "evaluation"}


def refusal_frame(rnd: int, reason: str, stage: str = "fit", unit: str = "") -> bytes:
    """The control frame that tells a client its reply of round ``rnd`` was refused, and why."""
    refusal = pb.Refusal(round=rnd, unit=unit, stage=stage, reason=sent_reason(reason))
    return control(pb.ServerMessage(heartbeat=pb.Heartbeat(refusal=refusal)))


_NOTE_ROOM = 64
"""Characters a cut reason keeps free for :func:`~covey.core._text.clipped`'s note."""


def sent_reason(reason: str) -> str:
    r"""``reason`` as a server sends it: escaped, and at most :data:`REFUSAL_CHARS` characters.

    A lone surrogate (from a name or a metric of the client's) cannot be sent as
    UTF-8: escaped, so the round loop that tells it never fails on it. The note of
    what a cut left out is counted in the cap, so the client, which cuts what it
    shows to :data:`REFUSAL_CHARS` too, shows it as it came: one note, counting
    all the characters left out.

    Example:
        >>> said = sent_reason("x" * 5000)
        >>> len(said) <= REFUSAL_CHARS, said.count("left out")
        (True, 1)
    """
    whole = clipped(reason, REFUSAL_CHARS)
    if len(whole) <= REFUSAL_CHARS:
        return whole
    return clipped(reason, REFUSAL_CHARS - _NOTE_ROOM)


class Told:
    """The rounds of the replies a client sent, and the refusals of them it logs.

    Kept across a client's connections: a reply sent on one may be refused
    once the client has reconnected. Holds the last :data:`REPLIES_KEPT`
    rounds; each successful reply lets one refusal of its round be logged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replied: OrderedDict[tuple[str, int], int] = OrderedDict()

    def replied(self, unit: str, rnd: int) -> None:
        """Note a successful reply to a task of round ``rnd`` (``unit``: ``"update"`` or rounds)."""
        key = (_unit(unit), int(rnd))
        with self._lock:
            self._replied[key] = self._replied.pop(key, 0) + 1
            while len(self._replied) > REPLIES_KEPT:
                self._replied.popitem(last=False)

    def heard(self, refusal: pb.Refusal) -> bool:
        """Log the server's ``refusal`` as a WARNING; False (nothing logged) if it names no reply.

        A refusal of a round this client sent no reply in (or one already refused
        as often as it replied in it) is not logged: the server has nothing to
        refuse there.
        """
        unit = _unit(refusal.unit)
        rnd = int(refusal.round)
        key = (unit, rnd)
        with self._lock:
            left = self._replied.get(key, 0)
            if left <= 0:
                return False
            if left == 1:
                del self._replied[key]
            else:
                self._replied[key] = left - 1
        what = _WHAT.get(refusal.stage, "reply")
        reason = clipped(refusal.reason, REFUSAL_CHARS)  # escaped, then cut
        logger.warning("%s %d: the server refused this site's %s: %s", unit, rnd, what, reason)
        return True


def _unit(unit: str) -> str:
    """What a round counts, as the log says it: ``"update"``, else ``"round"``."""
    return "update" if unit == "update" else "round"
