"""What a site computes in DuckDB: fixed-shape vectors of sums over its own rows.

Every statistic is a vector over the groups of a declared domain (zero for an
empty group), so its shape depends on the query alone. Numeric columns are
clipped to the site's declared bounds first, and the clipped values counted.

The SQL text is built only from names checked by :func:`quote`, numbers the
site formats itself, and a WHERE condition the site parsed and checked against
a whitelist of operators; values that come with a request (domains, centers,
bin edges) travel as query parameters.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from covey.analytics._coltext import DATETIME, instant, key, text_of
from covey.analytics._readers import clip_columns, readers_of, reads_columns, support_expr
from covey.analytics._sorted import Memo, SortedValues
from covey.analytics._sqltext import fold
from covey.analytics._tables import columns, quote, table_name
from covey.analytics._wheretext import at_instants

MAX_GROUPS = 100_000
MAX_CELLS = 20_000_000
TOPK_MAX_BYTES = 32
END = 256  # the trie's end-of-value symbol


@dataclass
class Computed:
    """A site's raw answer to one stage, before suppression and noise."""

    group_counts: np.ndarray
    vectors: list[np.ndarray]
    # per column, by the statistics reading them (their indices), the clipped values in each group
    clipped: dict[str, dict[tuple[int, ...], np.ndarray]]
    outside_domain: int
    support: list[np.ndarray]


def utf8_prefix(text: str, limit: int) -> bytes:
    """The UTF-8 bytes of ``text``, cut to at most ``limit`` on a character boundary.

    Example:
        >>> utf8_prefix("a€b", 3)
        b'a'
    """
    raw = text.encode("utf-8", errors="surrogatepass")
    if len(raw) <= limit:
        return raw
    cut = limit
    while cut > 0 and raw[cut] & 0xC0 == 0x80:  # a continuation byte: inside a character
        cut -= 1
    return raw[:cut]


def _group_index(
    group_by: Sequence[str], domains: Mapping[str, Sequence[Any]], types: Mapping[str, str]
) -> tuple[str, list[Any], int]:
    """A DuckDB expression of each row's group index (NULL outside the domain), its parameters."""
    if not group_by:
        return "0", [], 1
    kinds = {fold(c): k for c, k in types.items()}  # SQL names ignore ASCII case
    terms: list[str] = []
    params: list[Any] = []
    stride = 1
    # parameters are numbered in group_by order: the last column is $len(group_by)
    for number, col in reversed(list(enumerate(group_by, start=1))):
        kind = kinds.get(fold(col), "")
        if kind.upper() in DATETIME:  # one instant, however the site stores it
            params.insert(0, [instant(v) for v in domains[col]])
            at = f"list_position(${number}, CAST({quote(col)} AS TIMESTAMP))"
            at = f"CASE WHEN {quote(col)} IS NOT NULL THEN {at} END"  # a NULL is no None
        else:
            params.insert(0, [key(v, kind) for v in domains[col]])
            at = f"list_position(${number}, {text_of(col, kind)})"
        terms.append(f"({at} - 1) * {stride}")
        stride *= len(domains[col])
    return " + ".join(terms), params, stride


def _clip(col: str, bounds: Mapping[str, Sequence[float]]) -> str:
    low, high = (float(b) for b in bounds[col])
    # GREATEST and LEAST skip NULLs, so a NULL must stay NULL explicitly
    value = f"CAST({quote(col)} AS DOUBLE)"
    return (
        f"CASE WHEN {value} IS NULL THEN NULL ELSE LEAST(GREATEST({value}, {low!r}), {high!r}) END"
    )


def _outside(col: str, bounds: Mapping[str, Sequence[float]]) -> str:
    low, high = (float(b) for b in bounds[col])
    value = f"CAST({quote(col)} AS DOUBLE)"  # as _clip reads it (a BOOLEAN as 0 or 1)
    return f"COUNT(*) FILTER (WHERE {value} < {low!r} OR {value} > {high!r})"


