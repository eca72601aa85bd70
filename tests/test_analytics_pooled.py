"""Federated answers equal DuckDB on the pooled tables, on random tables and random queries."""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covey.analytics import Policy, Site, query

BOUNDS = (-50.0, 50.0)
PRECISION = 1e-6
POLICY = Policy(
    bounds={"x": BOUNDS, "y": (0, 10)},
    domains={"g": ["a", "b", "c"], "h": [0, 1]},
    min_group_size=1,
    min_max=["x", "y"],
    distinct=["x"],
)
AGGREGATES = [
    "COUNT(*)",
    "COUNT(x)",
    "SUM(x)",
    "SUM(y)",
    "AVG(x)",
    "VAR_SAMP(x)",
    "VAR_POP(y)",
    "STDDEV_SAMP(x)",
    "STDDEV_POP(x)",
    "MEDIAN(x)",
    "QUANTILE_CONT(x, 0.25)",
    "QUANTILE_DISC(x, 0.9)",
    "QUANTILE_DISC(y, 0.5)",
    "MIN(x)",
    "MAX(y)",
]
WHERES = [
    None,
    "x > {v}",
    "y BETWEEN {a} AND {b}",
    "g IN ('a', 'b')",
    "g <> 'c' AND x < {v}",
    "x IS NOT NULL OR y = {a}",
    "NOT (y >= {a})",
    "x * 2 + y <= {v}",
]


