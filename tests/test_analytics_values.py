"""Values of every kind a site's table may hold, against DuckDB on the pooled rows."""

from __future__ import annotations

import decimal
import sqlite3
from contextlib import closing
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from covey.analytics import Policy, QueryError, Site, query


def _pooled(frames: list[pd.DataFrame], sql: str) -> pd.DataFrame:
    con = duckdb.connect()
    con.register("t", pd.concat(frames, ignore_index=True))
    return con.execute(sql).df()


def test_a_numeric_group_column_stored_as_float_or_decimal_matches_its_integer_domain(
    tmp_path: Path,
) -> None:
    # An integer column with a NULL comes to pandas (and from SQLite through it) as
    # float64, and a DECIMAL column prints as '1.00': neither may miss a domain of ints.
    ward = [1, 2, 2, None] * 10
    with_null = pd.DataFrame({"ward": ward, "x": np.arange(40.0)})
    with closing(sqlite3.connect(tmp_path / "h.db")) as db, db:
        with_null.to_sql("t", db, index=False)
    dec = pd.DataFrame(
        {"ward": [decimal.Decimal(w or 3).quantize(decimal.Decimal("0.01")) for w in ward]}
    ).assign(x=np.arange(40.0))
    policy = Policy(bounds={"x": (0, 100)}, domains={"ward": [1, 2]}, min_group_size=2)
    sites = [
        Site({"t": with_null}, policy, name="frame"),
        Site({"t": f"sqlite:///{tmp_path / 'h.db'}"}, policy, name="sqlite"),
        Site({"t": dec}, policy, name="decimal"),
    ]
    sql = "SELECT ward, COUNT(*), SUM(x) FROM t GROUP BY ward"
    df = query(sites, sql, secure=False)
    frames = [with_null, with_null, dec.assign(ward=dec["ward"].astype(float))]
    want = _pooled(frames, sql + " HAVING ward IN (1, 2) ORDER BY ward")
    assert df["COUNT(*)"].tolist() == want["count_star()"].tolist()
    assert df["SUM(x)"].tolist() == want["sum(x)"].tolist()
    assert df.attrs["outside_domain"] == 30  # the NULL and 3.00 rows, ten a site


def test_secure_sums_and_variances_of_tiny_values_equal_the_plain_ones() -> None:
    # bounds far below 1: the fixed-point scale must grow past 2^60 (SUM came back 0)
    # and a squared deviation's scale must not overflow (VAR raised OverflowError)
    x = np.array([1e-300, 2e-300, 3e-300] * 10)
    policy = Policy(bounds={"x": (0.0, 1e-299)}, min_group_size=2)
    sites = [Site({"t": pd.DataFrame({"x": x})}, policy, name=n) for n in "ab"]
    sql = "SELECT SUM(x), AVG(x), VAR_POP(x) FROM t"
    plain = query(sites, sql, secure=False).iloc[0]
    secure = query(sites, sql, secure=True).iloc[0]
    assert secure["SUM(x)"] == pytest.approx(plain["SUM(x)"], rel=1e-9)
    assert secure["AVG(x)"] == pytest.approx(plain["AVG(x)"], rel=1e-9)
    assert secure["VAR_POP(x)"] == plain["VAR_POP(x)"] == 0.0  # the squares underflow


@pytest.mark.parametrize(
    ("high", "sql"),
    [(1e300, "SELECT SUM(x) FROM t"), (1e155, "SELECT VAR_POP(x) FROM t")],
)
@pytest.mark.parametrize("epsilon", [None, 1.0])
def test_bounds_too_wide_for_the_fixed_point_are_refused_naming_them(
    high: float, sql: str, epsilon: float | None
) -> None:
    # 2^31 rows of the bound (or of its square) overflowed float64: 'math domain error'
    policy = Policy(bounds={"x": (-high, high)}, min_group_size=2)
    sites = [Site({"t": pd.DataFrame({"x": [1.0, 2.0] * 5})}, policy, name=n) for n in "ab"]
    with pytest.raises(QueryError, match="bounds of 'x' are too wide"):
        query(sites, sql, secure=True, epsilon=epsilon)


