"""Multi-stage statistics on the server: quantile bisection, the heavy-hitter trie, survival.

Each works only on sums of the sites' answers: histogram counts over a
shrinking interval (quantiles), counts of the next byte after each kept
prefix (heavy hitters), and per-time-point event and exit counts (survival).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from covey.analytics._compute import END, TOPK_MAX_BYTES
from covey.analytics._dp import noise_threshold
from covey.analytics._sql import Aggregate, Plan, QueryError

if TYPE_CHECKING:
    from covey.analytics._exchange import StageResult
    from covey.analytics._query import _Query

BISECT_BINS = 1024
DP_BISECT_BINS = 16
"""Bins per bisection stage under DP: the noise of every bin below the order statistic
adds up in its rank, so a few bins over more stages (more releases, each noisier)
land far closer than 1024 (about 8 times, for a median of 900 records at epsilon 0.5)."""
MAX_PREFIXES = 64
TOPK_FALSE_CHANCE = 0.01
"""Under DP, the most probability that noise alone grows one prefix of a trie."""


def merge_declarations(p: Plan, decls: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the sites' declarations: union of domains and bounds, the largest minimum size.

    Args:
        p: The query's plan.
        decls: What each answering site declared (its policy's public part).

    Returns:
        ``{"domains", "bounds", "min_group_size"}`` used to plan the stages.
    """
    domains: dict[str, list[Any]] = {}
    for col in p.group_by:
        merged: list[Any] = []
        for d in decls:
            for v in d.get("domains", {}).get(col, []):
                if v not in merged:
                    merged.append(v)
        domains[col] = merged
    bounds: dict[str, tuple[float, float]] = {}
    for d in decls:
        for col, (low, high) in d.get("bounds", {}).items():
            old = bounds.get(col, (float(low), float(high)))
            bounds[col] = (min(old[0], float(low)), max(old[1], float(high)))
    k = max(int(d.get("min_group_size", 1)) for d in decls)
    return {"domains": domains, "bounds": bounds, "min_group_size": k}


def survival(events: np.ndarray, exits: np.ndarray, min_exits: float = 1.0) -> list[float]:
    """The Kaplan-Meier curve at each time point from per-point event and exit counts.

    With ``min_exits`` above 1 (the minimum group size), a drop is shown only once
    at least that many records have left since the last one shown: the points in
    between are merged into it (a life table) and are NaN, as a histogram bin under
    the minimum is. Otherwise a fine step would place single records in time.

    Args:
        events: Events per time point.
        exits: Records leaving (events and censored) per time point.
        min_exits: The fewest records leaving behind one shown point.

    Returns:
        The survival at each point (NaN where withheld).
    """
    at_risk = float(np.sum(exits))
    curve: list[float] = []
    value, d_acc, e_acc = 1.0, 0.0, 0.0
    for d, e in zip(events.tolist(), exits.tolist(), strict=True):
        d_acc, e_acc = d_acc + d, e_acc + e
        if min_exits > 1 and e_acc < min_exits:
            curve.append(math.nan)
            continue
        if at_risk > 0:
            value *= min(max(1.0 - d_acc / at_risk, 0.0), 1.0)
        at_risk -= e_acc
        d_acc = e_acc = 0.0
        curve.append(min(max(value, 0.0), 1.0))
    return curve