class _Stage:
    """The DuckDB queries of one stage over ``base`` (a filtered view with ``__g``)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        base: str,
        params: list[Any],
        groups: int,
        bounds: Mapping[str, Sequence[float]],
        kinds: Mapping[str, str],
        memo: Memo | None = None,
    ) -> None:
        self.con, self.base, self.params, self.groups, self.bounds = (
            con,
            base,
            params,
            groups,
            bounds,
        )
        self.kinds = {fold(c): k for c, k in kinds.items()}  # SQL names ignore ASCII case
        self.memo = memo

    def text(self, col: str) -> str:
        """The column's values as text, one text per number whatever its type here."""
        return text_of(col, self.kinds.get(fold(col), ""), numbers=True)

    def rows(
        self,
        select: str,
        extra: Sequence[Any] = (),
        group: str = "__g",
        *,
        outside: bool = False,
        keep: bool = False,
    ) -> Sequence[tuple[Any, ...]]:
        """The query's rows; with ``keep``, kept in the memo for the query's later stages.

        The site's tables do not change, so the same SQL with the same parameters
        has the same rows (``keep`` is for results of a row per group).
        """
        where = "" if outside else "WHERE __g IS NOT NULL"
        sql = f"SELECT {group}, {select} FROM ({self.base}) {where} GROUP BY ALL"  # noqa: S608
        params = [*self.params, *extra]
        if not keep or self.memo is None:
            return self.con.execute(sql, params).fetchall()
        return self.memo.rows(
            repr((sql, params)), lambda: tuple(self.con.execute(sql, params).fetchall())
        )

    def simple(
        self,
        stats: Sequence[Mapping[str, Any]],
        clip_cols: Sequence[str],
        support: Sequence[str] = (),
    ) -> tuple[np.ndarray, list[np.ndarray | None], list[np.ndarray], int, np.ndarray]:
        """Counts, sums, non-null counts, min and max per group in one query.

        Returns:
            Rows per group, a vector per simple statistic (None for the others),
            clipped values of each ``clip_cols`` column in each group, rows outside the
            domain, and a column per ``support`` expression (rows per group a statistic reads).
        """
        exprs: list[str] = ["COUNT(*)"]
        slots: list[int | None] = []
        for s in stats:
            op, col = s["op"], str(s.get("col"))
            # an aggregate's own FILTER, a condition the site checked (see check_stats)
            only = "" if s.get("where") is None else f" FILTER (WHERE TRY({s['where']}))"
            if op == "count" and only:
                exprs.append(f"COUNT(*){only}")
            elif op == "count_col":
                exprs.append(f"COUNT({quote(col)}){only}")
            elif op == "sum":
                exprs.append(f"COALESCE(SUM({_clip(col, self.bounds)}){only}, 0)")
            elif op in ("min", "max"):
                exprs.append(f"{op.upper()}(CAST({quote(col)} AS DOUBLE))")
            else:
                slots.append(None)
                continue
            slots.append(len(exprs) - 1)
        first_clip = len(exprs)
        exprs += [_outside(c, self.bounds) for c in clip_cols]
        first_support = len(exprs)
        exprs += list(support)
        table = np.zeros((self.groups, len(exprs)))
        table[:, 1:] = np.nan if any(s["op"] in ("min", "max") for s in stats) else 0.0
        outside = 0
        for row in self.rows(", ".join(exprs), outside=True, keep=True):
            if row[0] is None:
                outside = int(row[1])
                continue
            table[int(row[0])] = [np.nan if v is None else float(v) for v in row[1:]]
        out: list[np.ndarray | None] = []
        for s, slot in zip(stats, slots, strict=True):
            if slot is None:
                out.append(None)
                continue
            column = table[:, slot].copy()
            if s["op"] not in ("min", "max"):  # a group no row reaches: 0, not NaN
                # but a sum past float64 stays inf, refused by the site (not the largest float)
                column = np.nan_to_num(column, nan=0.0, posinf=np.inf, neginf=-np.inf)
            out.append(column)
        clipped = [np.nan_to_num(table[:, first_clip + i]) for i in range(len(clip_cols))]
        return table[:, 0], out, clipped, outside, np.nan_to_num(table[:, first_support:])

    def clipped_by_readers(
        self, stats: Sequence[Mapping[str, Any]], clip_cols: Sequence[str]
    ) -> dict[str, dict[tuple[int, ...], np.ndarray]]:
        """The clipped values per column in each group, by the statistics that read their rows.

        A statistic reads a row only where its columns hold values (a survival
        curve both its time and its event), so the rows are told apart by which
        of the statistics' columns are NULL in them.
        """
        needed = sorted({c for s in stats for c in reads_columns(s)} | set(clip_cols))
        held = "[" + ", ".join(f"{quote(c)} IS NOT NULL" for c in needed) + "]"
        exprs = ", ".join(_outside(c, self.bounds) for c in clip_cols)
        out: dict[str, dict[tuple[int, ...], np.ndarray]] = {c: {} for c in clip_cols}
        for g, pattern, *counts in self.rows(exprs, group=f"__g, {held}"):
            present = {c for c, p in zip(needed, pattern, strict=True) if p}
            for col, n in zip(clip_cols, counts, strict=True):
                if n:
                    readers = readers_of(stats, col, present)
                    out[col].setdefault(readers, np.zeros(self.groups))[int(g)] += float(n)
        return out

    def squares(self, col: str, center: Sequence[float]) -> np.ndarray:
        out = np.zeros(self.groups)
        n = len(self.params)  # the centres follow the stage's parameters
        expr = f"COALESCE(SUM(POW({_clip(col, self.bounds)} - (${n + 1})[__g + 1], 2)), 0)"
        for g, value in self.rows(expr, [list(map(float, center))]):
            out[int(g)] = float(value)
        return out

    def bins(
        self,
        col: str,
        low: Sequence[float],
        width: Sequence[float],
        nbins: int,
        high: Sequence[float] | None = None,
    ) -> np.ndarray:
        out = np.zeros((self.groups, nbins + 2))
        n = len(self.params)
        if high is None:
            high = [float(lo) + float(w) * nbins for lo, w in zip(low, width, strict=True)]
        # the clipped value and the group's interval computed once per row
        inner = (
            f"SELECT __g, {_clip(col, self.bounds)} AS __v, (${n + 1})[__g + 1] AS __lo, "  # noqa: S608
            f"(${n + 2})[__g + 1] AS __w, (${n + 3})[__g + 1] AS __hi FROM ({self.base}) "
            f"WHERE __g IS NOT NULL AND {quote(col)} IS NOT NULL"
        )
        # floor((v - lo) / w) can miss by one on an edge ((1.2 - 1) / 0.1 < 2): put the
        # value back between the edges lo + k * w and lo + (k + 1) * w, as numpy does
        k = f"LEAST(GREATEST(CAST(FLOOR((__v - __lo) / __w) AS BIGINT), 0), {nbins - 1})"
        bucket = (
            f"CASE WHEN __v < __lo THEN 0 WHEN __v > __hi THEN {nbins + 1} "
            f"ELSE {k} + 1 - CASE WHEN __v < __lo + {k} * __w THEN 1 ELSE 0 END "
            f"+ CASE WHEN {k} < {nbins - 1} AND __v >= __lo + ({k} + 1) * __w THEN 1 ELSE 0 END "
            "END"
        )
        base, self.base = self.base, inner
        try:
            params = [list(map(float, low)), list(map(float, width)), list(map(float, high))]
            rows = self.rows("COUNT(*)", params, f"__g, {bucket}")
        finally:
            self.base = base
        for g, b, count in rows:
            out[int(g), int(b)] += float(count)
        return out

    def sorted_values(self, col: str) -> SortedValues:
        """Fetch the group index and clipped value of every row where ``col`` is not NULL."""
        sql = (
            f"SELECT __g, {_clip(col, self.bounds)} AS __v FROM ({self.base}) "  # noqa: S608
            f"WHERE __g IS NOT NULL AND {quote(col)} IS NOT NULL"
        )
        got = self.con.execute(sql, self.params).fetchnumpy()
        groups = np.asarray(got["__g"], dtype=np.int64)
        values = np.asarray(got["__v"], dtype=np.float64)
        return SortedValues(groups, values, self.groups)

    def distinct(self, col: str, m: int) -> np.ndarray:
        out = np.zeros((self.groups, m))
        bucket = f"CAST(md5_number({self.text(col)}) % {int(m)} AS BIGINT)"
        sql = f"COUNT(*) FILTER (WHERE {quote(col)} IS NOT NULL)"
        for g, b, n in self.rows(sql, group=f"__g, {bucket}"):
            if b is not None and n:
                out[int(g), int(b)] = 1.0
        return out

    def prefixes(self, col: str, prefixes: Sequence[Sequence[str]], depth: int) -> np.ndarray:
        index = [{bytes.fromhex(p): i for i, p in enumerate(ps)} for ps in prefixes]
        width = max((len(ps) for ps in prefixes), default=0)
        out = np.zeros((self.groups, width, END + 1))
        sql = "COUNT(*)"
        for g, value, n in self.rows(sql, group=f"__g, {self.text(col)}"):
            if value is None:
                continue
            raw = utf8_prefix(str(value), TOPK_MAX_BYTES)
            slot = index[int(g)].get(raw[:depth]) if len(raw) >= depth else None
            if slot is not None:
                nxt = raw[depth] if len(raw) > depth else END
                out[int(g), slot, nxt] += float(n)
        return out

    def survival(self, col: str, event: str, low: float, step: float, points: int) -> np.ndarray:
        if not (math.isfinite(low) and math.isfinite(step) and step > 0):
            # they are written into the SQL: "inf" or "nan" there would name a column
            raise ValueError(f"a survival curve needs a finite start and step, got {low}, {step}")
        out = np.zeros((self.groups, 2, points + 1))
        # the point k holds the times in (low + (k - 1) * step, low + k * step]; the
        # ceiling alone can miss by one on a point (ceil(2.1 / 0.3) is 8): put it back
        k0 = f"CAST(CEIL((__t - {low!r}) / {step!r}) AS BIGINT)"
        k = (
            f"{k0} - CASE WHEN __t <= {low!r} + ({k0} - 1) * {step!r} THEN 1 ELSE 0 END "
            f"+ CASE WHEN __t > {low!r} + {k0} * {step!r} THEN 1 ELSE 0 END"
        )
        k = f"LEAST(GREATEST({k}, 0), {points})"
        ev = f"LEAST(GREATEST(CAST({quote(event)} AS DOUBLE), 0), 1)"
        sql = f"SUM({ev}), COUNT(*)"
        where = f"{quote(col)} IS NOT NULL AND {quote(event)} IS NOT NULL"
        t = _clip(col, self.bounds)
        base, self.base = self.base, f"SELECT *, {t} AS __t FROM ({self.base}) WHERE {where}"  # noqa: S608
        try:
            for g, b, d, n in self.rows(sql, group=f"__g, {k}"):
                out[int(g), 0, int(b)] += float(d or 0)
                out[int(g), 1, int(b)] += float(n)
        finally:
            self.base = base
        return out