@pytest.mark.parametrize("secure", [True, False])
def test_bounds_too_wide_for_a_variance_are_refused_before_any_budget_is_spent(
    secure: bool,
) -> None:
    # the squared deviations' scale and sensitivity were found too wide only at the
    # second stage, after the sites had spent budget on the first
    policy = Policy(bounds={"x": (-1e160, 1e160)}, min_group_size=2)
    sites = [Site({"t": pd.DataFrame({"x": [1.0, 2.0] * 5})}, policy, name=n) for n in "ab"]
    with pytest.raises(QueryError, match="bounds of 'x' are too wide"):
        query(sites, "SELECT VAR_POP(x) FROM t", secure=secure, epsilon=1.0)
    assert [s.epsilon_spent for s in sites] == [0.0, 0.0]


def test_nan_is_null_whatever_the_source(tmp_path: Path) -> None:
    # pandas reads NaN as NULL, DuckDB's Parquet and CSV readers kept it a value above
    # every bound: it was clipped to the top and counted in COUNT, SUM, AVG, MEDIAN
    x = np.array([1.0, 2.0, np.nan, 3.0, np.nan] * 6)
    frame = pd.DataFrame({"x": x})
    frame.to_parquet(tmp_path / "t.parquet")
    pd.DataFrame({"x": ["1.0", "2.0", "NaN", "3.0", "nan"] * 6}).to_csv(
        tmp_path / "t.csv", index=False
    )
    policy = Policy(bounds={"x": (0.0, 10.0)}, min_group_size=2)
    sql = "SELECT COUNT(x), SUM(x), AVG(x), MEDIAN(x) FROM t"
    answers = []
    for source in (frame, str(tmp_path / "t.parquet"), str(tmp_path / "t.csv")):
        df = query([Site({"t": source}, policy)], sql, secure=False)
        answers.append(df.iloc[0].tolist())
        assert df.attrs["clipped"] == {"x": 0}
    assert answers[0][:3] == [18.0, 36.0, 2.0]
    assert answers[0][3] == pytest.approx(2.0, abs=1e-5)
    assert answers[1] == answers[2] == answers[0]


@pytest.mark.parametrize(("low", "high", "bins"), [(1, 2, 10), (-1, 1, 20), (0.5, 2.5, 20)])
def test_histogram_bins_values_on_their_edges_as_numpy_does(
    low: float, high: float, bins: int
) -> None:
    # (1.2 - 1) / 0.1 is 1.9999999999999996: a value written with one decimal fell a
    # bin low (1.0 .. 2.0 in ten bins came back [1, 2, 0, 2, 0, 1, 2, 0, 2, 1])
    x = np.arange(round(low * 100), round(high * 100) + 1) / 100
    sites = [Site({"t": pd.DataFrame({"x": x})}, Policy(bounds={"x": (-5, 5)}, min_group_size=1))]
    sql = f"SELECT HISTOGRAM(x, {low}, {high}, {bins}) FROM t"  # noqa: S608
    df = query(sites, sql, secure=False)
    want, _ = np.histogram(x, bins=bins, range=(low, high))
    np.testing.assert_array_equal(np.asarray(df.iloc[0, 0], dtype=float), want)


def test_the_sql_bins_put_values_on_their_edges_where_the_sorted_memo_does() -> None:
    from covey.analytics._compute import compute
    from covey.analytics._tables import load_tables

    x = np.arange(-300, 301) / 100
    con = load_tables({"t": pd.DataFrame({"x": x})})
    for low, width, nbins in [(1.0, 0.1, 10), (-1.0, 0.1, 20), (0.5, 0.1, 20), (0.0, 0.3, 7)]:
        stat = {"op": "bins", "col": "x", "low": [low], "width": [width], "bins": nbins}
        bounds = {"x": (-5.0, 5.0)}
        sql = compute(con, "t", None, (), {}, bounds, [stat]).vectors[0][0]
        memo = compute(con, "t", None, (), {}, bounds, [stat], memo={}).vectors[0][0]
        np.testing.assert_array_equal(sql, memo)
        edges = low + width * np.arange(nbins + 1)
        inside, _ = np.histogram(x, bins=edges)
        np.testing.assert_array_equal(sql[1:-1], inside)


