"""Reading a round's replies back from the Ray actors, and giving up on the late ones.

``RayTransport.exchange`` sends each actor its clients in chunks, one streaming
call per chunk; these functions fold the streams' replies in as they come, turn
an actor that died into failed replies for the clients it held, and stop the
actors still busy when an exchange ends early or late. ``actors`` is the
transport's ``group -> actor handles`` table: an actor found dead or stopped
here is set to None in it, and started anew at the next exchange.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from typing import Any

from covey.core._messages import Reply, Task
from covey.core._text import clients
from covey.sim._rayplan import actor_gone, death_cause, died
from covey.transport._base import LONGEST_WAIT

logger = logging.getLogger("covey")

Pending = dict[Any, tuple[str, int, list[int]]]
"""Each call in flight: its stream, and the group, slot and clients not yet answered."""


def abandon(ray: Any, actors: dict[str, list[Any]], pending: Pending, late: bool) -> None:
    """Stop the actors still busy with an exchange once it is over.

    Over when its deadline passed (``late``) or when it was given up (Ctrl-C,
    an error of the caller). A client stuck in ``fit`` must not hold up later
    rounds: its actor is replaced at the next exchange and its clients are
    rebuilt there.
    """
    busy = sorted({(g, i) for g, i, cids in pending.values() if cids})
    for g, i in busy:
        actor = actors[g][i]
        if actor is None:
            continue
        actors[g][i] = None
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
        if not late:
            continue
        unanswered = sorted(
            c for gg, ii, cids in pending.values() if (gg, ii) == (g, i) for c in cids
        )
        listed = ", ".join(map(str, unanswered[:10])) + (" ..." if len(unanswered) > 10 else "")
        why = f"{clients(len(unanswered))} unanswered ({listed})"
        who = f"{g}/{i}" if g else str(i)
        logger.warning("Ray actor %s missed the deadline with %s; stopping it (replaced)", who, why)


def collect(
    ray: Any,
    actors: dict[str, list[Any]],
    where: Mapping[tuple[str, int], tuple[int, str]],
    pending: Pending,
    held: Mapping[tuple[str, int], list[int]],
    tasks: Mapping[int, Task],
    deadline: float | None,
) -> Iterator[Reply]:
    """Yield the replies of the calls in ``pending`` as they come, until all end or ``deadline``.

    A call that ended is removed from ``pending``; it returns with calls left in
    it only when the deadline passed.
    """
    # An actor runs its calls in order: wait only on each actor's oldest call,
    # so one wait costs O(actors), not O(calls in flight).
    queues: dict[tuple[str, int], deque[Any]] = {}
    for stream, (g, i, _) in pending.items():
        queues.setdefault((g, i), deque()).append(stream)
    while queues:
        heads = {q[0]: key for key, q in queues.items()}
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        wait = remaining and min(remaining, LONGEST_WAIT)  # a wait of days: in turns
        ready, _ = ray.wait(list(heads), num_returns=1, timeout=wait)
        if not ready and (remaining is None or remaining <= LONGEST_WAIT):
            return  # deadline: the loop records the missing clients
        for stream in ready:
            over = yield from take(ray, actors, where, stream, pending, held, tasks, remaining)
            if over:
                key = heads[stream]
                queues[key].popleft()
                if not queues[key]:
                    del queues[key]
                del pending[stream]


def take(
    ray: Any,
    actors: dict[str, list[Any]],
    where: Mapping[tuple[str, int], tuple[int, str]],
    stream: Any,
    pending: Pending,
    held: Mapping[tuple[str, int], list[int]],
    tasks: Mapping[int, Task],
    remaining: float | None,
) -> Generator[Reply, None, bool]:
    """Yield the replies a call's stream has ready; return whether the call is over.

    The call's clients still unanswered are left in ``pending``.
    """
    g, i, cids = pending[stream]
    while stream.next_ready():
        ref = next(stream, None)
        if ref is None:  # the stream's end
            return True
        try:
            replies = ray.get(ref, timeout=max(1.0, min(remaining or 60.0, LONGEST_WAIT)))
        except actor_gone(ray) as exc:  # replaced at the next exchange
            yield from dead(actors, where, g, i, cids, held[(g, i)], tasks, exc)
            return True
        except ray.exceptions.RayError as exc:
            for cid in cids:
                yield Reply(cid, tasks[cid].kind, error=f"Ray failed: {exc}")
            return True
        del cids[: len(replies)]
        yield from replies
    return bool(stream.is_finished())


def dead(
    actors: dict[str, list[Any]],
    where: Mapping[tuple[str, int], tuple[int, str]],
    g: str,
    i: int,
    cids: list[int],
    held: list[int],
    tasks: Mapping[int, Task],
    exc: Exception,
) -> Iterator[Reply]:
    """Fail the clients ``cids`` of actor ``g``/``i``, which died; mark it for a restart."""
    pid, node = where.get((g, i), (-1, "?"))
    first = actors[g][i] is not None  # the actor's oldest call: the one it died in
    if first:
        shown = ", ".join(map(str, held[:20])) + (" ..." if len(held) > 20 else "")
        logger.error(
            "Ray actor %s%d (pid %d on node %s) died; it held clients %s this round",
            f"{g}/" if g else "",
            i,
            pid,
            node[:12],
            shown,
        )
        actors[g][i] = None
    cause = death_cause(exc)
    actor = f"Ray actor {g + '/' if g else ''}{i} (pid {pid})"
    for cid in cids:
        yield Reply(cid, tasks[cid].kind, error=died(actor, cid, cids, first, held, cause))
