"""COUNT(1), FILTER (WHERE ...) and arithmetic over aggregates, against DuckDB on pooled data."""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from covey.analytics import Policy, PolicyError, QueryError, Site, query
from covey.analytics._sql import plan

POLICY = Policy(
    bounds={"age": (0, 120), "los": (0, 60), "cost": (0, 1000)},
    domains={"sex": ["F", "M"]},
    min_group_size=1,
    min_max=["age", "los"],
)


def _frames() -> list[pd.DataFrame]:
    rng = np.random.default_rng(11)
    out = []
    for n in (40, 25, 33):
        los = rng.integers(0, 61, n).astype(float)
        los[rng.random(n) < 0.1] = np.nan  # missing values: not counted, not summed
        out.append(
            pd.DataFrame(
                {
                    "sex": rng.choice(["F", "M"], n),
                    "age": rng.integers(20, 100, n),
                    "los": pd.array(los, dtype="Float64"),
                    "cost": rng.uniform(0, 1000, n).round(2),
                }
            )
        )
    return out


def _sites() -> list[Site]:
    return [Site({"patients": f}, POLICY, name=f"s{i}") for i, f in enumerate(_frames())]


def _pooled(sql: str) -> pd.DataFrame:
    con = duckdb.connect()
    con.register("patients", pd.concat(_frames(), ignore_index=True))
    return con.execute(sql).df()


def _same(sql: str, **kwargs: Any) -> pd.DataFrame:
    ours = query(_sites(), sql, **kwargs)
    theirs = _pooled(sql)
    if "GROUP BY" in sql:
        ours = ours.sort_values("sex", ignore_index=True)
        theirs = theirs.sort_values("sex", ignore_index=True)
    # by position: DuckDB names some columns its own way (count_star())
    assert len(ours.columns) == len(theirs.columns)
    assert len(ours) == len(theirs)
    for col, ref in zip(ours.columns, theirs.columns, strict=True):
        for a, b in zip(ours[col], theirs[ref], strict=True):
            if isinstance(a, str):
                assert a == b
            elif b is None or pd.isna(b):
                assert math.isnan(a), f"{col}: expected NULL, got {a}"
            else:
                assert a == pytest.approx(float(b), rel=1e-9, abs=1e-9), f"{col}: {a} vs {b}"
    return ours


@pytest.mark.parametrize("secure", [False, True])
def test_count_of_a_literal_is_count_star(secure: bool) -> None:
    sql = "SELECT COUNT(1), COUNT('x') AS n, count(-2.5) FROM patients"
    assert [a.func for a in plan(sql).aggregates] == ["count"] * 3
    _same(sql, secure=secure)
    _same("SELECT sex, COUNT(1) FROM patients GROUP BY sex", secure=secure)


def test_count_of_null_is_refused_naming_count_star() -> None:
    with pytest.raises(QueryError, match=r"COUNT\(NULL\).*write COUNT\(\*\)"):
        plan("SELECT COUNT(NULL) FROM patients")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) FILTER (WHERE age > 60) FROM patients",
        "SELECT COUNT(*) FILTER (WHERE age > 60), SUM(los) FILTER (WHERE age > 60), "
        "AVG(cost) FILTER (WHERE age > 60) AS c FROM patients",
        "SELECT sex, COUNT(*) FILTER (WHERE age BETWEEN 30 AND 70) FROM patients GROUP BY sex",
        "SELECT COUNT(1) FILTER (WHERE los IS NOT NULL) FROM patients WHERE sex = 'F' OR age < 40",
    ],
)
def test_filter_shared_by_every_aggregate_is_answered_as_where(sql: str) -> None:
    _same(sql, secure=False)


def test_filter_condition_gets_the_checks_of_where() -> None:
    p = plan("SELECT COUNT(*) FILTER (WHERE age > 60) FROM patients WHERE sex = 'F' OR age < 9")
    assert p.where == "(sex = 'F' OR age < 9) AND age > 60"
    assert set(p.where_columns) == {"sex", "age"}
    with pytest.raises(QueryError, match=r"ABS.* is not allowed in WHERE"):
        plan("SELECT COUNT(*) FILTER (WHERE ABS(age) > 60) FROM patients")
    with pytest.raises(QueryError, match="subqueries in WHERE"):
        plan("SELECT COUNT(*) FILTER (WHERE age IN (SELECT 1)) FROM patients")
    with pytest.raises(QueryError, match=r"MAX.* is not allowed in WHERE"):
        plan("SELECT COUNT(*) FILTER (WHERE MAX(age) > 60) FROM patients")


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT COUNT(*), MEDIAN(los) FILTER (WHERE age > 60) FROM patients", "COUNT.* has none"),
        (
            "SELECT MAX(age) FILTER (WHERE age > 60), SUM(los) FILTER (WHERE age < 30) "
            "FROM patients",
            "2 different conditions",
        ),
        (  # inside arithmetic: a formula's aggregates are over the query's rows
            "SELECT COUNT(*) FILTER (WHERE age > 60) - COUNT(*) FROM patients",
            "COUNT.* has none",
        ),
    ],
)
def test_filters_the_sites_cannot_apply_as_one_where_are_refused_naming_the_rewrite(
    sql: str, why: str
) -> None:
    with pytest.raises(QueryError, match=why) as err:
        plan(sql)
    assert "a query of their own" in str(err.value)
    assert "FROM patients WHERE age > 60" in str(err.value)