@pytest.mark.parametrize(("low", "high", "bins"), [(0, 0.9, 3), (0, 1.7, 5), (1e-5, 3e-5, 2)])
def test_histogram_counts_values_equal_to_high_in_the_last_bin(
    low: float, high: float, bins: int
) -> None:
    # low + bins * width rounds below high (0 + 3 * 0.3 < 0.9): the records at high
    # itself fell above the last edge and were not counted
    x = np.array([low, (low + high) / 2, high, high, high])
    sites = [Site({"t": pd.DataFrame({"x": x})}, Policy(bounds={"x": (-5, 5)}, min_group_size=1))]
    df = query(sites, f"SELECT HISTOGRAM(x, {low}, {high}, {bins}) FROM t", secure=False)  # noqa: S608
    want, _ = np.histogram(x, bins=bins, range=(low, high))
    np.testing.assert_array_equal(np.nan_to_num(np.asarray(df.iloc[0, 0], dtype=float)), want)


def test_the_sql_bins_close_the_last_bin_at_high_as_the_sorted_memo_does() -> None:
    from covey.analytics._compute import compute
    from covey.analytics._tables import load_tables

    con = load_tables({"t": pd.DataFrame({"x": [0.1, 0.2, 0.5, 0.9, 0.9]})})
    stat = {"op": "bins", "col": "x", "low": [0.0], "width": [0.3], "high": [0.9], "bins": 3}
    bounds = {"x": (-5.0, 5.0)}
    sql = compute(con, "t", None, (), {}, bounds, [stat]).vectors[0][0]
    memo = compute(con, "t", None, (), {}, bounds, [stat], memo={}).vectors[0][0]
    np.testing.assert_array_equal(sql, [0, 2, 1, 2, 0])
    np.testing.assert_array_equal(memo, sql)


def test_too_many_groups_are_refused_by_the_server_naming_the_group_by() -> None:
    # the sites refused each in turn, and under secure aggregation the analyst read
    # 'secure aggregation aborted in stage mask: only 0 clients sent masked inputs'
    domain = list(range(400))
    policy = Policy(domains={"a": domain, "b": domain}, min_group_size=1)
    frame = pd.DataFrame({"a": [1, 2], "b": [3, 4]})
    sites = [Site({"t": frame}, policy, name=n) for n in "pq"]
    with pytest.raises(QueryError, match=r"GROUP BY a, b: .*160000 groups"):
        query(sites, "SELECT a, b, COUNT(*) FROM t GROUP BY a, b")


def test_kaplan_meier_counts_a_time_on_a_point_at_that_point() -> None:
    # ceil(2.1 / 0.3) is 8: a record leaving at 2.1 was counted at the point 2.4
    from covey.analytics._compute import compute
    from covey.analytics._tables import load_tables

    times = np.round(np.arange(21) * 0.3, 10)
    con = load_tables({"t": pd.DataFrame({"t": times, "e": 1})})
    stat = {"op": "km", "col": "t", "event": "e", "low": 0.0, "step": 0.3, "points": 20}
    got = compute(con, "t", None, (), {}, {"t": (0.0, 6.0)}, [stat]).vectors[0][0]
    np.testing.assert_array_equal(got[1], np.ones(21))  # one record leaves at each point
    np.testing.assert_array_equal(got[0], np.ones(21))


