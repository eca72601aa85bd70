"""A site: a covey client that answers analytics queries over its own tables.

The site parses every query itself, checks it against its :class:`Policy`,
computes its part in DuckDB, withholds groups smaller than its minimum, adds
its share of DP noise (charged to its own budget) and answers with vectors
of sums. A repeated request is answered from a cache and charged once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np

from covey.analytics import _budget_fit, _dp
from covey.analytics._compute import Computed, check_where, compute
from covey.analytics._fixedpoint import encode, flatten, sensitivity
from covey.analytics._ledger_file import load_budget, save_budget
from covey.analytics._overflow import refuse_overflow
from covey.analytics._policy import Policy, PolicyError
from covey.analytics._requests import check_stats
from covey.analytics._sorted import Memo
from covey.analytics._sql import Plan, plan
from covey.analytics._sqltext import QueryError, fold
from covey.analytics._tables import open_tables
from covey.analytics._wheretext import refuse_text_orders
from covey.analytics._withholding import noise_request, noise_suffices, withhold
from covey.clients import Client
from covey.clients._client import register_builtin
from covey.core import Task
from covey.secagg._handlers import register_builtin_input

logger = logging.getLogger("covey.analytics")

_T = TypeVar("_T")

TASK_KIND = "analyze"
"""The task kind of an analytics query: a site answers it with :class:`Site`."""
SECURE_INPUT = "covey.analytics.answer"
MAX_CACHE = 256


_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT")
# a BOOLEAN reads as 0 or 1 (SUM counts the trues, AVG is their share)
_NUMBER_TYPES = (*_INTEGERS, *("U" + t for t in _INTEGERS), "FLOAT", "DOUBLE", "DECIMAL", "REAL")
_NUMBER_TYPES += ("BOOLEAN",)


def _check_numeric(p: Plan, types: Mapping[str, str]) -> None:
    """Refuse an aggregate whose column at this site is not a number (say, text)."""
    for a in p.aggregates:
        cols = [] if a.func in ("count", "count_col", "approx_distinct", "top_k") else [a.column]
        if a.func == "kaplan_meier":
            cols.append(str(a.args[0]))
        for col in cols:
            kind = types.get(str(col), "")
            if not kind.upper().startswith(_NUMBER_TYPES):
                raise PolicyError(
                    f"{a.name} needs numbers, but column {col!r} at this site holds {kind}"
                )


def _checked_stats(
    p: Plan, request: Mapping[str, Any], domains: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The request's statistics, refused unless the SQL needs them and its groups have domains."""
    for col in p.group_by:
        if col not in domains:
            raise PolicyError(f"the request gives no domain for GROUP BY {col}")
    check_stats(p, request.get("stats"))
    stats: list[dict[str, Any]] = list(request["stats"])
    for s in stats:
        for read in (s.get("col"), s.get("event")):
            if read is not None and read not in p.columns():
                raise PolicyError(f"a statistic reads {read!r}, which the query does not name")
    return stats


def _texts(kinds: Mapping[str, str], cols: Sequence[str]) -> str:
    """Which of ``cols`` hold text at a site (a CSV's numbers it could not read: ``1 234``)."""
    texts = sorted(
        {k for k, kind in kinds.items() if kind == "VARCHAR" and fold(k) in map(fold, cols)}
    )
    if not texts:
        return ""
    verb = "holds" if len(texts) == 1 else "hold"
    return f" (at this site, {', '.join(repr(c) for c in texts)} {verb} text)"