class Quantiles:
    """Quantiles of every quantile aggregate by bisection on histogram counts.

    Each stage asks, per group, for the counts in ``q.bins`` equal bins of
    the current interval (plus below and above); the interval shrinks to the
    bin that holds the wanted order statistic, until it is narrower than the
    precision.
    """

    def __init__(self, q: _Query, first: StageResult, index: dict[tuple[Any, ...], int]) -> None:
        self.q, self.first, self.index = q, first, index
        self.targets: list[tuple[Aggregate, np.ndarray]] = []
        self.weights: dict[str, tuple[int, np.ndarray]] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.ranks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for a in q.plan.aggregates:
            if not a.func.startswith("quantile"):
                continue
            n = np.maximum(np.rint(first.vectors[index[("count_col", a.column)]]), 0)
            self.counts[a.name] = n
            quant = float(a.args[0])
            if a.func == "quantile_cont":
                pos = quant * np.maximum(n - 1, 0)
                lo = np.floor(pos)
                self.weights[a.name] = (len(self.targets), pos - lo)
                self.targets += [(a, lo), (a, np.ceil(pos))]
                self.ranks[a.name] = (lo, np.ceil(pos))
            else:
                rank = np.maximum(np.ceil(quant * n) - 1, 0)
                self.weights[a.name] = (len(self.targets), np.zeros_like(n))
                self.targets.append((a, rank))
                self.ranks[a.name] = (rank, rank)
        self.found: list[tuple[np.ndarray, np.ndarray]] | None = None

    def _run(self) -> list[tuple[np.ndarray, np.ndarray]]:
        groups = self.q.groups
        state = []
        for a, _ in self.targets:
            low, high = self.q.decl["bounds"][a.column]
            state.append((np.full(groups, float(low)), np.full(groups, float(high))))
        # the first round's bins (over the whole bounds) came with the first stage
        for i, (a, _) in enumerate(self.targets):
            self._narrow(i, state, self.first.vectors[self.index[("qbins", a.column)]])
        rounds = [self.q.bisect_rounds(a) for a, _ in self.targets]
        for r in range(1, max(rounds, default=0)):
            active = [i for i, n in enumerate(rounds) if r < n]
            stats = [
                {
                    "op": "bins",
                    "col": self.targets[i][0].column,
                    "low": state[i][0].tolist(),
                    "width": ((state[i][1] - state[i][0]) / self.q.bins).tolist(),
                    "bins": self.q.bins,
                }
                for i in active
            ]
            result = self.q.run(stats)
            for i, counts in zip(active, result.vectors, strict=True):
                self._narrow(i, state, counts)
        return state

    def _narrow(
        self, i: int, state: list[tuple[np.ndarray, np.ndarray]], counts: np.ndarray
    ) -> None:
        """Shrink target ``i``'s intervals to the bin holding its order statistic."""
        low, high = state[i]
        bins = self.q.bins
        width = (high - low) / bins
        cum = counts[:, :1] + np.cumsum(counts[:, 1:-1], axis=1)
        over = cum > self.targets[i][1][:, None]
        j = np.where(over.any(axis=1), np.argmax(over, axis=1), bins - 1)
        state[i] = (low + j * width, low + (j + 1) * width)

    def value(self, a: Aggregate) -> np.ndarray:
        """The quantile of ``a`` per group (NaN for an empty group)."""
        if self.found is None:
            self.found = self._run()
        start, frac = self.weights[a.name]
        mids = [(lo + hi) / 2 for lo, hi in self.found]
        if a.func == "quantile_cont":
            out = mids[start] + frac * (mids[start + 1] - mids[start])
        else:
            out = mids[start]
        # a record is shown only as one of a crowd of k at each end: at least k - 1
        # other records below it and k - 1 above (QUANTILE_DISC(col, 1), the MAX, is
        # withheld unless k is 1). Ranks count from 0: rank r has r records below it.
        k, n = float(self.q.decl["min_group_size"]), self.counts[a.name]
        low, high = self.ranks[a.name]
        crowded = (low >= k - 1) & (high <= n - k)
        return np.where((n > 0) & crowded, out, np.nan)

    def width(self, a: Aggregate) -> float:
        """The width of the final interval of ``a`` (the answer is within half of it)."""
        if self.found is None:
            self.found = self._run()
        start, _ = self.weights[a.name]
        lo, hi = self.found[start]
        return float(np.max(hi - lo))