_OWN_FILTERS = [
    "SELECT COUNT(*) FILTER (WHERE sex = 'F') AS f, COUNT(*) FILTER (WHERE sex = 'M') AS m "
    "FROM patients",
    "SELECT COUNT(*), COUNT(*) FILTER (WHERE age > 60) AS old, SUM(los) FILTER (WHERE age < 40), "
    "AVG(cost) FILTER (WHERE sex = 'F' AND los IS NOT NULL) AS c, COUNT(los) FILTER "
    "(WHERE age < 50) FROM patients WHERE cost > 100",
    "SELECT sex, COUNT(*) FILTER (WHERE age > 60), AVG(los) FILTER (WHERE age < 50), "
    "COUNT(*) - COUNT(los) AS missing, COUNT(*) FILTER (WHERE age <= 60) FROM patients "
    "GROUP BY sex",
]


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("sql", _OWN_FILTERS)
def test_counts_sums_and_means_with_filters_of_their_own_equal_duckdb(
    sql: str, secure: bool
) -> None:
    # refused: FILTER was answered as the query's WHERE, so every aggregate had to share one
    _same(sql, secure=secure)


def test_a_filter_of_its_own_under_the_minimum_rows_is_not_shown() -> None:
    policy = Policy(bounds={"age": (0, 120)}, min_group_size=5)
    frame = pd.DataFrame({"age": [30, 40, 50, 61, 62, 63, 64, 65, 70, 90]})
    sites = [Site({"patients": frame}, policy, name=f"s{i}") for i in range(2)]
    sql = (
        "SELECT COUNT(*) FILTER (WHERE age > 60) AS old, COUNT(*) FILTER (WHERE age < 45) AS "
        "young, AVG(age) FILTER (WHERE age > 80) AS oldest FROM patients"
    )
    for secure in (False, True):
        df = query(sites, sql, secure=secure)
        assert df["old"].tolist() == [14.0]  # 2 and 1 rows at each site: withheld
        assert np.isnan(df["young"].iloc[0])
        assert np.isnan(df["oldest"].iloc[0])


def test_a_site_runs_only_the_filters_its_own_plan_of_the_query_holds() -> None:
    from covey.analytics._requests import check_stats

    p = plan(_OWN_FILTERS[0])
    check_stats(p, [{"op": "count"}, {"op": "count", "col": None, "where": "sex = 'F'"}])
    for forged in ("sex = 'X'", "TRUE", None):
        stat = {"op": "count_col", "col": "sex", "where": forged}
        with pytest.raises(PolicyError, match="does not ask for"):
            check_stats(p, [stat])
    with pytest.raises(PolicyError, match="does not ask for"):
        check_stats(p, [{"op": "count", "where": "age > 1"}])


def test_dp_charges_a_filter_of_its_own_as_one_more_release() -> None:
    plain = _dp("SELECT COUNT(*) FROM patients")
    both = _dp(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE sex = 'F'), COUNT(*) FILTER (WHERE sex = 'M') "
        "FROM patients"
    )
    assert (plain["releases"], both["releases"]) == (1, 3)


@pytest.mark.parametrize("secure", [False, True])
def test_arithmetic_over_aggregates_equals_duckdb(secure: bool) -> None:
    _same(
        "SELECT SUM(los)/SUM(cost), AVG(age)+1, SUM(los) - SUM(age) AS d, "
        "(COUNT(*) + COUNT(los)) / 2.0, STDDEV_SAMP(cost) / AVG(cost) AS cv, AVG(age) "
        "FROM patients",
        secure=secure,
    )
    if not secure:  # MIN and MAX are answered without secure aggregation only
        _same("SELECT -MAX(age) * 2, MAX(los) - MIN(los) FROM patients", secure=False)
    _same(
        "SELECT sex, SUM(cost) / COUNT(*) AS mean_cost, 100 * COUNT(los) / COUNT(1) "
        "FROM patients GROUP BY sex",
        secure=secure,
    )


def test_arithmetic_shares_the_aggregates_the_query_asks_for() -> None:
    p = plan('SELECT SUM(los) / SUM(cost), SUM(los), SUM(cost) / 2 AS "SUM(cost)" FROM patients')
    assert [(a.name, a.func, a.column) for a in p.aggregates] == [
        ("SUM(los)", "sum", "los"),
        ("SUM(cost) (2)", "sum", "cost"),
    ]
    assert [o.kind for o in p.outputs] == ["formula", "aggregate", "formula"]


