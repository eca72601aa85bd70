"""How one connection attempt of a client ended, its channel closed within a bound, and what next.

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
    STEADY_SECONDS,
    Refused,
    RetryBudget,
    handshake_closed,
    permanent_cause,
    transient_text,
)
from covey.transport.grpc._tasks import ConnectResult

__all__ = [
    "CLOSED",
    "CLOSE_GRACE",
    "INTERRUPTED",
    "Goodbye",
    "attempt_failure",
    "close_channel",
    "end_of",
    "given_up",
    "log_retry",
    "not_back",
    "retry_delay",
    "waiting_back",
]

logger = logging.getLogger("covey")

CLOSE_GRACE = 10.0  # seconds a session's channel has to close before it is left behind
CLOSED = "handshake closed: "
INTERRUPTED = "the run stopped: the server was interrupted"
"""The goodbye of a server stopped (Ctrl-C, SIGTERM) before its run was over.

Such a run is resumed, as a rule (``systemctl restart``, a new certificate): a client
reconnects after it as after a lost connection, for its ``retry_for``, instead of ending.
"""


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
        if str(bye) == INTERRUPTED:  # not over: a restarted server finds this client again
            return str(bye)
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


def attempt_failure(welcomed: bool, sessions: int) -> str:
    """How an attempt ended, in a retry message: a session lost, or no session at all."""
    if welcomed:
        return "connection to {} lost"
    return "could not connect to {}" if sessions == 0 else "could not reconnect to {}"


def log_retry(failures: int, failure: str, address: str, error: str, delay: float) -> None:
    """Log a failed attempt: each of the first 5 failures in a row, then the 8th, 16th, 32nd...

    ``failure`` is :func:`attempt_failure`'s phrase: a client that never reached its
    server says it could not connect, not that a connection was lost. A client
    (or an analytics site) left waiting for a server retries every
    ``max_backoff`` seconds for as long as it waits; the others go to DEBUG.
    """
    loud = failures <= 5 or failures & (failures - 1) == 0
    level = logging.WARNING if loud else logging.DEBUG
    what = failure.format(address)
    if failures == 1:
        logger.log(level, "%s (%s); retrying in %.1f s", what, error, delay)
        return
    logger.log(
        level,
        "%s (%s); retrying in %.1f s (%d failed attempts in a row%s)",
        what,
        error,
        delay,
        failures,
        "" if failures < 5 else "; logged again at the next power of two",
    )


def given_up(address: str, failures: int, sessions: int, error: str, dropped: int = 0) -> str:
    """Why a client stopped retrying: it never reached its server, or lost it for good.

    ``dropped`` of the ``failures`` were sessions the server welcomed and ended
    before they got anywhere (see :meth:`RetryBudget.session_ended`).
    """
    failed = "could not connect to" if sessions == 0 else "could not stay connected to"
    if dropped:
        failed = "could not stay connected to"
        error += (
            f"; {dropped} of those attempts reached a server that welcomed this client, then "
            f"ended the connection before it sent a task or {STEADY_SECONDS:.0f} s had passed"
        )
    return f"{failed} {address} after {failures} attempt(s): {error}"


def retry_delay(
    budget: RetryBudget,
    session: Any,
    result: ConnectResult,
    performed: int,
    address: str,
    error: str,
) -> float:
    """The delay before the next attempt, once ``session`` ended with ``error``; logged.

    ``performed`` is ``result.tasks`` as the session started: a session the server
    welcomed got through if the server sent it a task (performed or not: a server
    killed while its clients train is restarting, not failing) or it stayed
    connected a while (:meth:`RetryBudget.session_ended`).

    Raises:
        ConnectionError: the retry budget is spent, naming why.
    """
    if session.welcomed:
        tasks = max(result.tasks - performed, session.received)
        budget.session_ended(time.monotonic() - session.welcomed_at, tasks)
    if error == INTERRUPTED:
        budget.interrupted = True
    delay = budget.next_delay()
    if delay is None:
        if budget.interrupted:
            raise ConnectionError(not_back(address, budget, error))
        failures, dropped = budget.failures, budget.dropped
        raise ConnectionError(given_up(address, failures, result.sessions, error, dropped))
    if error == INTERRUPTED:
        logger.warning("%s; retrying in %.1f s", waiting_back(address, budget), delay)
        return delay
    failure = attempt_failure(session.welcomed, result.sessions)
    log_retry(budget.failures, failure, address, error, delay)
    return delay


def waiting_back(address: str, budget: RetryBudget) -> str:
    """What a client whose server was interrupted does: wait for it, for how long."""
    if budget.retry_for is None:
        how_long = "for as long as it takes"
    else:
        how_long = f"for up to {budget.retry_for:g} s (--retry-for, retry_for)"
    if budget.max_attempts is not None:
        how_long += f", {budget.max_attempts} attempt(s) at most"
    return (
        f"connection to {address} lost: the server was interrupted before its run was over; "
        f"waiting for it to come back {how_long} (a server started again at this address "
        "takes this client back)"
    )


def not_back(address: str, budget: RetryBudget, error: str) -> str:
    """Why a client gave up on a server that was interrupted: it did not come back."""
    if budget.retry_for is not None and (
        budget.max_attempts is None or budget.failures < budget.max_attempts
    ):
        within = f"within {budget.retry_for:g} s (--retry-for, retry_for)"
    else:
        within = f"after {budget.failures} attempt(s) (max_attempts)"
    last = "" if error == INTERRUPTED else f" (the last attempt: {error})"
    return (
        f"gave up on {address}: the server was interrupted before its run was over and did "
        f"not come back {within}; {budget.failures} attempt(s) to reconnect failed{last}"
    )