class TopK:
    """The most frequent values of a column by growing a prefix trie one byte per stage.

    A prefix (or a finished value) is kept only if at least the minimum group
    size of records share it, so a rare value is never revealed. One trie per
    column serves every ``APPROX_TOP_K`` of it, in at most :data:`TOPK_MAX_BYTES`
    stages: a prefix grown to that many bytes is a finished value (the sites
    read no more of a value), so no stage is spent confirming it.
    """

    def __init__(self, q: _Query) -> None:
        self.q = q
        self._tries: dict[str, list[dict[bytes, float]]] = {}

    @staticmethod
    def stages(p: Plan) -> int:
        """The most stages (each one release) the tries of ``p``'s aggregates can take."""
        return TOPK_MAX_BYTES * len({a.column for a in p.aggregates if a.func == "top_k"})

    def run(self, a: Aggregate) -> tuple[list[list[str]], list[list[int]]]:
        """The top ``k`` values per group, most frequent first, and their counts."""
        k = int(a.args[0])
        col = str(a.column)
        if col not in self._tries:
            self._tries[col] = self._grow(col)
        values, counts_out = [], []
        for done in self._tries[col]:
            best = sorted(done.items(), key=lambda t: (-t[1], t[0]))[:k]
            values.append([v.decode("utf-8", errors="replace") for v, _ in best])
            counts_out.append([round(n) for _, n in best])
        return values, counts_out

    def threshold(self, cells: int) -> float:
        """The count a prefix needs to be kept, among ``cells`` counts tested in a stage.

        The minimum group size and, under DP, more than the noise reaches but rarely.
        A count is noise plus the records that share the prefix; with noise as
        strong as DP's at a small epsilon, the noise of one of the 257 extensions
        of each prefix passes the minimum group size alone, and the trie would
        grow bytes no record holds. The level is set so that noise alone passes
        it on any cell of the whole trie with probability at most
        :data:`TOPK_FALSE_CHANCE` (post-processing: it costs no privacy).
        """
        level = float(max(1, int(self.q.decl["min_group_size"])))
        if self.q.multiplier is None:
            return level
        terms = 1 if self.q.opt["secure"] else len(self.q.fed.cids)
        chance = TOPK_FALSE_CHANCE / (TOPK_MAX_BYTES * max(cells, 1))
        noise = noise_threshold(self.q.opt["mechanism"], self.q.multiplier, terms, chance)
        return max(level, noise)

    def _grow(self, col: str) -> list[dict[bytes, float]]:
        """The finished values of ``col`` per group that the minimum lets through, counted."""
        groups = self.q.groups
        live: list[list[bytes]] = [[b""] for _ in range(groups)]
        done: list[dict[bytes, float]] = [{} for _ in range(groups)]
        for depth in range(TOPK_MAX_BYTES):
            if not any(live):
                break
            stat = {
                "op": "prefix",
                "col": col,
                "prefixes": [[p.hex() for p in ps] for ps in live],
                "depth": depth,
            }
            counts = self.q.run([stat]).vectors[0]
            threshold = self.threshold(sum(len(ps) for ps in live) * (END + 1))
            nxt: list[list[bytes]] = []
            for g in range(groups):
                grown: list[tuple[float, bytes]] = []
                for i, prefix in enumerate(live[g]):
                    for sym in np.nonzero(counts[g, i] >= threshold)[0]:
                        n = float(counts[g, i, sym])
                        if sym == END:
                            done[g][prefix] = n
                        elif depth == TOPK_MAX_BYTES - 1:  # as long as the sites read
                            done[g][prefix + bytes([int(sym)])] = n
                        else:
                            grown.append((n, prefix + bytes([int(sym)])))
                grown.sort(key=lambda t: (-t[0], t[1]))
                nxt.append([p for _, p in grown[:MAX_PREFIXES]])
            live = nxt
        return done


def check_rounds(bounds: tuple[float, float], precision: float, bins: int = BISECT_BINS) -> int:
    """Bisection stages needed to narrow ``bounds`` to ``precision``."""
    low, high = bounds
    if not precision > 0:
        raise QueryError(f"the quantile precision must be positive, got {precision}")
    return max(1, math.ceil(math.log((high - low) / precision) / math.log(bins)))