def test_division_by_zero_is_null() -> None:
    sql = "SELECT SUM(los) / (COUNT(*) - COUNT(*)), SUM(age) / 0 FROM patients"
    df = query(_sites(), sql, secure=False)
    assert df.isna().all(axis=None)
    # DuckDB's / of floats is IEEE's (inf): NULL here, as DuckDB's TRY(x // 0) says
    assert np.isinf(_pooled(sql).to_numpy(dtype=float)).all()
    assert query(_sites(), "SELECT 0 / COUNT(*) + 1 FROM patients", secure=False).iloc[0, 0] == 1


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("SELECT AVG(age) + age FROM patients", "the column age .*compute it"),
        ("SELECT MEDIAN(age) / 2 FROM patients", "MEDIAN.* not supported in arithmetic"),
        ("SELECT AVG(age) + 'x' FROM patients", "'x'.*over aggregates and number literals"),
        ("SELECT SUM(los) % 2 FROM patients", "not supported"),
    ],
)
def test_arithmetic_the_planner_cannot_answer_is_refused_naming_the_rewrite(
    sql: str, match: str
) -> None:
    with pytest.raises(QueryError, match=match):
        plan(sql)


def test_sum_of_case_names_the_filter_and_where_forms() -> None:
    sql = "SELECT SUM(CASE WHEN sex='F' THEN 1 ELSE 0 END) FROM patients"
    with pytest.raises(QueryError, match=r"COUNT\(\*\) FILTER \(WHERE cond\).*WHERE"):
        plan(sql)


def _dp(sql: str) -> dict[str, Any]:
    df = query(_sites(), sql, secure=False, epsilon=1.0)
    return dict(df.attrs["privacy"])


def test_dp_charges_a_formula_as_its_aggregates() -> None:
    plain = _dp("SELECT SUM(los), SUM(cost) FROM patients")
    ratio = _dp("SELECT SUM(los) / SUM(cost) FROM patients")
    both = _dp("SELECT SUM(los) / SUM(cost), SUM(los), AVG(cost) + 1 FROM patients")
    for got in (ratio, both):
        for key in ("releases", "noise_multiplier", "epsilon", "site_spent"):
            assert got[key] == plain[key], key
    counted = _dp("SELECT COUNT(*) FROM patients WHERE age > 60")
    filtered = _dp("SELECT COUNT(1) FILTER (WHERE age > 60) FROM patients")
    for key in ("releases", "noise_multiplier", "epsilon", "site_spent"):
        assert filtered[key] == counted[key], key


def test_dp_formula_stays_within_what_the_bounds_allow() -> None:
    # noise can take a ratio of a noisy sum and count far past the column's bounds,
    # and a difference with a count below what the count allows; each step is kept in
    sql = (
        "SELECT SUM(los) / COUNT(los) AS mean, SUM(los) / COUNT(*) AS per_row, "
        "AVG(age) / COUNT(*) AS ratio, -COUNT(*) - 1 AS neg, AVG(age) + 1 AS shifted "
        "FROM patients GROUP BY sex"
    )
    shown = 0
    for _ in range(12):
        df = query(_sites(), sql, secure=False, epsilon=0.05)
        for col, (low, high) in {
            "mean": (0, 60),
            "per_row": (0, 60),
            "ratio": (0, math.inf),
            "neg": (-math.inf, -1),
            "shifted": (1, 121),
        }.items():
            got = df[col].dropna()
            shown += len(got)
            assert ((got >= low) & (got <= high)).all(), (col, list(got))
    assert shown > 0


def test_dp_difference_of_counts_over_a_subset_is_not_negative() -> None:
    # COUNT(*) - COUNT(los) counts the NULLs: >= 0 whatever the noise; the other way <= 0
    from covey.analytics._formula_range import within

    aggregates = plan("SELECT COUNT(*), COUNT(los), COUNT(age) FROM patients").aggregates
    star, los, age = (np.array([10.0, 3.0]), np.array([12.0, 1.0]), np.array([15.0, 0.0]))
    values = [star, los, age]
    bounds = POLICY.bounds
    nulls = ("-", ("agg", 0), ("agg", 1))
    assert list(within(nulls, values, aggregates, bounds)) == [0.0, 2.0]
    assert list(within(("-", ("agg", 1), ("agg", 0)), values, aggregates, bounds)) == [0.0, -2.0]
    assert list(within(("-", ("agg", 1), ("agg", 1)), values, aggregates, bounds)) == [0.0, 0.0]
    # COUNT(age) counts no subset of COUNT(los)'s rows: no bound is made up
    assert list(within(("-", ("agg", 1), ("agg", 2)), values, aggregates, bounds)) == [-3.0, 1.0]
    sql = (
        "SELECT COUNT(*) - COUNT(los) AS missing, COUNT(los) - COUNT(*) AS minus "
        "FROM patients GROUP BY sex"
    )
    shown = 0
    for _ in range(12):
        df = query(_sites(), sql, secure=False, epsilon=0.05)
        shown += len(df["missing"].dropna())
        assert (df["missing"].dropna() >= 0).all(), list(df["missing"])
        assert (df["minus"].dropna() <= 0).all(), list(df["minus"])
    assert shown > 0
