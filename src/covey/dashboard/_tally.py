"""A run's best values and its clients' rounds, kept up to date with only its new rounds.

A live run is read again at every new round. Walking all its rounds again for
its best value and for the rounds each client took part in took time growing
with the run (at 20,000 rounds of 1,000 clients, most of a second a round). A
:class:`Tally` of a run read before is grown with the rounds added since, when
the run's rounds are those it had with new ones after them. A run whose first
rounds are those it had, then others (a resumed run that redid rounds, a
history cut short) gets a copy of it cut to those first rounds, grown with the
others; another run in the folder is walked whole, as :func:`tally_of` does.
"""

from __future__ import annotations

import math
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any, Final

from covey.core._jsonvalues import as_float
from covey.core._metricnames import stored_name
from covey.dashboard._runjson import tagged_float

__all__ = ["Tally", "as_number", "best_metric", "grown", "metric_value", "tally_of"]

_Better = Callable[[float, float], bool]

_CANDIDATES: Final[tuple[tuple[str, str, _Better], ...]] = (
    ("central", "accuracy", lambda new, best: new > best),
    ("evaluate", "accuracy", lambda new, best: new > best),
    ("central", "loss", lambda new, best: new < best),
    ("evaluate", "loss", lambda new, best: new < best),
)
"""The best value's candidates, first found first: highest accuracy, else lowest loss."""

_TAKING_PART: Final = (
    ("fit_participants", "fit_rounds"),
    ("evaluate_participants", "evaluate_rounds"),
)


def as_number(value: Any) -> float | None:
    """``value`` as a float (NaN and infinities included), or None if it is no number.

    A non-finite number is read as the tag :func:`covey.History.save` writes
    (``{"__float__": "nan"}``); an integer too big for a float is an infinity.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return as_float(value)
    return tagged_float(value)


def metric_value(record: dict[str, Any], source: str, name: str) -> float | None:
    """One metric of a round dict (NaN or an infinity included); ``name="loss"`` is the loss.

    Metrics are named as :meth:`covey.History.metric` reads them: from
    ``"central"`` and ``"evaluate"``, a metric named ``loss`` is ``"loss_metric"``.

    Args:
        record: A round as stored in ``history.json``.
        source: ``"central"``, ``"evaluate"`` or ``"fit"``.
        name: The metric.
    """
    if name == "loss" and source in ("central", "evaluate"):
        return as_number(record.get(f"{source}_loss"))
    metrics = record.get(f"{source}_metrics")
    return as_number(metrics.get(stored_name(name, source))) if isinstance(metrics, dict) else None


class _Clients:
    """The rounds each client id took part in, and where the best values improved.

    For a run and the runs it grew into: its lists only grow, in round order, and
    a :class:`Tally` reads them up to its own last round (or its count of rounds),
    so the tallies of a run's earlier reads stay as they were.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tip = 0  # how many of the run's rounds the lists hold
        self.rounds: dict[str, dict[int, list[int]]] = {column: {} for _, column in _TAKING_PART}
        # per candidate: the rounds (by index) where its best value improved, and it then
        self.improved: list[tuple[array[int], list[tuple[float, int]]]] = [
            (array("q"), []) for _ in _CANDIDATES
        ]

    def add(self, rounds: Sequence[dict[str, Any]]) -> None:
        for record in rounds:
            number = record["round"]
            for key, column in _TAKING_PART:
                lists = self.rounds[column]
                for cid in record.get(key) or ():
                    lists.setdefault(cid, []).append(number)
        for (at, found), (source, name, better) in zip(self.improved, _CANDIDATES, strict=True):
            best = found[-1][0] if found else None
            for i, record in enumerate(rounds, self.tip):
                value = metric_value(record, source, name)
                if value is None or not math.isfinite(value):
                    continue
                if best is None or better(value, best):  # a tie keeps the earlier round
                    best = value
                    at.append(i)
                    found.append((value, record["round"]))
        self.tip += len(rounds)

    def best(self, count: int) -> list[tuple[float, int] | None]:
        """Per candidate, its best value in the first ``count`` rounds, and the round of it."""
        kept = (bisect_left(at, count) for at, _ in self.improved)
        return [
            found[n - 1] if n else None for n, (_, found) in zip(kept, self.improved, strict=True)
        ]

    def cut(self, count: int, last: int) -> _Clients:
        """A copy holding the first ``count`` rounds only (``last``: the highest number of them)."""
        copy = _Clients()
        with self.lock:
            for column, lists in self.rounds.items():
                into = copy.rounds[column]
                for cid, numbers in lists.items():
                    n = bisect_right(numbers, last)
                    if n:
                        into[cid] = numbers[:n]
            for (at, found), (to_at, to_found) in zip(self.improved, copy.improved, strict=True):
                n = bisect_left(at, count)
                to_at.extend(at[:n])
                to_found.extend(found[:n])
        copy.tip = count
        return copy