def _other(stage: _Stage, s: Mapping[str, Any]) -> np.ndarray:
    """The statistics that need a query of their own."""
    op, col = s["op"], str(s.get("col"))
    if op == "sq":
        return stage.squares(col, s["center"])
    if op == "bins":
        return stage.bins(col, s["low"], s["width"], int(s["bins"]), s.get("high"))
    if op == "distinct":
        return stage.distinct(col, int(s["m"]))
    if op == "prefix":
        return stage.prefixes(col, s["prefixes"], int(s["depth"]))
    if op == "km":
        return stage.survival(col, s["event"], float(s["low"]), float(s["step"]), int(s["points"]))
    raise ValueError(f"unknown statistic {op!r}")


def _whole(stat: Mapping[str, Any], key: str) -> int:
    """A statistic's count ``key``, refused unless a whole number (not 1.9, nor true as 1)."""
    value = stat.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"the {stat['op']} statistic's {key!r} must be a whole number, got {value!r}"
        )
    return value


def shape(stat: Mapping[str, Any], groups: int) -> tuple[int, ...]:
    """The shape of a statistic's vector (checked against caps before computing)."""
    op = stat["op"]
    for count in {"bins": ("bins",), "distinct": ("m",), "km": ("points",)}.get(op, ()):
        _whole(stat, count)
    if op in ("count", "count_col", "sum", "sq", "min", "max"):
        dims: tuple[int, ...] = (groups,)
    elif op == "bins":
        dims = (groups, int(stat["bins"]) + 2)
    elif op == "distinct":
        dims = (groups, int(stat["m"]))
    elif op == "prefix":
        dims = (groups, max((len(p) for p in stat["prefixes"]), default=0), END + 1)
    elif op == "km":
        dims = (groups, 2, int(stat["points"]) + 1)
    else:
        raise ValueError(f"unknown statistic {op!r}")
    if math.prod(dims) > MAX_CELLS:
        raise ValueError(f"the statistic {op} would have {math.prod(dims)} cells; cap {MAX_CELLS}")
    return dims


