"""A column's values sorted within each group, kept between the stages of one query.

A quantile's bisection asks for histogram counts over a shrinking interval at
every stage; a site fetches the column's clipped values once, sorts them, and
counts each stage's bins by bisection. The per-group counts every stage asks
for as well (rows, non-null values, values outside the bounds) are the same
query at each of the later stages, so its rows are kept too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np

MEMO_COLUMNS = 4
MEMO_ROWS = 16  # small results: a row per group (and per value outside the domain)

_T = TypeVar("_T")


class Memo:
    """The sorted columns a site keeps between a query's stages, safe to share across threads.

    Args:
        store: The dictionary the columns are kept in (None: a new one).
    """

    def __init__(self, store: dict[str, SortedValues] | None = None) -> None:
        self.store: dict[str, SortedValues] = {} if store is None else store
        self.results: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: str, build: Callable[[], SortedValues]) -> SortedValues:
        """The column kept under ``key``, built (outside the lock) if it is not kept."""
        return self._kept(self.store, MEMO_COLUMNS, key, build)

    def rows(self, key: str, build: Callable[[], _T]) -> _T:
        """A query's small result kept under ``key`` (the query and its parameters)."""
        return self._kept(self.results, MEMO_ROWS, key, build)

    def _kept(self, store: dict[str, Any], limit: int, key: str, build: Callable[[], _T]) -> _T:
        with self._lock:
            found = store.get(key)
        if found is not None:
            return cast(_T, found)
        built = build()
        with self._lock:
            while len(store) >= limit:
                store.pop(next(iter(store)))
            store[key] = built
        return built


class SortedValues:
    """One column's clipped, non-null values sorted within each group (for bisection)."""

    def __init__(self, groups: np.ndarray, values: np.ndarray, n_groups: int) -> None:
        # the values sorted, then a stable sort by group (a radix sort while the group
        # indices fit 16 bits) keeps each group's values in order: the values of
        # np.lexsort((values, groups)) at a fraction of its time
        order = np.argsort(values)
        key = groups[order]
        if 0 <= n_groups <= 1 << 16:
            key = key.astype(np.uint16)
        order = order[np.argsort(key, kind="stable")]
        self.values = values[order]
        self.offsets = np.searchsorted(groups[order], np.arange(n_groups + 1))

    def bins(
        self,
        low: Sequence[float],
        width: Sequence[float],
        nbins: int,
        high: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Counts below, in each of ``nbins`` bins from ``low`` by ``width``, and above.

        The last bin ends at ``high`` (closed), not at ``low + nbins * width``, which
        floating point may put below it (0 + 3 * 0.3 < 0.9); without ``high`` it ends there.
        """
        out = np.zeros((len(self.offsets) - 1, nbins + 2))
        for g in range(len(self.offsets) - 1):
            vals = self.values[self.offsets[g] : self.offsets[g + 1]]
            # the edges as numpy.histogram (linspace) makes them: lo + i * w, the last one
            # exactly high, the last bin closed
            edges = float(low[g]) + float(width[g]) * np.arange(nbins + 1)
            if high is not None:
                edges[-1] = float(high[g])
            start = int(np.searchsorted(vals, edges[0], side="left"))
            stop = int(np.searchsorted(vals, edges[-1], side="right"))
            inside = vals[start:stop]
            idx = np.minimum(np.searchsorted(edges, inside, side="right") - 1, nbins - 1)
            out[g, 1:-1] = np.bincount(idx, minlength=nbins)[:nbins]
            out[g, 0], out[g, -1] = start, len(vals) - stop
        return out
