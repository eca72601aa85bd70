"""Views of client ids that the asynchronous loop picks idle clients from, without copies.

Under FedBuff a federation may have 100,000s of clients, nearly all idle: the
loop tests membership in the sets of busy clients in place (:class:`Union`) and
indexes the idle ones of a sorted pool without listing them (:class:`Without`).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Collection, Iterator, Sequence
from typing import overload


class Union(Collection[int]):
    """The ids in any of a few collections, tested in place rather than copied into a set."""

    def __init__(self, *parts: Collection[int]) -> None:
        self._parts = parts

    def bound(self) -> int:
        """At least as many as there are ids (the parts' sizes summed, at no cost)."""
        return sum(len(part) for part in self._parts)

    def __contains__(self, value: object) -> bool:
        return any(value in part for part in self._parts)

    def __iter__(self) -> Iterator[int]:
        seen: set[int] = set()
        for part in self._parts:
            for cid in part:
                if cid not in seen:
                    seen.add(cid)
                    yield cid

    def __len__(self) -> int:
        return sum(1 for _ in self)


def without(pool: Sequence[int], taken: Union) -> Sequence[int]:
    """The ids of ``pool`` not in ``taken``, sorted; a view of a sorted pool, not a copy."""
    if (isinstance(pool, range) and pool.step == 1) or isinstance(pool, SortedIds):
        return Without(pool, taken)
    return sorted(c for c in pool if c not in taken)


class SortedIds(list[int]):
    """A list of distinct client ids in ascending order (so :func:`without` views it)."""


class Without(Sequence[int]):
    """The ids of a sorted pool (a range of step 1, or :class:`SortedIds`) except those taken.

    Indexed without listing the pool: only the positions of the taken ids are kept,
    found from whichever is smaller, the pool or the ids taken.

    Args:
        pool: The clients, in ascending order.
        taken: The ids left out (those not in ``pool`` are ignored).

    Example:
        >>> list(Without(range(6), Union({1, 4}))), Without(range(6), Union({1, 4}))[2]
        ([0, 2, 3, 5], 3)
    """

    def __init__(self, pool: Sequence[int], taken: Union) -> None:
        self._pool = pool
        self._taken = taken
        if taken.bound() < len(pool):
            found = (self._position(c) for c in taken)
            holes = {p for p in found if p is not None}
        else:
            holes = {i for i, c in enumerate(pool) if c in taken}
        self._holes = sorted(holes)

    def _position(self, cid: int) -> int | None:
        """Where ``cid`` is in the pool, or None."""
        pool = self._pool
        if isinstance(pool, range):
            return cid - pool.start if cid in pool else None
        at = bisect.bisect_left(pool, cid)
        return at if at < len(pool) and pool[at] == cid else None

    def __len__(self) -> int:
        return len(self._pool) - len(self._holes)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        size = len(self)
        if i < 0:
            i += size
        if not 0 <= i < size:
            raise IndexError(f"index {index} out of range for {size} clients")
        for hole in self._holes:  # ascending: each hole at or before the position shifts it
            if hole > i:
                break
            i += 1
        return self._pool[i]

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or value in self._taken:
            return False
        try:
            cid = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            return False
        return self._position(cid) is not None

    def __iter__(self) -> Iterator[int]:
        return (c for c in self._pool if c not in self._taken)