class Tally:
    """What :func:`tally_of` makes of a run's rounds: its best value and its clients' rounds.

    Shared between the reads of a run that grew: callers must not change what it returns.
    """

    def __init__(
        self, clients: _Clients, count: int, last: int, best: list[tuple[float, int] | None]
    ) -> None:
        """Use :func:`tally_of` or :func:`grown`."""
        self._clients = clients
        self.count = count  # the rounds it covers, the run's first ``count``
        self.last = last  # the highest round number of them (-1: none)
        self._best = best  # per candidate: its best value and the round of its first

    def done(self) -> int | None:
        """The run's highest round number; None if it has no round."""
        return self.last if self.count else None

    def best(self) -> dict[str, Any] | None:
        """The run's best value, as :func:`~covey.dashboard._runs.best_metric` finds it."""
        for (source, name, _), found in zip(_CANDIDATES, self._best, strict=True):
            if found is not None:
                label = "test" if source == "central" else "federated"
                return {"name": f"{label} {name}", "value": found[0], "round": found[1]}
        return None

    def client_rounds(self, column: str, cid: int) -> list[int]:
        """The rounds client ``cid`` took part in (``column``: fit_rounds, evaluate_rounds)."""
        kept = self._clients.rounds[column].get(cid)
        if not kept:
            return []
        if self._clients.tip < 0:  # never grown: all its rounds are this tally's
            return list(kept)
        return kept[: bisect_right(kept, self.last)]


def _better(best: list[tuple[float, int] | None], rounds: Sequence[dict[str, Any]]) -> None:
    """``best`` with ``rounds`` walked too (a tie keeps the earlier round)."""
    for i, (source, name, better) in enumerate(_CANDIDATES):
        found = best[i]
        for record in rounds:
            value = metric_value(record, source, name)
            if value is None or not math.isfinite(value):
                continue
            if found is None or better(value, found[0]):
                found = (value, record["round"])
        best[i] = found


def _read(record: dict[str, Any]) -> tuple[Any, ...]:
    """What a tally reads of a round: its number, metrics (with their sign) and clients."""
    values = tuple(
        None if v is None or not math.isfinite(v) else (v, math.copysign(1.0, v))
        for v in (metric_value(record, source, name) for source, name, _ in _CANDIDATES)
    )
    clients = (tuple(record.get(key) or ()) for key, _ in _TAKING_PART)
    return (record["round"], values, *clients)


def tally_of(rounds: Sequence[dict[str, Any]]) -> Tally:
    """The tally of ``rounds`` (a run's, in round order), walking every one of them."""
    clients = _Clients()
    clients.add(rounds)
    numbers = [r["round"] for r in rounds]
    if any(b <= a for a, b in pairwise(numbers)):
        clients.tip = -1  # not in round order (no run's rounds): never grown, read whole
    return Tally(clients, len(rounds), max(numbers, default=-1), clients.best(len(rounds)))


def best_metric(rounds: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's best value: highest accuracy, else lowest loss (central before federated)."""
    best: list[tuple[float, int] | None] = [None] * len(_CANDIDATES)
    _better(best, rounds)
    return Tally(_Clients(), len(rounds), -1, best).best()


def _kept(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> int:
    """How many first rounds of ``new`` are ``old``'s, or read as the same by a tally.

    Rounds read again from a file are other objects: ``==`` would take ``true``
    for ``1`` and ``-0.0`` for ``0.0``, which a tally tells apart.
    """
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a is not b and _read(a) != _read(b):
            return i
    return min(len(old), len(new))


def grown(
    before: Tally | None, old: Sequence[dict[str, Any]], rounds: Sequence[dict[str, Any]]
) -> Tally:
    """The tally of ``rounds``, made from ``before`` (the tally of ``old``) when it can be.

    It can be when ``rounds`` are ``old``'s first rounds (at least one) followed by
    newer rounds; ``before`` is grown in place if they are all of ``old`` and it was
    not grown into another run since, else a copy of it cut to those first rounds.
    Otherwise :func:`tally_of` walks them all.
    """
    n = len(old)
    if before is None or before.count != n or before._clients.tip < 0:
        return tally_of(rounds)
    kept = _kept(old, rounds)
    if not kept:
        return tally_of(rounds)  # another run, or none of its rounds left
    last = old[kept - 1]["round"]
    new = rounds[kept:]
    numbers = [r["round"] for r in new]
    if any(b <= a for a, b in pairwise([last, *numbers])):
        return tally_of(rounds)  # not in round order after the old ones: not a run that grew
    clients = before._clients
    with clients.lock:
        grow = kept == n and clients.tip == n  # not grown into another run already
        if grow:
            clients.add(new)
    if not grow:
        clients = clients.cut(kept, last)
        clients.add(new)
    count = len(rounds)
    return Tally(clients, count, numbers[-1] if numbers else last, clients.best(count))