@pytest.mark.parametrize("secure", [True, False])
def test_a_query_past_one_sites_budget_is_refused_before_the_others_spend(secure: bool) -> None:
    # the site with budget left answered (and was charged) before the spent one
    # refused, so the query failed with the first site's budget gone for nothing
    frame = pd.DataFrame({"x": np.arange(100.0)})
    poor = Site({"t": frame}, Policy(bounds={"x": (0, 100)}, epsilon=1.0), name="poor")
    rich = Site({"t": frame}, Policy(bounds={"x": (0, 100)}, epsilon=10.0), name="rich")
    query([poor, rich], "SELECT COUNT(*) FROM t", secure=secure, epsilon=0.8)
    spent = rich.epsilon_spent
    with pytest.raises(PermissionError, match=r"poor: .*budget cannot pay for this query"):
        query([poor, rich], "SELECT SUM(x) FROM t", secure=secure, epsilon=0.8)
    assert rich.epsilon_spent == spent
    # a repeat the sites hold in their caches costs nothing, and still passes
    query([poor, rich], "SELECT COUNT(*) FROM t", secure=secure, epsilon=0.8)
    assert rich.epsilon_spent == spent


def test_covey_query_prints_a_histogram_as_a_list_with_its_hidden_bins_as_dashes() -> None:
    # a histogram's cells are NumPy arrays: printed by their repr, '[nan 20. 20. 20.]'
    import io

    from rich.console import Console

    from covey.analytics._cli import result_table

    x = np.repeat([1.5, 2.5, 3.5], 10)
    sites = [Site({"t": pd.DataFrame({"x": x})}, Policy(bounds={"x": (0, 4)}, min_group_size=5))]
    sql = "SELECT HISTOGRAM(x, 0, 4, 4) FROM t"
    out = Console(file=io.StringIO(), width=200, color_system=None)
    out.print(result_table(query(sites, sql, secure=False), sql))
    assert "[-, 10, 10, 10]" in out.file.getvalue()  # type: ignore[attr-defined]


def test_an_alias_naming_a_group_by_column_is_refused() -> None:
    # the answer's column of that name held the aggregate: the group keys were lost
    from covey.analytics import plan

    with pytest.raises(QueryError, match="alias 'g' is the name of a GROUP BY column"):
        plan('SELECT g, COUNT(*) AS "g" FROM t GROUP BY g')


def test_approx_top_k_cuts_a_long_value_on_a_character_boundary() -> None:
    # 12 euro signs are 36 bytes: the 32 bytes the trie reads end inside the 11th
    long = "€" * 12
    frame = pd.DataFrame({"w": [long] * 12 + ["naïve"] * 11})
    site = Site({"t": frame}, Policy(min_group_size=5))
    df = query([site], "SELECT APPROX_TOP_K(w, 2) FROM t", secure=False)
    assert df.iloc[0, 0] == ["€" * 10, "naïve"]
    assert df.attrs["precision"]["APPROX_TOP_K(w, 2)"] == {"counts": [[12, 11]]}


