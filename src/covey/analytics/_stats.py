"""Multi-stage statistics on the server: quantile bisection, the heavy-hitter trie, survival.

Each works only on sums of the sites' answers: histogram counts over a
shrinking interval (quantiles), counts of the next byte after each kept
prefix (heavy hitters), and per-time-point event and exit counts (survival).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from covey.analytics._compute import END, MAX_CELLS, TOPK_MAX_BYTES
from covey.analytics._dp import noise_threshold
from covey.analytics._sql import Plan
from covey.analytics._sqlaggregates import Aggregate
from covey.analytics._sqltext import QueryError

if TYPE_CHECKING:
    from covey.analytics._exchange import StageResult
    from covey.analytics._query import _Query

BISECT_BINS = 1024
DP_BISECT_BINS = 16
"""Bins per bisection stage under DP: the noise of every bin below the order statistic
adds up in its rank, so a few bins over more stages (more releases, each noisier)
land far closer than 1024 (about 8 times, for a median of 900 records at epsilon 0.5)."""
MAX_PREFIXES = 1024
"""The most prefixes of one group a stage of the heavy-hitter trie grows (see :class:`TopK`)."""
TOPK_FALSE_CHANCE = 0.01
"""Under DP, the most probability that noise alone grows one prefix of a trie."""


_CELLS_OF = {  # the statistics whose vectors grow with more than the groups
    "bins": ("quantile_cont", "quantile_disc", "histogram"),
    "distinct": ("approx_distinct",),
    "km": ("kaplan_meier",),
}


def _cells_per_group(stat: dict[str, Any]) -> int:
    if stat["op"] == "bins":
        return int(stat["bins"]) + 2
    if stat["op"] == "distinct":
        return int(stat["m"])
    return 2 * (int(stat["points"]) + 1)


def check_cells(p: Plan, stats: list[dict[str, Any]], groups: int) -> list[dict[str, Any]]:
    """Refuse, naming the aggregates, a first stage whose vectors a site would not compute.

    Found at the first stage, it would be after the analyst was charged under DP; each
    later stage asks for vectors of the same size (the trie's are capped on their own).
    """
    for stat in stats:
        if stat["op"] not in _CELLS_OF:
            continue
        funcs = _CELLS_OF[stat["op"]]
        cells = _cells_per_group(stat) * groups
        if cells > MAX_CELLS:
            names = [
                a.name
                for a in p.aggregates
                if a.column == stat["col"]
                and a.func in funcs
                and (a.func != "histogram" or int(a.args[2]) == stat["bins"])
            ]
            raise QueryError(
                f"{', '.join(names)} over {groups:,} group(s) would need {cells:,} numbers "
                f"from each site in one stage; the sites compute at most {MAX_CELLS:,}: "
                "group by columns of fewer values, or ask for fewer bins"
            )
    return stats


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


def survival_stat(a: Aggregate, bounds: tuple[float, float]) -> dict[str, Any]:
    """The statistic a ``KAPLAN_MEIER`` asks the sites for: a point every step over ``bounds``.

    Raises:
        QueryError: The bounds' range passes the largest float64, or the step
            gives more than 10,000 points.
    """
    low, high = bounds
    if not math.isfinite(high - low):
        raise QueryError(
            f"{a.name}: the bounds of {a.column!r} are too wide for a survival curve: "
            "their range passes the largest float64; declare bounds nearer the values"
        )
    step = float(a.args[1])
    span = (high - low) / step  # inf for a step of 1e-320: no ceiling, no OverflowError
    if not span <= 10_000:
        raise QueryError(
            f"{a.name}: the time step {step:g} gives "
            f"{f'{span:.4g}' if math.isfinite(span) else 'past 1e308'} points over the bounds of "
            f"{a.column!r} ({low:g} to {high:g}); at most 10000: give a step of at least "
            f"{(high - low) / 10_000:g}"
        )
    points = math.ceil(span)
    return {
        "op": "km",
        "col": a.column,
        "event": a.args[0],
        "low": low,
        "step": float(a.args[1]),
        "points": points,
    }


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
                    "high": state[i][1].tolist(),
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
    size of records share it, so a rare value is never revealed. A prefix is
    grown while it could still hold one of the ``k`` most frequent values: until
    ``k`` values are finished, every kept prefix is; after, only those whose
    count reaches the ``k``-th finished value's (a value has no more records than
    its prefix). So no value is missed for being under a crowd of lighter ones.
    A stage grows at most :data:`MAX_PREFIXES` prefixes per group (fewer when
    the groups would pass the sites' cap of cells), the heaviest; when the ones
    left out could have held a value of the answer, the query is refused
    naming the limit rather than answered with values that may not be the top.
    One trie per column serves every ``APPROX_TOP_K`` of it, in at most
    :data:`TOPK_MAX_BYTES` stages: a prefix grown to that many bytes is a
    finished value (the sites read no more of a value), so no stage is spent
    confirming it.
    """

    def __init__(self, q: _Query) -> None:
        self.q = q
        self._tries: dict[str, list[dict[bytes, float]]] = {}
        self._cut: dict[str, list[float]] = {}

    @staticmethod
    def stages(p: Plan) -> int:
        """The most stages (each one release) the tries of ``p``'s aggregates can take."""
        return TOPK_MAX_BYTES * len({a.column for a in p.aggregates if a.func == "top_k"})

    def run(self, a: Aggregate) -> tuple[list[list[str]], list[list[int]]]:
        """The top ``k`` values per group, most frequent first, and their counts."""
        k = int(a.args[0])
        col = str(a.column)
        if col not in self._tries:
            most = max(
                int(b.args[0])
                for b in self.q.plan.aggregates
                if b.func == "top_k" and b.column == a.column
            )
            self._tries[col], self._cut[col] = self._grow(col, most)
        values, counts_out = [], []
        for done, cut in zip(self._tries[col], self._cut[col], strict=True):
            best = sorted(done.items(), key=lambda t: (-t[1], t[0]))[:k]
            # a value left out has at most ``cut`` records: the answer stands if that is
            # below its k-th count (a tie ranks as well), and with no prefix left out
            if cut > -math.inf and (len(best) < k or cut > best[-1][1]):
                raise QueryError(
                    f"{a.name}: more than {self.limit()} prefixes of {col!r} in a group were "
                    f"frequent enough to hold one of its {k} most frequent values (the most a "
                    "stage grows); ask for fewer values or select fewer rows with WHERE"
                )
            values.append([v.decode("utf-8", errors="replace") for v, _ in best])
            counts_out.append([round(n) for _, n in best])
        return values, counts_out

    def limit(self) -> int:
        """The most prefixes a stage grows per group: :data:`MAX_PREFIXES`, within the cells cap."""
        return max(1, min(MAX_PREFIXES, MAX_CELLS // ((END + 1) * self.q.groups)))

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

    def _grow(self, col: str, k: int) -> tuple[list[dict[bytes, float]], list[float]]:
        """The finished values of ``col`` per group that the minimum lets through, counted.

        Also, per group, the largest count of a prefix left out at the limit
        (-inf when none was): no value missed has more records.
        """
        groups = self.q.groups
        live: list[list[bytes]] = [[b""] for _ in range(groups)]
        done: list[dict[bytes, float]] = [{} for _ in range(groups)]
        cut = [-math.inf] * groups
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
                grown = _extend(live[g], counts[g], threshold, depth, done[g])
                kept, cut[g] = _prune(grown, done[g], k, self.limit(), cut[g])
                nxt.append(kept)
            live = nxt
        return done, cut


def _extend(
    live: list[bytes],
    counts: np.ndarray,
    threshold: float,
    depth: int,
    done: dict[bytes, float],
) -> list[tuple[float, bytes]]:
    """The extensions of ``live`` by one byte that reach ``threshold``; values end in ``done``."""
    grown: list[tuple[float, bytes]] = []
    for i, prefix in enumerate(live):
        for sym in np.nonzero(counts[i] >= threshold)[0]:
            n = float(counts[i, sym])
            if sym == END:
                done[prefix] = n
            elif depth == TOPK_MAX_BYTES - 1:  # as long as the sites read
                done[prefix + bytes([int(sym)])] = n
            else:
                grown.append((n, prefix + bytes([int(sym)])))
    return grown


def _prune(
    grown: list[tuple[float, bytes]], done: dict[bytes, float], k: int, limit: int, cut: float
) -> tuple[list[bytes], float]:
    """The prefixes that could still hold a top-``k`` value, the heaviest ``limit`` of them.

    Returns:
        The prefixes kept, and the largest count of one left out at the limit so
        far (``cut`` or more).
    """
    finished = sorted(done.values(), reverse=True)
    floor = finished[k - 1] if len(finished) >= k else -math.inf
    grown = sorted((t for t in grown if t[0] >= floor), key=lambda t: (-t[0], t[1]))
    if len(grown) > limit:
        cut = max(cut, grown[limit][0])
    return [p for _, p in grown[:limit]], cut


def check_rounds(
    bounds: tuple[float, float], precision: float, bins: int = BISECT_BINS, col: str = "x"
) -> int:
    """Bisection stages needed to narrow ``bounds`` (of the column ``col``) to ``precision``.

    Raises:
        QueryError: The bounds' range passes the largest float64 (their bins
            would be infinitely wide), or the precision is not positive.
    """
    low, high = (float(b) for b in bounds)
    span = high - low
    if not math.isfinite(span):
        raise QueryError(
            f"the bounds of {col!r} are too wide for quantiles: their range {high:g} - "
            f"({low:g}) passes the largest float64; declare bounds nearer the values"
        )
    if not precision > 0:
        raise QueryError(f"the quantile precision must be positive, got {precision}")
    # in logarithms: span / precision passes float64 for a precision below 2.2e-308
    return max(1, math.ceil((math.log(span) - math.log(precision)) / math.log(bins)))
