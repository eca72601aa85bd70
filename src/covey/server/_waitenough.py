"""A wait for enough clients that outlasts clients coming and leaving (phones, flaky links).

A transport's ``wait_for_clients`` returns as soon as enough clients are connected;
some may have left again by the time the loop looks. The wait then goes on for the
rest of its time-out (in total, not started again), so a flapping federation stops
only once the time-out truly ran out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["wait_enough"]


def wait_enough(
    transport: Any, wait: Callable[[int, float | None], bool], wanted: int, timeout: float | None
) -> bool:
    """Wait with ``wait`` until ``wanted`` clients are connected at once; False if time ran out.

    Only a transport whose clients come back (one with ``joins``: a network's) is
    waited on again: the wait of one whose clients cannot (a simulation's) returns at
    once, and one call is all it takes. True may still leave too few there on such a
    transport; the caller counts them.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    left = timeout
    again = getattr(transport, "joins", None) is not None
    while True:
        if not wait(wanted, left):
            return False
        if not again or len(transport.clients()) >= wanted:
            return True
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
