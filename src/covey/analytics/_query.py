"""``covey.analytics.query``: SQL in, a DataFrame out, the data never leaving the sites.

The query is rewritten into stages of sums: counts, sums and non-null counts
first (AVG = SUM / COUNT); a second stage of squared deviations from the
global mean for VAR/STDDEV (a two-pass, numerically stable variance);
quantiles by iterative bisection over secure histograms, to a stated
precision; heavy hitters by growing a prefix trie, one byte per stage.

References:
    Chan, Golub, LeVeque, "Algorithms for Computing the Sample Variance:
    Analysis and Recommendations", The American Statistician 1983.
    Zhu, Kairouz, McMahan, Sun, Li, "Federated Heavy Hitters Discovery with
    Differential Privacy", AISTATS 2020 (the trie protocol).
    Whang, Vander-Zanden, Taylor, "A Linear-Time Probabilistic Counting
    Algorithm for Database Applications", TODS 1990 (linear counting).
    Kaplan, Meier, "Nonparametric Estimation from Incomplete Observations",
    JASA 1958.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from covey.analytics import _dp
from covey.analytics._budget_fit import charge_told, what_fits
from covey.analytics._compute import MAX_GROUPS
from covey.analytics._exchange import Federation, StageResult, transport_for
from covey.analytics._fixedpoint import ROW_CAP, fixed_point_scale, secure_bound, sensitivity
from covey.analytics._moments import centre
from covey.analytics._options import DISTINCT_BUCKETS, check_query
from covey.analytics._queryvalues import first_filtered, noisy_divisions, value
from covey.analytics._select import answer_columns
from covey.analytics._site import Site
from covey.analytics._sql import Plan
from covey.analytics._sqlaggregates import Aggregate
from covey.analytics._sqltext import QueryError
from covey.analytics._stats import (
    BISECT_BINS,
    DP_BISECT_BINS,
    Quantiles,
    TopK,
    check_cells,
    check_rounds,
    merge_declarations,
    survival_stat,
)
from covey.core._messages import Real, plain_real
from covey.privacy import Ledger
from covey.secagg import ThreatModel
from covey.transport import Transport


class _Query:
    """One query's state across its stages."""

    def __init__(
        self, fed: Federation, p: Plan, decl: dict[str, Any], options: dict[str, Any]
    ) -> None:
        self.fed, self.plan, self.decl, self.opt = fed, p, decl, options
        self.groups = int(np.prod([len(decl["domains"][c]) for c in p.group_by] or [1]))
        if self.groups > MAX_GROUPS:  # the sites would each refuse it, mid-stage
            raise QueryError(
                f"GROUP BY {', '.join(p.group_by)}: the sites' domains make {self.groups} "
                f"groups; at most {MAX_GROUPS} are answered"
            )
        self.multiplier: float | None = None
        # bins per bisection stage of a quantile: fewer under DP (see DP_BISECT_BINS)
        self.bins = BISECT_BINS if options["epsilon"] is None else DP_BISECT_BINS
        self.releases = 0
        self.meta: dict[str, Any] = {"clipped": {}, "outside_domain": 0, "withheld_groups": 0}
        self.spent: dict[str, float] = {}
        self.repeat = False  # a query the analyst was already charged for
        self.withholding: list[str] = []  # sites whose policy finds the noise too weak
        # {aggregate: (groups, reason)} of the means not shown (see _queryvalues.mean_level)
        self.unavailable: dict[str, tuple[np.ndarray, str]] = {}
        # {aggregate: rows} under DP: a quantile's rank error (see _queryvalues.rank_level)
        self.rank_error: dict[str, float] = {}

    # -- stages --------------------------------------------------------------------------

    def request(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        req: dict[str, Any] = {
            "sql": self.plan.sql,
            "secure": self.opt["secure"],
            "domains": {c: self.decl["domains"][c] for c in self.plan.group_by},
            "stats": stats,
            "dp": None,
        }
        if self.opt["secure"]:
            n = len(self.fed.cids)
            req["bound"] = secure_bound(n)
            for s in stats:
                s["scale"] = fixed_point_scale(s, self.decl["bounds"], n)
                if s["op"] in ("sum", "sq"):
                    s["limbs"] = 2  # a high and a low limb: 52 bits below the high one
        if self.multiplier is not None:
            mech = self.opt["mechanism"]
            for s in stats:
                s["sensitivity"] = self.sensitivity(s)
            req["dp"] = {
                "mechanism": mech,
                "multiplier": self.multiplier,
                # an answer seen on its own (not masked) carries all of the noise
                "shares": len(self.fed.cids) if self.opt["secure"] else 1,
                # the whole query's releases: a site withholds in all its stages or none
                "releases": self.releases,
            }
        return req

    def run(self, stats: list[dict[str, Any]], per_site: bool = False) -> StageResult:
        result = self.fed.stage(self.request(stats), self.groups, keep_per_site=per_site)
        for col, n in result.clipped.items():
            self.meta["clipped"][col] = max(self.meta["clipped"].get(col, 0), n)
        self.meta["outside_domain"] = max(self.meta["outside_domain"], result.outside_domain)
        self.meta["withheld_groups"] = max(self.meta["withheld_groups"], result.withheld_groups)
        self.spent.update(result.spent)
        return result

    def first_stats(self) -> tuple[list[dict[str, Any]], dict[tuple[Any, ...], int]]:
        # COUNT(*), and the statistics of each aggregate with a FILTER of its own
        stats, index = first_filtered(self.plan.aggregates)

        def need(key: tuple[Any, ...], stat: dict[str, Any]) -> None:
            if key not in index:
                index[key] = len(stats)
                stats.append(stat)

        bounds = self.decl["bounds"]
        for a in self.plan.aggregates:
            col = a.column
            if a.where is not None:  # its statistics are there already
                continue
            if a.func == "count_col":
                need(("count_col", col), {"op": "count_col", "col": col})
            elif a.func in ("quantile_cont", "quantile_disc"):
                self.bisect_rounds(a)  # bounds too wide are refused before any stage
                need(("count_col", col), {"op": "count_col", "col": col})
                low, high = bounds[col]
                need(
                    ("qbins", col),
                    {
                        "op": "bins",
                        "col": col,
                        "low": [float(low)] * self.groups,
                        "width": [(high - low) / self.bins] * self.groups,
                        "high": [float(high)] * self.groups,
                        "bins": self.bins,
                    },
                )
            elif a.func in ("sum", "avg", "var_samp", "var_pop", "stddev_samp", "stddev_pop"):
                need(("count_col", col), {"op": "count_col", "col": col})
                need(("sum", col), {"op": "sum", "col": col})
            elif a.func in ("min", "max"):
                need((a.func, col), {"op": a.func, "col": col})
            elif a.func == "histogram":
                low, high, nbins = a.args
                width = (float(high) - float(low)) / int(nbins)
                need(
                    ("hist", a.name),
                    {
                        "op": "bins",
                        "col": col,
                        "low": [float(low)] * self.groups,
                        "width": [width] * self.groups,
                        "high": [float(high)] * self.groups,
                        "bins": int(nbins),
                    },
                )
            elif a.func == "approx_distinct":
                need(("distinct", col), {"op": "distinct", "col": col, "m": DISTINCT_BUCKETS})
            elif a.func == "kaplan_meier":
                need(("km", a.name), survival_stat(a, bounds[col]))
        return check_cells(self.plan, stats, self.groups), index

    def planned_releases(self, first: int) -> int:
        total = first
        if any(a.func.startswith(("var", "stddev")) for a in self.plan.aggregates):
            total += len(
                {a.column for a in self.plan.aggregates if a.func.startswith(("var", "stddev"))}
            )
        for a in self.plan.aggregates:
            if a.func.startswith("quantile"):
                # the first round is part of the first stage
                total += (self.bisect_rounds(a) - 1) * (2 if a.func == "quantile_cont" else 1)
        return total + TopK.stages(self.plan)

    def bisect_rounds(self, a: Aggregate) -> int:
        bounds = self.decl["bounds"][a.column]
        return check_rounds(bounds, self.precision(a), self.bins, str(a.column))

    def precision(self, a: Aggregate) -> float:
        low, high = self.decl["bounds"][a.column]
        given = self.opt["precision"]
        if given is not None:
            return float(given)
        if not (high - low) * 1e-6 > 0:  # bounds (0, 5e-324): a millionth of them is 0
            raise QueryError(
                f"the bounds of {a.column!r} ({low:g} to {high:g}) are too narrow for quantiles: "
                "a millionth of their range, the default precision, is 0 in float64; declare "
                "wider bounds or give a precision (query(..., precision=...))"
            )
        return float(high - low) * 1e-6

    # -- the query ------------------------------------------------------------------------

    def sensitivity(self, stat: dict[str, Any]) -> float:
        """The sensitivity of a statistic under the merged bounds (finite, or refused)."""
        found = sensitivity(stat, self.decl["bounds"], self.opt["mechanism"])
        if not math.isfinite(found * (self.multiplier or 1.0)):  # so does the noise's scale
            raise QueryError(
                f"the bounds of {stat['col']!r} are too wide for DP: the sensitivity of "
                f"its {'squared deviations' if stat['op'] == 'sq' else 'sums'} (times the "
                "noise multiplier, the noise's scale) overflows float64"
            )
        return found

    def check_squares(self) -> None:
        """Refuse bounds too wide for a variance's squared deviations before any stage runs.

        Their scale and sensitivity are set for the second stage; found only then, the
        first stage's answers (and under DP their budget) would be spent for nothing.
        """
        for col in {a.column for a in self.plan.aggregates if a.func.startswith(("var", "std"))}:
            low = float(self.decl["bounds"][col][0])
            # the fewest rows the second stage assumes, the centre at one end of the bounds
            probe: dict[str, Any] = {"op": "sq", "col": col, "center": [low], "rows": 1024}
            if self.opt["secure"]:
                fixed_point_scale(probe, self.decl["bounds"], len(self.fed.cids))
            if self.opt["epsilon"] is not None:
                self.sensitivity(probe)

    def execute(self) -> pd.DataFrame:
        self.check_squares()
        stats, index = self.first_stats()
        if self.opt["epsilon"] is not None:
            self.releases = self.planned_releases(len(stats))
            self.multiplier = _dp.calibrate(
                self.opt["mechanism"], float(self.opt["epsilon"]), self.opt["delta"], self.releases
            )
            # every site checks the whole query against its budget first: one that
            # cannot afford it would otherwise refuse after the others have spent
            describe = {"sql": self.plan.sql, "secure": self.opt["secure"], "dp": {}}
            fits = partial(what_fits, self.opt["mechanism"], self.releases, self.opt["delta"])
            self.withholding = self.fed.check_budgets(
                describe, self.request(copy.deepcopy(stats)), self.releases, fits
            )
            analyst = self.opt.get("analyst")
            if analyst is not None:
                # free again only when the sites' caches give the same noisy answer:
                # the same sites, asked the same stages (a site that joins, or one whose
                # cache no longer holds it, answers afresh: see frame())
                opts = ("epsilon", "mechanism", "delta", "precision", "secure")
                sites = sorted(self.fed.names[c] for c in self.fed.cids)
                key = repr((self.plan.sql, *(self.opt[k] for k in opts), sites))
                ev = _dp.event(self.opt["mechanism"], self.multiplier, self.releases)
                self.repeat = charge_told(analyst, key, ev, fits) is None
        first = self.run(
            stats, per_site=any(a.func in ("min", "max") for a in self.plan.aggregates)
        )
        count = first.vectors[0]
        suppressed = count < self.decl["min_group_size"]
        columns: dict[str, Any] = {}
        attrs_precision: dict[str, Any] = {}
        centers: dict[str, np.ndarray] = {}
        rows: dict[str, int] = {}
        for a in self.plan.aggregates:
            if a.func.startswith(("var", "stddev")) and a.column not in centers:
                n, s = (
                    first.vectors[index[("count_col", a.column)]],
                    first.vectors[index[("sum", a.column)]],
                )
                centers[str(a.column)] = centre(n, s, self.decl["bounds"][a.column])
                # The rows now known bound what a site can hold (with room for DP
                # noise on the counts): the second stage's fixed point gets finer.
                rows[str(a.column)] = int(min(ROW_CAP, 2 * float(np.max(n, initial=0)) + 1024))
        squares: dict[str, np.ndarray] = {}
        if centers:
            sq_stats = [
                {"op": "sq", "col": c, "center": centers[c].tolist(), "rows": rows[c]}
                for c in centers
            ]
            second = self.run(sq_stats)
            squares = dict(zip(centers, second.vectors, strict=True))
        quantiles = Quantiles(self, first, index)
        topk = TopK(self)
        for a in self.plan.aggregates:
            columns[a.name] = value(
                self, a, first, index, centers, squares, quantiles, topk, attrs_precision
            )
        return self.frame(columns, suppressed, attrs_precision)

    def frame(
        self, columns: dict[str, Any], suppressed: np.ndarray, precision: dict[str, Any]
    ) -> pd.DataFrame:
        keys = list(itertools.product(*(self.decl["domains"][c] for c in self.plan.group_by)))
        p = self.plan
        noisy = None if self.multiplier is None else self.decl["bounds"]  # formulas kept in
        data = answer_columns(p.outputs, p.aggregates, keys, columns, suppressed, p.formulas, noisy)
        for name, low in noisy_divisions(self, columns).items():  # a ratio of noise
            data[name] = np.where(low, np.nan, data[name])
        df = pd.DataFrame(data, index=pd.RangeIndex(len(keys)))
        privacy = None
        if self.multiplier is not None:
            if self.opt["secure"]:  # a masked answer carries no spent: ask the sites after
                describe = {"sql": self.plan.sql, "secure": True, "dp": {}}
                self.spent.update(self.fed.spent(describe))
            ev = _dp.event(self.opt["mechanism"], self.multiplier, self.releases)
            before = self.opt.get("spent_before", {})
            if self.repeat and any(v > before.get(n, 0.0) for n, v in self.spent.items()):
                # a site answered afresh (new noise): the repeat was not free after all
                self.opt["analyst"].record(ev)
            privacy = {
                "epsilon": Ledger().add(ev).epsilon(self.opt["delta"]),
                "delta": self.opt["delta"],
                "mechanism": self.opt["mechanism"],
                "noise_multiplier": self.multiplier,
                "releases": self.releases,
                "withholding": list(self.withholding),
                "site_spent": dict(self.spent),
                "quantile_rank_error": {
                    self.shown_names().get(n, n): r for n, r in self.rank_error.items()
                },
                "analyst_spent": None if self.opt["analyst"] is None else self.opt["analyst"].spent,
            }
        df.attrs.update(
            {
                "sites": [self.fed.names[c] for c in self.fed.cids],
                "refused": dict(self.fed.refused),
                "suppressed": [k for k, s in zip(keys, suppressed, strict=True) if s],
                "unavailable": self.not_shown(keys, suppressed),
                "min_group_size": self.decl["min_group_size"],
                "precision": precision,
                "privacy": privacy,
                "secure": self.opt["secure"],
                # Exact counts are no DP releases: the sites send none under DP.
                **(self.meta if privacy is None else dict.fromkeys(self.meta)),
            }
        )
        return df

    def shown_names(self) -> dict[str, str]:
        """``{aggregate: output column}`` of the aggregates the answer shows."""
        return {
            a.name: out.name
            for out in self.plan.outputs
            if out.kind == "aggregate"
            for a in [self.plan.aggregates[out.index]]
        }

    def not_shown(self, keys: list[tuple[Any, ...]], suppressed: np.ndarray) -> dict[str, Any]:
        """``{column: {"groups": [...], "reason": ...}}`` of the means not shown.

        A suppressed group is listed as such, not here; a mean only a formula
        reads is named by its SQL text.
        """
        shown = self.shown_names()
        found: dict[str, Any] = {}
        for name, (low, why) in self.unavailable.items():
            groups = [k for k, lo, s in zip(keys, low, suppressed, strict=True) if lo and not s]
            if groups:
                found[shown.get(name, name)] = {"groups": groups, "reason": why}
        return found


def query(
    sites_or_server: Site | Sequence[Site] | Transport,
    sql: str,
    *,
    secure: bool = True,
    epsilon: Real | None = None,
    delta: Real = 1e-6,
    mechanism: str | None = None,
    precision: Real | None = None,
    timeout: Real | None = None,
    threat: ThreatModel | None = None,
    analyst: _dp.Analyst | None = None,
) -> pd.DataFrame:
    """Answer ``sql`` over the sites' tables; only sums of the sites' answers are combined.

    Args:
        sites_or_server: A list of :class:`Site` (simulation) or a transport whose
            clients are sites (e.g. a gRPC server the sites joined).
        sql: One SELECT over one table: aggregates, WHERE, GROUP BY on declared domains.
        secure: Sum the sites' answers through secure aggregation, so no single
            site's answer is ever seen.
        epsilon: The DP budget of this query (None: no noise). Each site adds its
            share of the noise and charges its own budget.
        delta: The delta the epsilon is accounted at.
        mechanism: ``"laplace"`` (None: the default) or ``"gaussian"``; with ``epsilon`` only.
        precision: Absolute precision of quantiles (default: a millionth of the bounds' range).
        timeout: Seconds to wait for the sites at each stage (None: no limit).
        threat: A :class:`covey.secagg.ThreatModel` for secure aggregation.
        analyst: An :class:`Analyst` whose budget this query is charged to (DP only).

    Returns:
        A DataFrame of the SELECT list's columns in its order, each named by
        its alias, a group column as SELECT spells it, an aggregate by its SQL
        text (a GROUP BY column not selected comes first); a suppressed group's
        values are NaN. ``df.attrs`` holds the sites
        that answered, refusals, the suppressed groups, the means not shown and
        why (``unavailable``), the precision of approximate answers, clipped
        counts and the privacy cost.

    Raises:
        QueryError: The SQL is refused, naming the clause.
        ValueError: An option is not valid, naming it.
        PolicyError: No site answers the query (each refused it, or failed).
        FederationQueryError: Sites failed or answered inconsistently mid-query.

    Example:
        >>> import pandas as pd
        >>> from covey.analytics import Policy, Site, query
        >>> policy = Policy(bounds={"age": (0, 120)}, min_group_size=1)
        >>> sites = [Site({"p": pd.DataFrame({"age": [30.0, 40.0]})}, policy) for _ in range(2)]
        >>> query(sites, "SELECT AVG(age), COUNT(*) FROM p", secure=False).iloc[0].tolist()
        [35.0, 4.0]
    """
    epsilon, delta = plain_real(epsilon), plain_real(delta)  # NumPy numbers as Python's
    precision, timeout = plain_real(precision), plain_real(timeout)
    p = check_query(
        sql,
        secure=secure,
        epsilon=epsilon,
        mechanism=mechanism,
        delta=delta,
        precision=precision,
        analyst=analyst,
    )
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (timeout > 0 and math.isfinite(timeout))
    ):
        raise ValueError(f"timeout must be None or a positive number of seconds, got {timeout!r}")
    mechanism = "laplace" if mechanism is None else mechanism
    transport, owned = transport_for(sites_or_server)
    try:
        fed = Federation(transport, timeout, threat)
        request = {"sql": sql, "secure": secure, "dp": None if epsilon is None else {}}
        declarations = fed.describe(request)
        spent_before = {
            fed.names[c]: float(d["spent"])
            for c, d in declarations.items()
            if isinstance(d.get("spent"), int | float)
        }
        decl = merge_declarations(p, [declarations[c] for c in fed.cids])
        options = {
            "secure": secure,
            "epsilon": epsilon,
            "delta": delta,
            "mechanism": mechanism,
            "precision": precision,
            "analyst": analyst,
            "spent_before": spent_before,
        }
        return _Query(fed, p, decl, options).execute()
    finally:
        if owned:
            transport.close()


__all__: Sequence[str] = ["check_query", "query"]
