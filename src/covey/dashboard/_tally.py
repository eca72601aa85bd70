"""A run's best values and its clients' rounds, kept up to date with only its new rounds.

A live run is read again at every new round. Walking all its rounds again for
its best value and for the rounds each client took part in took time growing
with the run (at 20,000 rounds of 1,000 clients, most of a second a round). A
:class:`Tally` of a run read before is grown with the rounds added since, when
the run's rounds are those it had with new ones after them; otherwise (a
resumed run that redid rounds, a history cut short, another run in the
folder) it is made again from all the rounds, as :func:`tally_of` makes it.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
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
    """The rounds each client id took part in, for a run and the runs it grew into.

    Its lists only grow, in round order: a :class:`Tally` reads the rounds up to
    its own last round, so the tallies of a run's earlier reads stay as they were.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tip = 0  # how many of the run's rounds the lists hold
        self.rounds: dict[str, dict[int, list[int]]] = {column: {} for _, column in _TAKING_PART}

    def add(self, rounds: Sequence[dict[str, Any]]) -> None:
        for record in rounds:
            number = record["round"]
            for key, column in _TAKING_PART:
                lists = self.rounds[column]
                for cid in record.get(key) or ():
                    lists.setdefault(cid, []).append(number)
        self.tip += len(rounds)


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


def _same(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> bool:
    """Whether a tally of ``new`` is that of ``old``: the same rounds, or read as the same.

    Rounds read again from a file are other objects: ``==`` would take ``true``
    for ``1`` and ``-0.0`` for ``0.0``, which a tally tells apart.
    """
    return all(a is b or _read(a) == _read(b) for a, b in zip(old, new, strict=True))


def tally_of(rounds: Sequence[dict[str, Any]]) -> Tally:
    """The tally of ``rounds`` (a run's, in round order), walking every one of them."""
    clients = _Clients()
    clients.add(rounds)
    numbers = [r["round"] for r in rounds]
    if any(b <= a for a, b in pairwise(numbers)):
        clients.tip = -1  # not in round order (no run's rounds): never grown, read whole
    best: list[tuple[float, int] | None] = [None] * len(_CANDIDATES)
    _better(best, rounds)
    return Tally(clients, len(rounds), max(numbers, default=-1), best)


def best_metric(rounds: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's best value: highest accuracy, else lowest loss (central before federated)."""
    best: list[tuple[float, int] | None] = [None] * len(_CANDIDATES)
    _better(best, rounds)
    return Tally(_Clients(), len(rounds), -1, best).best()


def grown(
    before: Tally | None, old: Sequence[dict[str, Any]], rounds: Sequence[dict[str, Any]]
) -> Tally:
    """The tally of ``rounds``, made from ``before`` (the tally of ``old``) when it can be.

    It can be when ``rounds`` are ``old`` followed by newer rounds, and ``before``
    was not grown into another run since; otherwise :func:`tally_of` walks them all.
    """
    n = len(old)
    if before is None or before.count != n or len(rounds) < n or not _same(old, rounds[:n]):
        return tally_of(rounds)
    new = rounds[n:]
    numbers = [r["round"] for r in new]
    if any(b <= a for a, b in pairwise([before.last, *numbers])):
        return tally_of(rounds)  # not in round order after the old ones: not a run that grew
    clients = before._clients
    with clients.lock:
        if clients.tip != n:  # grown into another run already
            return tally_of(rounds)
        clients.add(new)
    best = list(before._best)
    _better(best, new)
    return Tally(clients, len(rounds), numbers[-1] if numbers else before.last, best)