def test_a_boolean_column_is_summed_and_averaged_as_zeros_and_ones() -> None:
    # AVG of a flag is the share of trues (DuckDB sums a BOOLEAN but has no AVG of one)
    rng = np.random.default_rng(3)
    flags = (True, False, None)
    frames = [
        pd.DataFrame(
            {
                "g": rng.choice(["a", "b"], n),
                "flag": pd.array([flags[i] for i in rng.integers(0, 3, n)], dtype="boolean"),
            }
        )
        for n in (60, 90)
    ]
    policy = Policy(bounds={"flag": (0, 1)}, domains={"g": ["a", "b"]}, min_group_size=3)
    sites = [Site({"t": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]
    sql = "SELECT g, SUM(flag), AVG(flag), VAR_SAMP(flag), COUNT(flag) FROM t GROUP BY g"
    df = query(sites, sql, secure=True)
    want = _pooled(
        frames,
        "SELECT g, SUM(flag) AS s, AVG(CAST(flag AS INT)) AS a, "
        "VAR_SAMP(CAST(flag AS INT)) AS v, COUNT(flag) AS n FROM t GROUP BY g ORDER BY g",
    )
    assert df["SUM(flag)"].tolist() == want["s"].astype(float).tolist()
    assert df["COUNT(flag)"].tolist() == want["n"].astype(float).tolist()
    np.testing.assert_allclose(df["AVG(flag)"], want["a"], rtol=1e-9)
    np.testing.assert_allclose(df["VAR_SAMP(flag)"], want["v"], rtol=1e-9)
    assert df.attrs["clipped"] == {"flag": 0}


@pytest.mark.parametrize("secure", [False, True])
def test_distinct_values_and_top_k_read_a_number_alike_whatever_its_column_type(
    secure: bool,
) -> None:
    # an integer column with a NULL comes from pandas as float64: its 7.0 was hashed
    # and counted as the text '7.0', another site's 7 as '7', so the 50 codes counted
    # as 100 distinct values and split their top-k counts
    codes = np.arange(200) % 50
    ints = pd.DataFrame({"code": codes})
    floats = pd.DataFrame({"code": np.where(codes == 0, np.nan, codes)})
    decimals = pd.DataFrame(
        {"code": [decimal.Decimal(int(c)).quantize(decimal.Decimal("0.1")) for c in codes]}
    )
    policy = Policy(distinct=["code"], min_group_size=1)
    sites = [
        Site({"t": f}, policy, name=n) for f, n in ((ints, "i"), (floats, "f"), (decimals, "d"))
    ]
    sql = "SELECT APPROX_COUNT_DISTINCT(code), APPROX_TOP_K(code, 1) FROM t"
    df = query(sites, sql, secure=secure)
    assert df["APPROX_COUNT_DISTINCT(code)"].iloc[0] == pytest.approx(50, rel=0.01)
    assert df["APPROX_TOP_K(code, 1)"].iloc[0] == ["1"]  # 0 is NULL at one site
    assert df.attrs["precision"]["APPROX_TOP_K(code, 1)"]["counts"] == [[12]]


@pytest.mark.parametrize("domain", [[True, False], [1, 0]])
def test_a_boolean_column_stored_as_integer_at_one_site_is_one_column(
    tmp_path: Path, domain: list[object]
) -> None:
    # SQLite stores a boolean as INTEGER 0/1: with the domain [True, False] every row
    # of such a site fell outside it (and with [1, 0] those of a BOOLEAN column did)
    frame = pd.DataFrame({"smoker": [True, False, True, True, False] * 4})
    frame.to_parquet(tmp_path / "a.parquet")
    with closing(sqlite3.connect(tmp_path / "b.db")) as db:
        frame.to_sql("p", db, index=False)
    policy = Policy(domains={"smoker": domain}, min_group_size=1, distinct=["smoker"])
    sites = [
        Site({"p": str(tmp_path / "a.parquet")}, policy, name="a"),
        Site({"p": f"sqlite:///{tmp_path / 'b.db'}"}, policy, name="b"),
    ]
    df = query(sites, "SELECT smoker, COUNT(*) FROM p GROUP BY smoker", secure=False)
    assert df["COUNT(*)"].tolist() == [24.0, 16.0]
    assert df.attrs["outside_domain"] == 0
    sql = "SELECT APPROX_TOP_K(smoker, 4), APPROX_COUNT_DISTINCT(smoker) FROM p"
    df = query(sites, sql, secure=False)
    assert df.iloc[0, 0] == ["1", "0"]
    assert df.iloc[0, 1] == pytest.approx(2.0, abs=0.01)


def test_kaplan_meier_refuses_an_event_column_not_coded_0_1_and_counts_values_outside() -> None:
    # status 1 (censored) / 2 (event) was clamped to [0, 1]: every record an event,
    # and nothing said so
    frame = pd.DataFrame({"t": np.arange(1.0, 21.0), "status": [1, 2] * 10})
    policy = Policy(bounds={"t": (0, 100), "status": (1, 2)}, min_group_size=1)
    sql = "SELECT KAPLAN_MEIER(t, status, 25) FROM d"
    with pytest.raises(PermissionError, match=r"event column 'status' is read as 0 .*\(1, 2\)"):
        query([Site({"d": frame}, policy)], sql, secure=False)
    policy = Policy(bounds={"t": (0, 100), "status": (0, 1)}, min_group_size=1)
    df = query([Site({"d": frame}, policy)], sql, secure=False)
    assert df.attrs["clipped"] == {"t": 0, "status": 10}


def test_kaplan_meier_counts_only_the_clipped_values_of_the_rows_it_reads() -> None:
    # a time past its bound with no event, and an event past its bound with no
    # time, are left out of the curve: they are not counted as clipped
    frame = pd.DataFrame(
        {
            "t": [*np.arange(1.0, 21.0), 500.0, 500.0, np.nan, np.nan],
            "status": [0, 1] * 10 + [np.nan, np.nan, 7.0, 7.0],
        }
    )
    policy = Policy(bounds={"t": (0, 100), "status": (0, 1)}, min_group_size=1)
    site = Site({"d": frame}, policy)
    df = query([site], "SELECT KAPLAN_MEIER(t, status, 25) FROM d", secure=False)
    assert df.attrs["clipped"] == {"t": 0, "status": 0}
    # SUM reads every time there is, so the two past the bound are counted once
    df = query([site], "SELECT SUM(t), KAPLAN_MEIER(t, status, 25) FROM d", secure=False)
    assert df.attrs["clipped"] == {"t": 2, "status": 0}


@pytest.mark.parametrize(("second", "clipped"), [(5, 20), (12, 32)])
def test_a_time_two_survival_curves_read_is_counted_where_one_is_shown(
    second: int, clipped: int
) -> None:
    # every time is past its bound; the curve over e2 reads only `second` of them
    # and, under the minimum of 10, is withheld: its times are not counted (nor
    # those of the 3 records with neither event, which no curve reads)
    frame = pd.DataFrame(
        {
            "t": [500.0] * (23 + second),
            "e1": [0.0, 1.0] * 10 + [np.nan] * (3 + second),
            "e2": [np.nan] * 23 + [1.0] * second,
        }
    )
    policy = Policy(bounds={"t": (0, 100), "e1": (0, 1), "e2": (0, 1)}, min_group_size=10)
    sql = "SELECT KAPLAN_MEIER(t, e1, 50) AS a, KAPLAN_MEIER(t, e2, 50) AS b FROM d"
    df = query([Site({"d": frame}, policy)], sql, secure=False)
    assert df.attrs["clipped"] == {"t": clipped, "e1": 0, "e2": 0}


def test_a_date_group_column_stored_as_date_or_timestamp_matches_its_date_domain(
    tmp_path: Path,
) -> None:
    # pandas keeps dates as datetime64 (a TIMESTAMP at the site, '2024-01-01 00:00:00'),
    # a CSV holds them as DATE ('2024-01-01'): one domain of days groups both.
    days = pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-02", None] * 10)
    stamps = pd.DataFrame({"day": days, "x": np.arange(40.0)})
    stamps.to_csv(tmp_path / "dates.csv", index=False)
    policy = Policy(
        bounds={"x": (0, 100)},
        domains={"day": ["2024-01-01", "2024-01-02", "not a day"]},
        min_group_size=2,
    )
    sites = [
        Site({"t": stamps}, policy, name="timestamps"),
        Site({"t": str(tmp_path / "dates.csv")}, policy, name="dates"),
    ]
    sql = "SELECT day, COUNT(*), SUM(x) FROM t GROUP BY day"
    got = query(sites, sql, secure=False)
    want = _pooled([stamps, stamps], sql).dropna().sort_values("day")
    assert got["day"].tolist() == ["2024-01-01", "2024-01-02", "not a day"]
    assert got["COUNT(*)"].tolist()[:2] == want["count_star()"].astype(float).tolist()
    assert got["SUM(x)"].tolist()[:2] == want["sum(x)"].tolist()
    assert got.attrs["outside_domain"] == 20  # the NULL days, in no group
    assert got.attrs["suppressed"] == [("not a day",)]


@pytest.mark.parametrize("secure", [False, True])
def test_distinct_values_and_top_k_read_a_day_alike_stored_as_date_or_timestamp(
    tmp_path: Path, secure: bool
) -> None:
    # pandas keeps dates as datetime64 (a TIMESTAMP at the site, '2024-01-01 00:00:00'),
    # a CSV holds them as DATE ('2024-01-01'): the 30 days counted as 60 distinct
    # values, and a day's records were split between its two texts in the top k
    days = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(120) % 30, unit="D")
    stamps = pd.DataFrame({"day": days.where(np.arange(120) % 30 != 5)})  # day 5 is NULL
    stamps.to_csv(tmp_path / "dates.csv", index=False)
    evening = pd.DataFrame({"day": [pd.Timestamp("2024-01-02 18:30:00")] * 3})
    policy = Policy(distinct=["day"], min_group_size=1)
    sites = [
        Site({"t": stamps}, policy, name="timestamps"),
        Site({"t": str(tmp_path / "dates.csv")}, policy, name="dates"),
        Site({"t": evening}, policy, name="evening"),  # another time of a day: its own value
    ]
    assert "TIMESTAMP" in sites[0]._columns["t"]["day"]
    assert sites[1]._columns["t"]["day"] == "DATE"
    sql = "SELECT APPROX_COUNT_DISTINCT(day), APPROX_TOP_K(day, 2) FROM t"
    got = query(sites, sql, secure=secure)
    pooled = pd.concat([stamps, stamps, evening], ignore_index=True)
    con = duckdb.connect()
    con.register("p", pooled)
    want = con.execute(
        "SELECT COUNT(DISTINCT CAST(day AS DATE)) FILTER (WHERE day = CAST(day AS DATE)) "
        "+ COUNT(DISTINCT day) FILTER (WHERE day <> CAST(day AS DATE)), "
        "COUNT(*) FILTER (WHERE day = DATE '2024-01-01') FROM p"
    ).fetchone()
    assert want == (30, 8)
    assert got["APPROX_COUNT_DISTINCT(day)"].iloc[0] == pytest.approx(want[0], rel=0.01)
    # shown as a DATE reads (a day's midnight is the day); 18:30 is not that day
    assert sorted(got["APPROX_TOP_K(day, 2)"].iloc[0]) == ["2024-01-01", "2024-01-02"]
    assert got.attrs["precision"]["APPROX_TOP_K(day, 2)"]["counts"] == [[want[1]] * 2]


def test_a_query_takes_its_budget_precision_and_timeout_as_numpy_numbers() -> None:
    # query() refused np.float32 budgets and seconds ("epsilon must be a positive number,
    # got np.float32(1.0)"), which an analyst's NumPy arithmetic gives.
    frame = pd.DataFrame({"age": [30, 40, 50, 60]})
    policy = Policy(bounds={"age": (0, 100)}, min_group_size=1)
    sites = [Site({"p": frame}, policy, name=f"s{i}") for i in range(2)]
    exact = query(sites, "SELECT AVG(age) AS a FROM p", timeout=np.float32(30))
    assert exact["a"].iloc[0] == 45.0
    noisy = query(
        sites,
        "SELECT AVG(age) AS a, MEDIAN(age) AS m FROM p",
        epsilon=np.float32(1.0),
        delta=np.float64(1e-6),
        precision=np.float32(0.01),
        timeout=np.int64(30),
    )
    assert list(noisy.columns) == ["a", "m"]  # noisy: the mean of eight rows may be NaN
    assert len(noisy) == 1
    with pytest.raises(ValueError, match=r"epsilon must be a positive number, got -1\.0"):
        query(sites, "SELECT AVG(age) FROM p", epsilon=np.float32(-1.0))
