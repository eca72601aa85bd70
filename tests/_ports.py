"""Ports for tests that must name a port before anything listens on it.

Binding port 0, closing the socket and using its number later is racy: the
number comes from the kernel's ephemeral range, the very range every outgoing
connection (another test's client, a site retrying) and every other ``bind`` to
port 0 take their local port from. Between the close and the later use,
another test can take it, and the server then fails to bind, or a client finds
someone else's server there (or, dialling a free ephemeral port again and again,
connects to itself).

:func:`unused_port` hands out ports *below* the ephemeral range instead: only an
explicit bind to that very number can take them. Each pytest-xdist worker has
its own share of them, so two workers never hand out the same port; within a
worker they are handed out in turn from a random start (other runs of the
suite on the machine are unlikely to meet them), and each is checked free
first by binding it without ``SO_REUSEADDR`` (which fails if any socket,
lingering closed connections included, still holds it). On a machine whose
ephemeral range covers those ports, it takes one as binding port 0 does.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from contextlib import closing
from pathlib import Path

LOWEST = 10000
"""The first port handed out; :mod:`_raycluster` takes its worker blocks from 20000 up."""
HIGHEST = 19999


def _ephemeral() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535  # IANA's range, which macOS and Windows use


def _share() -> range | None:
    """The ports below the ephemeral range that this xdist worker hands out (None: none)."""
    low, high = _ephemeral()
    if low <= HIGHEST and high >= LOWEST:  # an unusual range covering ours: none is safe
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(worker) % count if worker.isdigit() else 0
    size = (HIGHEST - LOWEST + 1) // count
    return range(LOWEST + index * size, LOWEST + (index + 1) * size)


_turns: itertools.cycle[int] | None = None


def _free(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def unused_port() -> int:
    """A port on 127.0.0.1 nothing holds now, and that no outgoing connection will take."""
    global _turns
    if _turns is None:
        share = _share()
        if share is None:  # the kernel hands out these ports too: take one as it would
            with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
                probe.bind(("127.0.0.1", 0))
                return int(probe.getsockname()[1])
        start = random.randrange(len(share))
        _turns = itertools.cycle([*share[start:], *share[:start]])
    for port in itertools.islice(_turns, 1000):
        if _free(port):
            return port
    raise RuntimeError("no free port among 1000 tried below the ephemeral range")
