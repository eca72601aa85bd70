"""Who passes ``where=`` among simulated clients, kept as they report rather than found each round.

A round's clients are sampled among those that pass the strategy's ``where``.
Deployed clients come and go and may connect again with other properties, so a
deployed round looks at every connected client. Simulated clients (a ``range``
of ids, none of which ever connects again) report once: each is judged when
its properties come in, and those still to report are kept too, so a round (a
FedBuff update) of 100,000 clients costs what its sampled clients cost, not a
look at every client's properties.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from covey.server._idviews import SortedIds
from covey.server._refusednote import refusal_mark, refused_note
from covey.server._said import note_unreported
from covey.strategies._checks import clients_there
from covey.strategies._filters import eligibility, too_few_to_fit
from covey.strategies._strategy import Strategy

logger = logging.getLogger("covey")

POLL = 1.0
"""Seconds between looks at the connected clients while a deployed round waits for eligible ones.

A client that connects again with other properties does not change how many are
connected, so the wait looks again at least this often.
"""


class _Loop(Protocol):
    """What :class:`KeptWhere` uses of a round loop."""

    strategy: Strategy
    properties: dict[int, dict[str, Any]]

    def _joins(self) -> Callable[[int], int] | None: ...

    def _ask_properties(self, rnd: int, cids: Sequence[int]) -> None: ...


class KeptWhere:
    """The simulated clients that pass a strategy's ``where``, judged once each.

    The whole range is judged again if ``where`` is replaced, or a dict ``where``
    changed in place. A strategy that overrides :meth:`covey.Strategy.eligible`
    is asked every round, as a deployed round asks it (FedBuff's updates ask it
    of each client as it reports, as they always did).
    """

    def __init__(self) -> None:
        self._clients: range | None = None  # None until a simulated round judged them
        self._where: Any = None
        self._wanted: dict[Any, Any] | None = None  # a dict where's entries when judged
        self._passing: set[int] = set()
        self._sorted: SortedIds | None = None
        self._new: list[int] = []  # clients that reported since the last round
        # The clients of a range that have not reported (found once, then kept as they report).
        self._missing: set[int] | None = None
        self._missing_in: range | None = None

    def reported(self, cid: int, properties: Mapping[int, Any]) -> None:
        """Note that ``cid`` answered a properties task (judged at the next round)."""
        if self._clients is not None:
            self._new.append(cid)
        if self._missing is not None and cid in properties:
            self._missing.discard(cid)

    def eligible(self, loop: _Loop, rnd: int, available: Sequence[int]) -> Sequence[int]:
        """The clients of ``available`` that pass ``where``, asking new ones for properties."""
        strategy, properties = loop.strategy, loop.properties
        own = type(strategy).eligible is not Strategy.eligible
        if not isinstance(available, range) or loop._joins() is not None or own:
            loop._ask_properties(rnd, available)
            return strategy.eligible(available, properties)
        if len(properties) < len(available):  # some have not reported: ask them
            loop._ask_properties(rnd, self.unreported(available, properties))
        self.judge(strategy, available, properties)
        return SortedIds(self.passing())  # a copy: a selector may change the list it is given

    def unreported(self, clients: range, properties: Mapping[int, Any]) -> list[int]:
        """The clients of ``clients`` that have not reported their properties, ascending.

        All of them are looked at once; later calls cost what the clients still
        to report cost, not a look at every client.
        """
        if self._missing is None or clients != self._missing_in:
            missing = [cid for cid in clients if cid not in properties]
            self._missing, self._missing_in = set(missing), clients
            return missing
        return sorted(self._missing)

    def judge(
        self, strategy: Strategy, clients: range, properties: Mapping[int, Mapping[str, Any]]
    ) -> None:
        """Judge the clients that reported since the last call; all again if ``where`` changed."""
        where = strategy.where
        if clients != self._clients or where is not self._where or self._changed(where):
            self._clients, self._where = clients, where
            self._wanted = dict(where) if isinstance(where, Mapping) else None
            self._passing = set(strategy.eligible(clients, properties))
            self._new.clear()
            self._sorted = None
        elif self._new:
            new = [cid for cid in dict.fromkeys(self._new) if cid in clients]
            self._new.clear()
            passed = strategy.eligible(new, properties)
            self._passing.difference_update(new)
            self._passing.update(passed)
            self._sorted = None

    @property
    def count(self) -> int:
        """How many clients passed ``where`` at the last :meth:`judge`."""
        return len(self._passing)

    def passing(self) -> SortedIds:
        """The clients that passed ``where`` at the last :meth:`judge`, sorted (not a copy)."""
        if self._sorted is None:
            self._sorted = SortedIds(sorted(self._passing))
        return self._sorted

    def _changed(self, where: Any) -> bool:
        """Whether a dict ``where`` holds other entries than when the clients were judged."""
        wanted = self._wanted
        if wanted is None or not isinstance(where, Mapping):
            return False
        if len(where) != len(wanted):
            return True
        return any(key not in wanted or wanted[key] is not value for key, value in where.items())


def wait_for_eligible(
    loop: Any, rnd: int, eligible: Sequence[int], since: float, record: Any
) -> Sequence[int]:
    """Deployed, under ``where=``: wait for enough connected clients that pass it.

    A deployed round waits up to ``wait_timeout`` (counted from ``since``, a
    :func:`time.perf_counter` reading taken as the round began to wait) for
    ``min_available_clients`` and ``min_fit_clients`` clients; under ``where=``
    the minimums count the clients that pass it, so the round also waits for
    those to connect rather than stopping at once while others may join.
    Simulated clients never connect later: they are returned as they are.

    The seconds spent waiting here are added to ``record.durations["wait"]``, and
    the clients that did not report their properties are counted in
    ``record.aggregate_info["unreported"]`` (left out of the round's sample). A
    wait that runs out names the connections refused meanwhile, by cause.

    Returns:
        The eligible clients.

    Raises:
        FederationError: too few eligible clients connected within ``wait_timeout``.
    """
    strategy = loop.strategy
    wait = getattr(loop.transport, "wait_for_clients", None)
    if eligibility(strategy) is None or wait is None or loop.simulated:
        note_unreported(record, loop._logged)
        return eligible
    start = time.perf_counter()
    mark = refusal_mark(loop.transport)  # the connections refused in all of the waits below
    timeout = loop.wait_timeout
    deadline = None if timeout is None else since + timeout
    said = False
    while (wanted := strategy.client_count("fit", len(eligible))) > len(eligible):
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0:
            break
        if not said:
            said = True
            logger.info(
                "round %d: waiting for clients: %d wanted to train, only %s",
                *(rnd, wanted, clients_there(len(eligible), eligibility(strategy))),
            )
        wait(len(loop.transport.clients()) + 1, POLL if left is None else min(left, POLL))
        eligible = loop._eligible(rnd, loop.transport.clients())
    if said:
        record.durations["wait"] += time.perf_counter() - start
    note_unreported(record, loop._logged)
    if wanted > len(eligible):  # the wait ran out
        error = loop.property_error
        why = too_few_to_fit(strategy, rnd, wanted, len(eligible), error, timeout)
        raise loop._fail(why + refused_note(loop.transport, mark), rnd)
    return eligible
