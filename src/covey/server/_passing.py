"""Who passes ``where=`` among simulated clients, kept as they report rather than found each round.

A round's clients are sampled among those that pass the strategy's ``where``.
Deployed clients come and go and may connect again with other properties, so a
deployed round looks at every connected client. Simulated clients (a ``range``
of ids, none of which ever connects again) report once: each is judged when
its properties come in, and a round of 100,000 clients then costs what its
sampled clients cost, not a look at every client's properties, as the FedBuff
loop does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from covey.server._idviews import SortedIds
from covey.strategies._strategy import Strategy


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
    is asked every round, as a deployed round asks it.
    """

    def __init__(self) -> None:
        self._clients: range | None = None  # None until a simulated round judged them
        self._where: Any = None
        self._wanted: dict[Any, Any] | None = None  # a dict where's entries when judged
        self._passing: set[int] = set()
        self._sorted: SortedIds | None = None
        self._new: list[int] = []  # clients that reported since the last round

    def reported(self, cid: int) -> None:
        """Note that ``cid`` answered a properties task (judged at the next round)."""
        if self._clients is not None:
            self._new.append(cid)

    def eligible(self, loop: _Loop, rnd: int, available: Sequence[int]) -> Sequence[int]:
        """The clients of ``available`` that pass ``where``, asking new ones for properties."""
        strategy, properties = loop.strategy, loop.properties
        own = type(strategy).eligible is not Strategy.eligible
        if not isinstance(available, range) or loop._joins() is not None or own:
            loop._ask_properties(rnd, available)
            return strategy.eligible(available, properties)
        if len(properties) < len(available):  # some have not reported: ask them
            loop._ask_properties(rnd, available)
        return self._judged(strategy, available, properties)

    def _judged(
        self, strategy: Strategy, clients: range, properties: Mapping[int, Mapping[str, Any]]
    ) -> SortedIds:
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
        if self._sorted is None:
            self._sorted = SortedIds(sorted(self._passing))
        return SortedIds(self._sorted)  # a copy: a selector may change the list it is given

    def _changed(self, where: Any) -> bool:
        """Whether a dict ``where`` holds other entries than when the clients were judged."""
        wanted = self._wanted
        if wanted is None or not isinstance(where, Mapping):
            return False
        if len(where) != len(wanted):
            return True
        return any(key not in wanted or wanted[key] is not value for key, value in where.items())
