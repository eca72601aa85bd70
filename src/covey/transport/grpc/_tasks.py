"""Running a task on a deployed client's task thread, which must outlive every task.

Also what a client's participation did (:class:`ConnectResult`).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from covey.clients._client import run_task
from covey.core._messages import Reply, Task
from covey.transport.grpc._refusal import RetryBudget

__all__ = ["ConnectResult", "run_on_task_thread", "wait_for_task_thread"]

logger = logging.getLogger("covey")


def run_on_task_thread(client: Any, cid: int, task: Task) -> Reply:
    """:func:`run_task`, where what is no ``Exception`` fails the task as well.

    The task runs on the session's task thread. ``sys.exit()`` in ``fit`` (a
    script's helper, argparse) or a ``CancelledError`` leaked by the client's
    event loop ended that thread: the client stayed connected and never
    replied, so the server waited for the reply (for ever, without a round
    timeout) and took the client for busy in every later round. Ctrl-C is
    raised in the main thread, never here.
    """
    try:
        return run_task(client, cid, task)
    except BaseException as exc:  # noqa: BLE001 - the client's, not this process's
        if isinstance(exc, SystemExit):
            code = "" if exc.code is None else repr(exc.code)
            what = f"called sys.exit({code}) (SystemExit)"
        else:
            what = f"raised {type(exc).__name__}, which is no Exception,"
        hint = (
            f"covey: the client {what} in its {task.kind} task: the task fails and this "
            "client goes on with the next one (a deployed client leaves only when the run "
            "ends or it is stopped)\n"
        )
        return Reply(cid, task.kind, error=traceback.format_exc() + hint)


def wait_for_task_thread(
    running: threading.Thread | None, stop: threading.Event, budget: RetryBudget
) -> bool:
    """Wait for the task a lost session still runs; whether to stop instead of reconnecting.

    A client runs one task at a time: a new session would be sent tasks that
    run beside the old one on the same client object. The wait does not count
    as time spent failing to connect (``retry_for``).
    """
    if running is not None and running.is_alive() and not stop.is_set():
        logger.info("waiting for the task still running to finish before reconnecting")
        start = time.monotonic()
        while running.is_alive() and not stop.is_set():
            running.join(0.1)  # and see ``stop`` within 0.1 s
        if budget.since is not None:
            budget.since += time.monotonic() - start
    return stop.is_set()


@dataclass
class ConnectResult:
    """How a client's participation ended.

    Attributes:
        reason: The server's goodbye message.
        tasks: How many tasks this client performed.
        sessions: How many times it connected (the server welcomed it); failed
            connection attempts do not count.
        cid: The id the server gave it.
        kinds: How many tasks of each kind (``"fit"``, ``"evaluate"``, ...) it performed.
    """

    reason: str = ""
    tasks: int = 0
    sessions: int = 0
    cid: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)
