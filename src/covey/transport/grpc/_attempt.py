"""How one connection attempt of a client ended, and its channel closed within a bound.

gRPC ends a cancelled call only once its core has completed the call's pending
operations, and closes a channel only once its own threads let go of it; a
connection being torn down (a server sending GOAWAY as it shuts down) may keep
either waiting. A client session never waits on them without a bound: it gives
such a call up (``_client.CANCEL_GRACE``) and such a channel too
(:data:`CLOSE_GRACE`), and reconnects on a new channel.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import grpc

from covey.transport.grpc._refusal import (
    Refused,
    handshake_closed,
    permanent_cause,
    transient_text,
)
from covey.transport.grpc._tasks import ConnectResult

__all__ = ["CLOSED", "CLOSE_GRACE", "Goodbye", "close_channel", "end_of"]

logger = logging.getLogger("covey")

CLOSE_GRACE = 10.0  # seconds a session's channel has to close before it is left behind
CLOSED = "handshake closed: "


class Goodbye(Exception):
    """The server said goodbye; the message is its reason."""


def close_channel(
    channel: Any, grace: float = CLOSE_GRACE, stop: threading.Event | None = None
) -> None:
    """Close ``channel``, waiting at most ``grace`` seconds for gRPC to let go of it.

    A client leaving (``stop`` set, before or during the wait) waits no longer: it
    connects no more, and the process is ending.
    """
    closer = threading.Thread(target=channel.close, name="covey-close", daemon=True)
    closer.start()
    until = time.monotonic() + grace
    while closer.is_alive() and (stop is None or not stop.is_set()):
        left = until - time.monotonic()
        if left <= 0:
            break
        closer.join(min(left, 0.1))
    if closer.is_alive() and (stop is None or not stop.is_set()):
        logger.warning(
            "the lost connection's channel did not close within %.0f s; reconnecting without it",
            grace,
        )


def end_of(session: Any, channel: Any, result: ConnectResult, stop: threading.Event) -> str | None:
    """Run one session; None when the participation is over, else why the session ended."""
    try:
        session.run(channel, result, stop)
        return "the server closed the stream"
    except Goodbye as bye:
        result.reason = str(bye)
        logger.info("the server said goodbye: %s", bye)
        return None
    except grpc.RpcError as exc:
        if stop.is_set():
            result.reason = "stopped"
            return None
        if session.unanswered:  # cancelled here, not refused by the server
            return str(session.unanswered)
        cause = permanent_cause(exc, session.server_name)
        if cause is not None:
            raise Refused(cause) from None
        text = transient_text(exc)
        return CLOSED + text if handshake_closed(exc) else text
    except Refused:
        raise  # e.g. a server of another wire protocol: retrying cannot help
    except OSError as exc:  # ConnectionError, a data connection that failed, a call given up
        if stop.is_set():
            result.reason = "stopped"
            return None
        return str(session.unanswered or exc) or type(exc).__name__
    finally:
        close_channel(channel, stop=stop)