class Site(Client):
    """A site that answers SQL analytics over its own tables, under its own policy.

    Args:
        tables: ``{name: source}``; a source is a pandas DataFrame, a path to a
            ``.parquet`` or ``.csv`` file (:class:`CSV` to give a CSV's options), or
            ``"sqlite:///path/to.db"`` (the table of the same name in that database).
        policy: What the site answers; without one it answers nothing.
        name: How the site calls itself in answers.
        ledger: A JSON file where the site keeps its DP budget (None: in memory
            only). Read when the site starts, rewritten after every charge before
            the answer leaves, so a restarted site goes on from what it spent.

    Example:
        >>> import pandas as pd
        >>> site = Site({"t": pd.DataFrame({"x": [1.0, 2.0]})}, Policy(min_group_size=1))
        >>> site.properties()["analytics"]
        True
    """

    def __init__(
        self,
        tables: Mapping[str, Any],
        policy: Policy | None = None,
        *,
        name: str = "site",
        ledger: str | Path | None = None,
    ) -> None:
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"policy must be a covey.analytics.Policy, got {type(policy).__name__}")
        self.name = name
        self.policy = policy
        if policy is not None and policy.max_epsilon is not None and policy.epsilon is None:
            logger.warning(
                "site %r: its policy sets max_epsilon=%g but no epsilon budget, so it answers "
                "any number of DP queries without withholding small groups; a server that "
                "repeats one averages its noise away: set epsilon, a total budget, too",
                name,
                policy.max_epsilon,
            )
        # described once, as loaded: the tables never change afterwards
        try:
            named = [*(policy.columns or ()), *policy.bounds, *policy.domains] if policy else []
            bounded, ranked = (policy.bounds, policy.min_max) if policy else ((), ())
            self._con, self._columns = open_tables(tables, bounded, named, ranked)
        except ValueError as exc:  # a table refused, named with its site among many
            raise ValueError(f"site {name!r}: {exc}") from None
        self._tables = set(tables)
        self.ledger_file = None if ledger is None else Path(ledger)
        limit, delta = (policy.epsilon, policy.delta) if policy else (None, 1e-6)
        if self.ledger_file is None:
            self.budget = _dp.Budget(limit, delta, owner="the site")
        else:
            self.budget = load_budget(self.ledger_file, limit, delta)
            save_budget(self.budget, self.ledger_file)  # a folder it cannot write fails now
        self._cache: dict[str, dict[str, Any]] = {}
        self._sorted = Memo()
        self._lock = threading.Lock()
        self._charging = threading.Lock()
        self._rng = np.random.default_rng(secrets.randbits(128))

    def properties(self) -> dict[str, Any]:
        """Marks this client as an analytics site."""
        return {"analytics": True}

    @property
    def epsilon_spent(self) -> float:
        """The DP budget this site has spent (its :attr:`budget`'s ledger's epsilon)."""
        return self.budget.spent

    def _check(self, request: Mapping[str, Any]) -> tuple[Policy, Any]:
        if self.policy is None:
            raise PolicyError("this site has no policy, so it answers nothing")
        p = plan(str(request["sql"]))
        # names as DuckDB reads them (ASCII case ignored): the policy's and the tables'
        policy = self.policy.spelled_as(p)
        # the policy first: what it does not open is refused alike, whether the
        # site has it or not, so a refusal does not tell which columns exist
        dp = request.get("dp")
        policy.check(p, secure=bool(request.get("secure")), dp=dp is not None)
        table = next((t for t in self._tables if fold(t) == fold(p.table)), None)
        if table is None:
            raise PolicyError(f"this site has no table {p.table!r}")
        known = {fold(c): kind for c, kind in self._columns[table].items()}
        for col in sorted(p.columns()):
            if fold(col) not in known:
                raise PolicyError(f"table {p.table!r} has no column {col!r} at this site")
        _check_numeric(p, {col: known[fold(col)] for col in p.columns()})
        return policy, p

    def describe(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Check a query and declare what the server needs to plan it (bounds, domains).

        A WHERE this site's DuckDB cannot run on its table (a literal of another
        type than the column here) is refused now, as a column of the wrong type
        in SELECT is, rather than failing the query's first stage for every site.

        Args:
            request: The server's request: the query's ``"sql"``, whether it is
                ``"secure"``, its ``"dp"`` settings, and the ``"first"`` release and
                ``"releases"`` the site checks against its budget.

        Raises:
            PolicyError: if the site does not answer the query (the reason in it).
        """
        policy, p = self._check(request)
        if p.conditions():  # the WHERE, and each aggregate's own FILTER
            kinds = self._kinds(p)

            def check(con: Any) -> None:
                refuse_text_orders(p.number_orders, kinds)
                for cond in p.conditions():
                    check_where(con, p.table, cond, kinds)

            self._duckdb(check, p)
        reply = {"site": self.name, **policy.describe(), "spent": self.budget.spent}
        first = request.get("first")
        if isinstance(first, Mapping):  # would the whole query fit in the budget?
            releases = request.get("releases")
            self._check_budget(first, releases)
            dp = first.get("dp")
            if isinstance(dp, Mapping):  # and will the site withhold its small groups?
                reply["withholds"] = not noise_suffices(policy, {**dp, "releases": releases}, 1)
        return reply

    def _check_budget(self, first: Mapping[str, Any], releases: Any) -> None:
        """Refuse a DP query whose planned releases would pass the budget, charging nothing.

        Asked before the first stage, so that a query one site cannot afford stops
        before the others spend on it. A repeat (its first stage in the cache) costs
        nothing and passes.
        """
        dp = first.get("dp")
        if (
            not isinstance(dp, Mapping)
            or self._key(first, bool(first.get("secure"))) in self._cache
        ):
            return
        mechanism, multiplier, _ = noise_request(dp)
        if isinstance(releases, bool) or not isinstance(releases, int) or releases < 1:
            raise PolicyError(f"bad noise request: {releases!r} releases")
        self.budget.check(_dp.event(mechanism, multiplier, releases))

    def _key(self, request: Mapping[str, Any], masked: bool) -> str:
        """The cache key of a stage's request (an answer seen on its own has all the noise)."""
        request = {**request, "op": "answer"}
        if not masked and request.get("dp"):
            request = {**request, "dp": {**request["dp"], "shares": 1}}
        return hashlib.sha256(
            json.dumps([request, masked], sort_keys=True, default=str).encode()
        ).hexdigest()

    def answer(self, request: Mapping[str, Any], *, masked: bool = False) -> dict[str, Any]:
        """Answer one stage of a query: vectors of sums, suppressed and noised per policy.

        Args:
            request: The stage's request from the server.
            masked: Whether the answer goes through secure aggregation, so that only
                the sum over the sites is seen. An answer seen on its own carries the
                full noise, whatever share of it the request asks for.

        Returns:
            The answer: ``site`` (this site's name), ``vectors`` (the encoded sums),
            ``clipped``, ``outside_domain`` and ``withheld_groups`` (what the policy
            changed), ``spent`` (this site's budget spent so far) and ``cached``
            (whether the same request was answered before, at no new cost).

        Raises:
            PolicyError: if the request asks for what the site's policy refuses.
            QueryError: if the query cannot be answered over this site's rows.
        """
        policy, p = self._check(request)
        if not isinstance(request.get("dp"), Mapping | None):
            raise PolicyError(f"bad noise request: {str(request.get('dp'))[:60]}")
        if not isinstance(request.get("domains", {}), Mapping):
            raise PolicyError("a request's domains must be a mapping {column: [values]}")
        if not masked and request.get("dp"):
            noise_request(request["dp"])  # a bad share count is refused here too, not ignored
            request = {**request, "dp": {**request["dp"], "shares": 1}}
        key = self._key(request, masked)
        with self._lock:
            if key in self._cache:
                return {**self._cache[key], "cached": True}
        domains = request.get("domains", {})
        stats = _checked_stats(p, request, domains)
        bounds = {c: tuple(b) for c, b in policy.bounds.items()}
        dp = request.get("dp")
        skip = noise_suffices(policy, dp, len(stats))  # checks the noise request first
        if dp is not None:  # before any row is read: a bad request is refused as such
            self._check_sensitivities(dp, stats, bounds)
        try:
            got = self._compute(p, domains, bounds, stats)
        except QueryError:
            if dp is not None:  # the rows were read: a refusal costs what an answer would
                self._charge(dp, stats, bounds)
            raise
        vectors, clipped, outside, withheld = withhold(got, stats, policy, dp, skip)
        spent = self.budget.spent
        if dp is not None:
            spent = self._charge(dp, stats, bounds)
            self._add_noise(dp, stats, vectors)
        # under DP already charged: whether a sum overflows depends on the rows
        refuse_overflow(p, stats, vectors, "over this site's rows")
        answer = {
            "site": self.name,
            "vectors": encode(request, stats, vectors),
            "clipped": clipped,
            "outside_domain": outside,
            "withheld_groups": withheld,
            "spent": spent,
        }
        with self._lock:
            if len(self._cache) >= MAX_CACHE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = answer
        return {**answer, "cached": False}

    def _compute(
        self,
        p: Plan,
        domains: Mapping[str, Any],
        bounds: Mapping[str, Sequence[float]],
        stats: Sequence[Mapping[str, Any]],
    ) -> Computed:
        """Run ``compute``; a DuckDB error becomes a refusal that quotes no row.

        Each call runs on a cursor of its own (a connection to the same in-memory
        database), as DuckDB asks of threads sharing a database: queries answered
        at once (a federation's stages in threads, two analysts' queries) then
        neither fail nor read each other's results.
        """
        kinds = self._kinds(p)

        def run(con: Any) -> Computed:
            refuse_text_orders(p.number_orders, kinds)
            for cond in p.conditions():  # types first, on no row (see check_where)
                check_where(con, p.table, cond, kinds)
            return compute(
                con, p.table, p.where, p.group_by, domains, bounds, stats, self._sorted, kinds
            )

        return self._duckdb(run, p)

    def _kinds(self, p: Plan) -> dict[str, str]:
        """``{column: DuckDB type}`` of the table ``p`` queries, as described when loaded."""
        return next(kinds for t, kinds in self._columns.items() if fold(t) == fold(p.table))

    def _duckdb(self, run: Callable[[Any], _T], p: Plan) -> _T:
        """``run(cursor)`` on a cursor of its own; a DuckDB error: a refusal that quotes no row."""
        try:
            with self._con.cursor() as con:
                return run(con)
        except duckdb.Error as exc:
            # DuckDB's message may quote a row's value (a failed cast): name only its kind
            kind = type(exc).__name__.removesuffix("Exception") or "Error"
            # a literal of another type than its column fails to convert or to bind
            hint = ""
            if p.where is not None and kind in ("Conversion", "Binder"):
                hint = (
                    f": check that the literals in WHERE {p.where} have the types of their columns"
                    f"{_texts(self._kinds(p), p.where_columns)}"
                )
            elif p.where is not None and kind == "OutOfRange":  # on literals: rows never fail
                hint = f": arithmetic on the literals in WHERE {p.where} overflows their type"
            raise QueryError(
                f"this site could not run the query ({kind} error in DuckDB){hint}"
            ) from None

    def _charge(
        self,
        dp: Mapping[str, Any],
        stats: Sequence[Mapping[str, Any]],
        bounds: Mapping[str, Sequence[float]],
    ) -> float:
        """Check the noise request's sensitivities and charge its releases; the epsilon spent."""
        mechanism, multiplier, _ = self._check_sensitivities(dp, stats, bounds)
        with self._charging:  # the file follows the ledger, one charge at a time
            spent = self.budget.charge(_dp.event(mechanism, multiplier, len(stats)))
            if self.ledger_file is not None:
                save_budget(self.budget, self.ledger_file)
        return spent

    @staticmethod
    def _check_sensitivities(
        dp: Mapping[str, Any],
        stats: Sequence[Mapping[str, Any]],
        bounds: Mapping[str, Sequence[float]],
    ) -> tuple[str, float, int]:
        """Refuse a noise request releasing nothing, or one whose sensitivities are too small.

        Returns:
            The request's mechanism, multiplier and shares (see ``noise_request``).
        """
        mechanism, multiplier, shares = noise_request(dp)
        if not stats:
            raise PolicyError("bad noise request: it releases no statistic")
        for s in stats:
            mine = sensitivity(s, bounds, mechanism)
            given = s.get("sensitivity", -1.0)
            if isinstance(given, bool) or not isinstance(given, int | float | str):
                raise PolicyError(f"bad noise request: sensitivity {given!r} for {s['op']}")
            try:
                declared = float(given)
            except (ValueError, OverflowError):
                raise PolicyError(
                    f"bad noise request: sensitivity {str(given)[:60]!r} for {s['op']}"
                ) from None
            if not math.isfinite(declared):
                raise PolicyError(f"bad noise request: sensitivity {declared} for {s['op']}")
            if declared < mine * (1 - 1e-12):
                raise PolicyError(
                    f"the noise for {s['op']} assumes sensitivity {declared}, below this "
                    f"site's {mine}"
                )
        return mechanism, multiplier, shares

    def _add_noise(
        self, dp: Mapping[str, Any], stats: Sequence[Mapping[str, Any]], vectors: list[np.ndarray]
    ) -> None:
        mechanism, multiplier, shares = noise_request(dp)
        for s, v in zip(stats, vectors, strict=True):
            scale = multiplier * float(s["sensitivity"])
            if not math.isfinite(scale):  # Gamma draws of scale inf: inf - inf is NaN
                raise PolicyError(f"bad noise request: the noise scale of {s['op']} overflows")
            with np.errstate(over="ignore", invalid="ignore"):  # past float64: refused after
                v += _dp.noise_share(mechanism, scale, shares, v.size, self._rng).reshape(v.shape)


def _analyze(client: Any, task: Task) -> dict[str, Any]:
    if not isinstance(client, Site):
        raise TypeError(f"{type(client).__name__} is not a covey.analytics.Site")
    request = task.payload
    if not isinstance(request, Mapping) or request.get("op") not in ("describe", "answer"):
        raise ValueError("an analyze task carries {'op': 'describe' | 'answer', ...}")
    try:
        if request["op"] == "describe":
            return client.describe(request)
        return client.answer(request)
    except (PolicyError, QueryError, PermissionError) as exc:
        return {"site": client.name, **_budget_fit.refusal(exc)}


def _secure_input(client: Any, task: Any, payload: Any) -> np.ndarray:
    if not isinstance(client, Site):
        raise TypeError(f"{type(client).__name__} is not a covey.analytics.Site")
    if not isinstance(payload, Mapping) or not payload.get("secure"):
        raise ValueError("a secure analytics input needs a secure answer request")
    answer = client.answer(payload, masked=True)
    return flatten(answer, payload["stats"])


register_builtin(TASK_KIND, _analyze)
register_builtin_input(SECURE_INPUT, _secure_input)