def check_where(con: Any, table: str, where: str, kinds: Mapping[str, str] | None = None) -> None:
    """Bind and run ``where`` on one made-up row shaped like ``table``.

    The row holds ``''`` in each text column and NULL in the others. A literal of
    another type than its column (``age = 'old'``, or ``name = 1``, which casts
    each name to a number) fails here, as it could on some row; what the table's
    rows hold cannot make this fail, so a refusal tells nothing about them.
    ``kinds`` is the table's ``{column: type}`` if known (None: DESCRIBE it).
    """
    name = table_name(table)
    kinds = columns(con, table) if kinds is None else kinds
    texts = [quote(c) for c, kind in kinds.items() if kind == "VARCHAR"]
    empties = ", ".join("'' AS " + c for c in texts)
    replace = f" REPLACE ({empties})" if texts else ""
    row = (
        f"SELECT {name}.*{replace} FROM (SELECT 1) AS __one "  # noqa: S608
        f"LEFT JOIN (SELECT * FROM {name} LIMIT 0) AS {name} ON TRUE"
    )
    con.execute(f"SELECT COUNT(*) FROM ({row}) AS {name} WHERE {where}").fetchone()  # noqa: S608


def compute(
    con: duckdb.DuckDBPyConnection,
    table: str,
    where: str | None,
    group_by: Sequence[str],
    domains: Mapping[str, Sequence[Any]],
    bounds: Mapping[str, Sequence[float]],
    stats: Sequence[Mapping[str, Any]],
    memo: Memo | dict[str, SortedValues] | None = None,
    kinds: Mapping[str, str] | None = None,
) -> Computed:
    """Compute ``stats`` over the rows of ``table`` that satisfy ``where``, per group.

    Args:
        con: The site's DuckDB connection.
        table: The table (a checked name).
        where: A DuckDB condition already checked by the site (or None); a row
            on which it fails to evaluate is left out, as one it is false on.
        group_by: Group columns; each has a domain in ``domains``.
        domains: ``{column: values}`` fixing the groups (their product, row-major).
        bounds: The site's own ``{column: (low, high)}``; values are clipped to them.
        stats: The statistics requested, each a dict with ``"op"`` (see :func:`shape`).
        memo: Where a query's sorted column is kept between its stages, so the
            bisection rounds of a quantile scan the table once (None: no memo; a
            dict is kept in a :class:`Memo`, for one thread only).
        kinds: The table's ``{column: DuckDB type}``, as the site described it
            when it loaded the table (None: DESCRIBE the table now).

    Returns:
        The count of rows per group, a vector per statistic, clipped counts per
        column in each group (told apart by the statistics reading them: a survival
        curve leaves out a row whose time or event is NULL), the number of rows
        outside the domain, and per statistic the rows of each group it reads
        (those where its columns are not NULL).
    """
    if isinstance(memo, dict):
        memo = Memo(memo)
    # an event column is read as 0 or 1 (a site's policy declares those bounds for it)
    bounds = {**{str(s["event"]): (0.0, 1.0) for s in stats if s["op"] == "km"}, **bounds}
    kinds = columns(con, table) if kinds is None else kinds
    where = at_instants(where, kinds)  # a DATE column's literals name instants
    stats = [{**s, "where": at_instants(s["where"], kinds)} if s.get("where") else s for s in stats]
    gexpr, params, groups = _group_index(group_by, domains, kinds)
    if groups > MAX_GROUPS:
        raise ValueError(f"the query has {groups} groups; the cap is {MAX_GROUPS}")
    for s in stats:
        shape(s, groups)
    # a row on which the condition fails (an overflow, a failed cast) is not kept:
    # an error would tell the analyst what that one row holds
    cond = f"WHERE TRY({where})" if where else ""
    base = f"SELECT ({gexpr}) AS __g, * FROM {table_name(table)} {cond}"  # noqa: S608
    stage = _Stage(con, base, params, groups, bounds, kinds, memo)
    clip_cols = clip_columns(stats)
    support = sorted({support_expr(s) for s in stats})
    counts, simple, per_col, outside, reads = stage.simple(stats, clip_cols, support)
    if any(s["op"] == "km" for s in stats):
        # a survival curve leaves out the rows where its time or event is NULL
        clipped = stage.clipped_by_readers(stats, clip_cols)
    else:  # every statistic clipping a column reads each of its values
        clipped = {c: {readers_of(stats, c): n} for c, n in zip(clip_cols, per_col, strict=True)}
    vectors: list[np.ndarray] = []
    memo_key = repr((table, where, tuple(group_by), sorted(domains.items())))
    for s, done in zip(stats, simple, strict=True):
        if done is not None:
            vectors.append(done)
        elif s["op"] == "count":
            vectors.append(counts.copy())
        elif s["op"] == "bins" and memo is not None:
            col = str(s["col"])
            values = memo.get(memo_key + repr(col), functools.partial(stage.sorted_values, col))
            vectors.append(values.bins(s["low"], s["width"], int(s["bins"]), s.get("high")))
        else:
            vectors.append(_other(stage, s))
    per_stat = [reads[:, support.index(support_expr(s))].copy() for s in stats]
    return Computed(counts, vectors, clipped, outside, per_stat)