@st.composite
def tables(draw: Any) -> list[pd.DataFrame]:
    """One to three sites' tables with nullable floats, ints, and two categorical columns."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 30))
        x = draw(
            st.lists(
                st.one_of(st.none(), st.floats(BOUNDS[0], BOUNDS[1], allow_subnormal=False)),
                min_size=n,
                max_size=n,
            )
        )
        frame = pd.DataFrame(
            {
                "g": draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n)),
                "h": draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)),
                "x": pd.array(x, dtype="Float64"),
                "y": draw(st.lists(st.integers(0, 10), min_size=n, max_size=n)),
            }
        )
        # g as text even with no rows: pandas types an empty list as float64, and a
        # site's empty table of a float g would refuse the string literals of IN
        out.append(frame.astype({"g": "object", "h": "int64", "y": "int64"}))
    return out


@st.composite
def queries(draw: Any) -> str:
    """A random supported query: aggregates, an optional WHERE, an optional GROUP BY."""
    aggs = draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=5, unique=True))
    group = draw(st.sampled_from([[], ["g"], ["h"], ["g", "h"]]))
    where = draw(st.sampled_from(WHERES))
    sql = f"SELECT {', '.join([*group, *aggs])} FROM t"  # noqa: S608
    if where is not None:
        a = draw(st.integers(0, 10))
        sql += " WHERE " + where.format(v=draw(st.integers(-40, 40)), a=a, b=a + 3)
    if group:
        sql += " GROUP BY " + ", ".join(group)
    return sql


def _close(name: str, ours: float, theirs: Any) -> None:
    if theirs is None or (isinstance(theirs, float) and math.isnan(theirs)):
        assert math.isnan(ours), f"{name}: expected NULL, got {ours}"
        return
    theirs = float(theirs)
    if name == "COUNT(x)" and theirs == 0:
        # no value in the group: under the minimum (1), like an empty group
        assert math.isnan(ours), f"{name}: expected NaN for no values, got {ours}"
    elif name.startswith(("COUNT", "SUM(y)")):
        assert ours == theirs, f"{name}: {ours} != {theirs}"
    elif name.startswith(("MEDIAN", "QUANTILE")):
        assert abs(ours - theirs) <= PRECISION, f"{name}: {ours} vs {theirs}"
    elif name.startswith(("VAR", "STDDEV")):
        scale = 1e-9 * (1.0 + abs(theirs)) if "STDDEV" in name else 1e-9 * (1 + abs(theirs))
        assert abs(ours - theirs) <= max(scale, 1e-9 * 100.0), f"{name}: {ours} vs {theirs}"
    else:
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-9), f"{name}: {ours} vs {theirs}"


def _rows(con: duckdb.DuckDBPyConnection, sql: str, keys: list[str], key: tuple[Any, ...]) -> int:
    where = sql.split(" WHERE ", 1)[1].split(" GROUP BY ")[0] if " WHERE " in sql else "TRUE"
    for k, v in zip(keys, key, strict=True):
        where += f" AND {k} = " + (f"'{v}'" if isinstance(v, str) else str(int(v)))
    found = con.execute(f"SELECT COUNT(*) FROM t WHERE {where}").fetchone()  # noqa: S608
    assert found is not None
    return int(found[0])


def check_against_duckdb(frames: list[pd.DataFrame], sql: str, **kwargs: Any) -> pd.DataFrame:
    """Run ``sql`` federated and on the pooled tables; assert the answers agree."""
    sites = [Site({"t": f}, POLICY, name=f"s{i}") for i, f in enumerate(frames)]
    ours = query(sites, sql, precision=PRECISION, **kwargs)
    con = duckdb.connect()
    con.register("t", pd.concat(frames, ignore_index=True))
    theirs = con.execute(sql).df()
    keys = [c for c in ("g", "h") if c in ours.columns]
    aggs = [c for c in ours.columns if c not in keys]
    assert list(ours.columns) == [*keys, *aggs]
    assert len(aggs) == len(theirs.columns) - len(keys)
    theirs.columns = [*keys, *aggs]
    expected = {tuple(r[k] for k in keys): r for _, r in theirs.iterrows()}
    for _, row in ours.iterrows():
        key = tuple(row[k] for k in keys)
        if key not in expected:
            # no pooled row for this group: empty, so it is suppressed
            assert all(pd.isna(row[a]) for a in aggs), f"group {key} should be empty: {row}"
            continue
        ref = expected.pop(key)
        if all(pd.isna(row[a]) for a in aggs) and _rows(con, sql, keys, key) == 0:
            continue  # a group with no rows after WHERE: suppressed (under the minimum size)
        for a in aggs:
            _close(a, float(row[a]), None if pd.isna(ref[a]) else ref[a])
    if keys:
        assert not expected, f"groups missing from the federated answer: {list(expected)}"
    return ours


@pytest.mark.slow
@settings(max_examples=30)
@given(frames=tables(), sql=queries())
def test_any_supported_query_equals_duckdb_on_the_pooled_tables(
    frames: list[pd.DataFrame], sql: str
) -> None:
    if sum(len(f) for f in frames) == 0 and "GROUP BY" not in sql:
        return  # DuckDB's single row over no rows is compared in the next test
    check_against_duckdb(frames, sql, secure=False)


def test_no_rows_at_all_is_an_empty_group() -> None:
    empty = pd.DataFrame({"g": ["a"], "h": [0], "x": [1.0], "y": [1]}).iloc[:0]
    df = query([Site({"t": empty}, POLICY)], "SELECT COUNT(*), AVG(x) FROM t", secure=False)
    assert df.attrs["suppressed"] == [()]
    assert df.isna().all(axis=None)


@pytest.mark.slow
@settings(max_examples=6)
@given(frames=tables(), sql=queries())
def test_secure_aggregation_gives_the_same_answers(frames: list[pd.DataFrame], sql: str) -> None:
    if len(frames) < 2 or "MIN" in sql or "MAX" in sql:
        return
    secure = query([Site({"t": f}, POLICY) for f in frames], sql, secure=True, precision=PRECISION)
    plain = query([Site({"t": f}, POLICY) for f in frames], sql, secure=False, precision=PRECISION)
    for col in secure.columns:
        a, b = secure[col].to_numpy(), plain[col].to_numpy()
        if col.startswith("COUNT") or col in ("g", "h"):
            assert (pd.isna(a) == pd.isna(b)).all()
            assert (a[~pd.isna(a)] == b[~pd.isna(b)]).all()
        else:
            np.testing.assert_allclose(
                a.astype(float), b.astype(float), rtol=1e-6, atol=1e-6, equal_nan=True
            )


def test_histogram_approximate_distinct_and_top_k_against_duckdb() -> None:
    rng = np.random.default_rng(3)
    frames = [
        pd.DataFrame(
            {
                "g": rng.choice(list("abc"), n),
                "h": rng.integers(0, 2, n),
                "x": rng.uniform(-50, 50, n).round(2),
                "y": rng.integers(0, 11, n),
                "word": rng.choice(
                    ["alpha", "beta", "gamma", "délta", "al"], n, p=[0.4, 0.3, 0.2, 0.07, 0.03]
                ),
            }
        )
        for n in (300, 500, 700)
    ]
    sql = (
        "SELECT g, HISTOGRAM(x, -50, 50, 10), APPROX_COUNT_DISTINCT(x), APPROX_TOP_K(word, 3) "
        "FROM t GROUP BY g"
    )
    policy = Policy(
        bounds={"x": BOUNDS}, domains={"g": ["a", "b", "c"]}, min_group_size=5, distinct=["x"]
    )
    df = query([Site({"t": f}, policy) for f in frames], sql, secure=False)
    con = duckdb.connect()
    con.register("t", pd.concat(frames, ignore_index=True))
    for _, row in df.iterrows():
        g = row["g"]
        bins = con.execute(
            "SELECT LEAST(CAST(FLOOR((x + 50) / 10) AS INT), 9) AS b, COUNT(*) FROM t "
            "WHERE g = ? GROUP BY b ORDER BY b",
            [g],
        ).fetchall()
        expected = np.zeros(10)
        for b, n in bins:
            expected[b] = n
        expected[expected < 5] = np.nan  # bins under the minimum group size are not shown
        np.testing.assert_array_equal(row["HISTOGRAM(x, -50, 50, 10)"], expected)
        distinct = con.execute("SELECT COUNT(DISTINCT x) FROM t WHERE g = ?", [g]).fetchone()
        assert distinct is not None
        rel = df.attrs["precision"]["APPROX_COUNT_DISTINCT(x)"][["a", "b", "c"].index(g)]
        assert abs(row["APPROX_COUNT_DISTINCT(x)"] - distinct[0]) <= 4 * rel * distinct[0] + 1
        top = con.execute(
            "SELECT word, COUNT(*) AS n FROM t WHERE g = ? GROUP BY word HAVING n >= 5 "
            "ORDER BY n DESC, word LIMIT 3",
            [g],
        ).fetchall()
        assert row["APPROX_TOP_K(word, 3)"] == [w for w, _ in top]


def test_kaplan_meier_equals_the_product_limit_estimate_on_the_pooled_data() -> None:
    rng = np.random.default_rng(5)
    frames = [
        pd.DataFrame({"time": rng.integers(1, 30, n), "event": rng.integers(0, 2, n)})
        for n in (80, 120, 200)
    ]
    policy = Policy(bounds={"time": (0, 30), "event": (0, 1)}, min_group_size=1)
    df = query(
        [Site({"t": f}, policy) for f in frames],
        "SELECT KAPLAN_MEIER(time, event, 1) AS km FROM t",
        secure=True,
    )
    curve = df["km"].iloc[0]
    pooled = pd.concat(frames)
    times = df.attrs["precision"]["km"]["times"]
    survival = 1.0
    for t, s in zip(times, curve, strict=True):
        at_risk = (pooled["time"] >= t).sum()
        events = ((pooled["time"] == t) & (pooled["event"] == 1)).sum()
        if at_risk:
            survival *= 1 - events / at_risk
        assert s == pytest.approx(survival, rel=1e-12)


def test_bins_from_the_sorted_memo_equal_the_sql_bins() -> None:
    from covey.analytics._compute import compute
    from covey.analytics._tables import load_tables

    rng = np.random.default_rng(8)
    frame = pd.DataFrame(
        {"g": rng.choice(list("abc"), 2000), "x": rng.uniform(-50, 50, 2000).round(1)}
    )
    frame.loc[::17, "x"] = np.nan
    con = load_tables({"t": frame})
    for _ in range(5):
        low = rng.uniform(-60, 0, 3).tolist()
        width = rng.uniform(0.01, 10, 3).tolist()
        stat = {"op": "bins", "col": "x", "low": low, "width": width, "bins": 16}
        args = (con, "t", "x > -45", ["g"], {"g": ["a", "b", "c"]}, {"x": BOUNDS}, [stat])
        memo: dict[str, Any] = {}
        np.testing.assert_array_equal(compute(*args).vectors[0], compute(*args, memo).vectors[0])
        assert memo


def test_kaplan_meier_shows_no_drop_behind_fewer_records_than_the_minimum() -> None:
    # one record per time point: a step of 1 would place each record in time
    frame = pd.DataFrame({"time": np.arange(25.0), "event": np.ones(25)})
    policy = Policy(bounds={"time": (0, 30), "event": (0, 1)}, min_group_size=5)
    df = query(
        [Site({"t": frame}, policy)],
        "SELECT KAPLAN_MEIER(time, event, 1) AS km FROM t",
        secure=False,
    )
    curve = np.array(df["km"].iloc[0])
    shown = np.flatnonzero(~np.isnan(curve))
    # each shown point merges the 5 records that left since the one before (a life table)
    np.testing.assert_array_equal(shown, [4, 9, 14, 19, 24])
    np.testing.assert_allclose(curve[shown], [0.8, 0.6, 0.4, 0.2, 0.0], atol=1e-12)


def test_a_quantile_among_the_extreme_records_is_withheld_like_max() -> None:
    rng = np.random.default_rng(8)
    frame = pd.DataFrame({"age": np.r_[rng.uniform(20, 60, 45), 97.123456]})  # 46 records
    policy = Policy(bounds={"age": (0, 110)}, min_group_size=10)
    sites = [Site({"p": frame.iloc[:20]}, policy), Site({"p": frame.iloc[20:]}, policy)]
    sql = (
        "SELECT QUANTILE_DISC(age, 1.0) AS top, QUANTILE_CONT(age, 0) AS bottom, "
        "QUANTILE_DISC(age, 0.9) AS p90, MEDIAN(age) AS mid FROM p"
    )
    row = query(sites, sql).iloc[0]
    # ranks 45, 0 and 41 have fewer than 10 records at or above (below) them
    assert np.isnan(row["top"])
    assert np.isnan(row["bottom"])
    assert np.isnan(row["p90"])
    assert row["mid"] == pytest.approx(frame["age"].median(), abs=1e-3)


@pytest.mark.parametrize("groups", [3, 70_000])
def test_the_sorted_memo_sorts_each_group_as_lexsort_does(groups: int) -> None:
    from covey.analytics._sorted import SortedValues

    rng = np.random.default_rng(groups)
    g = rng.integers(0, groups, 200_000)
    values = rng.choice([-0.0, 0.0, 1.5, -2.25, 1e300, -1e300], g.size)
    values[::7] = rng.normal(0, 10, values[::7].size).round(1)
    order = np.lexsort((values, g))
    kept = SortedValues(g, values, groups)
    np.testing.assert_array_equal(kept.values, values[order])
    np.testing.assert_array_equal(kept.offsets, np.searchsorted(g[order], np.arange(groups + 1)))
    low, width = np.full(groups, -3.0), np.full(groups, 0.5)
    counts = kept.bins(low.tolist(), width.tolist(), 8)
    assert counts.sum() == g.size


class _Counting:
    """A DuckDB connection that counts the queries run on it."""

    def __init__(self, con: Any) -> None:
        self.con, self.sql = con, list[str]()

    def execute(self, sql: str, params: Any = None) -> Any:
        self.sql.append(sql)
        return self.con.execute(sql, params)


def test_the_memo_keeps_a_stage_s_counts_for_that_query_alone() -> None:
    from covey.analytics._compute import Computed, compute
    from covey.analytics._sorted import Memo
    from covey.analytics._tables import load_tables

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"g": rng.choice(list("abc"), 500), "x": rng.uniform(-50, 50, 500)})
    frame.loc[::9, "x"] = np.nan
    con: Any = _Counting(load_tables({"t": frame}))
    memo = Memo()
    bins = {"op": "bins", "col": "x", "low": [-50.0] * 2, "width": [10.0] * 2, "bins": 10}
    stats = [{"op": "count"}, {"op": "count_col", "col": "x"}, bins]

    def run(where: str | None, domain: list[str], stats: Any, memo: Memo | None) -> Computed:
        return compute(con, "t", where, ["g"], {"g": domain}, {"x": (-20, 20)}, stats, memo)

    for where in ("x > 0", "x > 10", None):
        for domain in (["a", "b"], ["c", "a"]):
            fresh = run(where, domain, stats, None)
            for _ in range(2):  # the second time from the memo
                kept = run(where, domain, stats, memo)
                np.testing.assert_array_equal(kept.group_counts, fresh.group_counts)
                assert kept.outside_domain == fresh.outside_domain
                for got, want in zip(kept.vectors, fresh.vectors, strict=True):
                    np.testing.assert_array_equal(got, want)
                for got, want in zip(kept.support, fresh.support, strict=True):
                    np.testing.assert_array_equal(got, want)
                assert kept.clipped.keys() == fresh.clipped.keys()
                for col, parts in fresh.clipped.items():
                    for readers, n in parts.items():
                        np.testing.assert_array_equal(kept.clipped[col][readers], n)
    # a later stage of one query counts from the memo: no query scans the table again
    run("x > 5", ["a", "b"], [bins], memo)
    before = len(con.sql)
    run("x > 5", ["a", "b"], [bins], memo)
    assert not [q for q in con.sql[before:] if "GROUP BY" in q or "__v" in q]
