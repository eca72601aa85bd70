"""Federated answers against DuckDB's on the pooled rows, over seeded random queries.

Tables of mixed types (integers with NULLs, floats, text with quotes and
non-ASCII letters, dates, booleans) are split across sites of skewed sizes, one
of them empty and one whose ``cost`` and ``sex`` hold no value at all; one
site holds its days as DATE, the others as TIMESTAMP or as text. Each
generated query is answered by the sites and by DuckDB over the pooled rows
(the same SQL), and the two must agree up to the differences
docs/analytics.md lists: every group of the domains is answered (an empty one
NaN), counts are floats, a count of no values is NaN, quantiles are within
their precision, and a division by zero is NaN.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from covey.analytics import Policy, QueryError, Site, query

WARDS = ["north", "O'Brien", "Zürich", 'naïve "q"', "東京", "east"]
DATES = ["2024-01-01", "2024-01-02", "2024-02-29"]
BOUNDS = {"age": (-5, 130), "cost": (-1000.0, 1000.0), "stage": (0, 10)}
NUMBERS = ["age", "cost", "stage"]
GROUPS = ["ward", "sex", "stage", "flag", "d"]


def _policy() -> Policy:
    domains: dict[str, list[Any]] = {"ward": WARDS, "sex": ["F", "M"], "d": DATES}
    domains.update(stage=[1, 2, 3], flag=[False, True])
    return Policy(bounds=BOUNDS, domains=domains, min_group_size=1, min_max=NUMBERS)


def _frame(rng: np.random.Generator, n: int, empty_columns: bool) -> pd.DataFrame:
    ages = [None if rng.random() < 0.1 else int(a) for a in rng.integers(0, 100, n)]
    cost = rng.normal(50, 200, n).round(3)
    cost[rng.random(n) < 0.2] = np.nan
    sex = np.array(rng.choice(["F", "M"], n), dtype=object)
    sex[rng.random(n) < 0.1] = None
    wards = rng.choice(len(WARDS), n, p=[0.5, 0.2, 0.15, 0.1, 0.04, 0.01])  # skewed
    frame = pd.DataFrame(
        {
            "ward": pd.Series([WARDS[i] for i in wards], dtype=object),
            "sex": sex,
            "age": pd.array(ages, dtype="Int64"),
            "cost": cost,
            "stage": rng.integers(1, 4, n),
            "flag": rng.random(n) < 0.3,
            "d": pd.to_datetime(rng.choice(DATES, n)),
        }
    )
    if empty_columns:  # no value at all: a column of None is DuckDB's type "NULL"
        frame["cost"] = pd.Series([None] * n, dtype=object)
        frame["sex"] = pd.Series([None] * n, dtype=object)
    return frame


def _literal(r: random.Random, col: str) -> str:
    if col == "age":
        return str(r.randint(-1, 100))
    if col == "cost":
        return r.choice(["0", "50.5", "-10", "1e2"])
    if col == "stage":
        return str(r.randint(0, 4))
    if col == "ward":
        return "'" + r.choice([*WARDS, "x"]).replace("'", "''") + "'"
    if col == "sex":
        return r.choice(["'F'", "'M'"])
    return "'" + r.choice([*DATES, "2024-01-02 08:00", "2024-01-02 00:00:00"]) + "'"


def _condition(r: random.Random, depth: int = 0) -> str:
    col = r.choice(["age", "cost", "stage", "ward", "sex", "d"])
    kind = r.randint(0, 8 if depth < 2 else 5)
    if kind <= 2:
        op = r.choice(["=", "<>", "<", "<=", ">", ">="])
        return f"{col} {op} {_literal(r, col)}"
    if kind == 3:
        return f"{col} IS {r.choice(['', 'NOT '])}NULL"
    if kind == 4:
        return f"{col} BETWEEN {_literal(r, col)} AND {_literal(r, col)}"
    if kind == 5:
        values = ", ".join(_literal(r, col) for _ in range(r.randint(1, 3)))
        return f"{col} {r.choice(['', 'NOT '])}IN ({values})"
    if kind == 6:
        return f"ward {r.choice(['LIKE', 'ILIKE', 'NOT LIKE'])} '{r.choice(['n%', '%%', '東%'])}'"
    if kind == 7:
        op = r.choice(["AND", "OR"])
        return f"({_condition(r, depth + 1)}) {op} ({_condition(r, depth + 1)})"
    return f"NOT ({_condition(r, depth + 1)})"


def _aggregate(r: random.Random, secure: bool) -> str:
    col = r.choice(NUMBERS)
    choices = [
        "COUNT(*)", f"COUNT({col})", f"SUM({col})", f"AVG({col})", f"VAR_SAMP({col})",
        f"VAR_POP({col})", f"STDDEV_SAMP({col})", f"STDDEV_POP({col})", "COUNT(ward)",
        f"MEDIAN({col})", f"QUANTILE_CONT({col}, 0.25)",
    ]  # fmt: skip
    return r.choice(choices if secure else [*choices, f"MIN({col})", f"MAX({col})"])


def _item(r: random.Random, secure: bool) -> str:
    aggregate = _aggregate(r, secure)
    if aggregate.startswith(("MEDIAN", "QUANTILE")):
        return aggregate
    kind = r.randint(0, 5)
    if kind == 0:
        return f"{aggregate} / {r.choice(['COUNT(*)', 'SUM(cost)', 'COUNT(age)'])}"
    if kind == 1:
        return f"{r.choice(['100 * ', '-', '1 + '])}{aggregate}"
    if kind == 2 and aggregate.startswith(("COUNT", "SUM", "AVG")):
        return f"{aggregate} FILTER (WHERE {_condition(r, 1)})"
    return aggregate


def _generate(r: random.Random, secure: bool) -> tuple[str, list[str]]:
    group_by = r.sample(GROUPS, r.choice([0, 1, 1, 2]))
    items = [g for g in group_by if r.random() < 0.8]
    items += [_item(r, secure) for _ in range(r.randint(1, 3))]
    items = list(dict.fromkeys(items))  # one column of a name
    r.shuffle(items)
    sql = f"SELECT {', '.join(items)} FROM t"  # noqa: S608
    if r.random() < 0.6:
        sql += f" WHERE {_condition(r)}"
    if group_by:
        sql += f" GROUP BY {', '.join(group_by)}"
    return sql, group_by


def _key(value: Any) -> str | None:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return str(value.date())
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    return str(value)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or bool(np.isnan(float(value)))


def _agrees(got: Any, want: Any, item: str) -> bool:
    if _missing(got):  # NaN: no value, a count of none, or a division by zero
        return _missing(want) or math.isinf(float(want)) or "COUNT" in item
    if _missing(want):
        return False
    tolerance = 1e-3 if item.startswith(("MEDIAN", "QUANTILE")) else 1e-9
    return math.isclose(float(got), float(want), rel_tol=tolerance, abs_tol=tolerance)


def _compare(df: pd.DataFrame, pooled: duckdb.DuckDBPyConnection, sql: str, gb: list[str]) -> None:
    keys = "".join(f"{g} AS __k{i}, " for i, g in enumerate(gb))
    want = pooled.execute(sql.replace("SELECT ", f"SELECT {keys}", 1)).df()
    items = list(want.columns[len(gb) :])
    selected = list(df.columns[len(df.columns) - len(items) :])
    rows = {}
    for _, row in want.iterrows():
        key = tuple(_key(row.iloc[i]) for i in range(len(gb)))
        if None not in key:  # a NULL group is outside the domain
            rows[key] = row
    seen = set()
    for _, row in df.iterrows():
        key = tuple(_key(row[g]) for g in gb)
        seen.add(key)
        expected = rows.get(key)
        for j, name in enumerate(selected):
            if name in gb:
                continue
            if expected is None:  # a group of no rows: NaN
                assert _missing(row[name]), (sql, key, name)
            else:
                got, value = row[name], expected.iloc[len(gb) + j]
                assert _agrees(got, value, name), (sql, key, name, got, value)
    assert set(rows) <= seen, (sql, set(rows) - seen)


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Site], duckdb.DuckDBPyConnection]:
    rng = np.random.default_rng(7)
    frames = [_frame(rng, n, empty_columns=k == 2) for k, n in enumerate([40, 0, 25, 60])]
    folder = tmp_path_factory.mktemp("differential")
    frames[3].to_parquet(folder / "s3.parquet")
    with sqlite3.connect(folder / "s2.db") as db:  # SQLite has no dates: text
        frames[2].assign(d=frames[2]["d"].dt.strftime("%Y-%m-%d")).to_sql("t", db, index=False)
    days = frames[0].assign(d=frames[0]["d"].dt.date)  # DATE, where pandas' are TIMESTAMP
    sources: list[Any] = [days, frames[1], f"sqlite:///{folder / 's2.db'}"]
    sources.append(str(Path(folder / "s3.parquet")))
    sites = [Site({"t": s}, _policy(), name=f"s{k}") for k, s in enumerate(sources)]
    pooled = duckdb.connect()
    pooled.register("frames", pd.concat([f for f in frames if len(f)], ignore_index=True))
    pooled.execute("CREATE TABLE t AS SELECT * REPLACE (CAST(cost AS DOUBLE) AS cost) FROM frames")
    return sites, pooled


@pytest.mark.parametrize("seed", range(6))
def test_random_queries_equal_duckdb_on_the_pooled_rows(
    federation: tuple[list[Site], duckdb.DuckDBPyConnection], seed: int
) -> None:
    sites, pooled = federation
    r = random.Random(seed)
    for _ in range(8):
        secure = r.random() < 0.5
        sql, group_by = _generate(r, secure)
        df = query(sites, sql, secure=secure)
        assert df.attrs["refused"] == {}, sql
        _compare(df, pooled, sql, group_by)


@pytest.mark.parametrize(
    "clause",
    [" HAVING COUNT(*) > 1", " ORDER BY 1", " LIMIT 3", " OFFSET 1", " QUALIFY 1"],
)
def test_clauses_a_sum_cannot_answer_are_refused_before_any_site_computes(
    federation: tuple[list[Site], duckdb.DuckDBPyConnection],
    clause: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sites, _ = federation
    monkeypatch.setattr(Site, "answer", lambda *_a, **_k: pytest.fail("a site was asked"))
    keyword = clause.split()[0]
    sql = "SELECT ward, COUNT(*) FROM t GROUP BY ward" + clause  # noqa: S608
    with pytest.raises(QueryError, match=keyword):
        query(sites, sql, secure=False)


@pytest.mark.parametrize("secure", [False, True])
def test_a_bounded_column_of_no_value_at_a_site_leaves_its_rows_counted(
    tmp_path: Path, secure: bool
) -> None:
    """A CSV's empty column (VARCHAR) and a DataFrame's column of None ("NULL") hold numbers.

    The site used to refuse every query that sums the column, so its rows
    dropped out of ``COUNT(*)`` too: 2 where the pooled rows count 6.
    """
    policy = Policy(bounds={"cost": (0, 100)}, min_group_size=1)
    (tmp_path / "empty.csv").write_text("id,cost\n5,\n6,\n")
    sites = [
        Site({"t": pd.DataFrame({"id": [1, 2], "cost": [1.0, 2.0]})}, policy, name="a"),
        Site({"t": pd.DataFrame({"id": [3, 4], "cost": [None, None]})}, policy, name="b"),
        Site({"t": str(tmp_path / "empty.csv")}, policy, name="c"),
    ]
    sql = "SELECT COUNT(*), AVG(cost), COUNT(cost), MEDIAN(cost) FROM t WHERE cost > 1 OR id > 2"
    df = query(sites, sql, secure=secure)
    assert df.attrs["refused"] == {}
    assert df["COUNT(*)"].tolist() == [5.0]
    assert df["AVG(cost)"].tolist() == [2.0]
    assert df["COUNT(cost)"].tolist() == [1.0]


@pytest.mark.parametrize(
    ("where", "count"),
    [
        ("d = '2024-01-02 08:00'", 0),
        ("d < '2024-01-02 00:00:01'", 4),
        ("d IN ('2024-01-02 08:00', '2024-01-01')", 2),
        ("d BETWEEN '2024-01-01 12:00' AND '2024-01-03'", 2),
        ("'2024-01-01 12:00' < d", 2),
        ("d >= '2024-01-02'", 2),
    ],
)
def test_a_date_column_compares_a_literal_as_the_instant_it_names_at_every_site(
    where: str, count: int
) -> None:
    """A site holding days as DATE counts the rows one holding them as TIMESTAMP does.

    DuckDB cast ``'2024-01-02 08:00'`` to the DATE site's type, dropping the
    time: ``d = '2024-01-02 08:00'`` counted that day there and not at the
    TIMESTAMP site, so the answer was neither DuckDB's on the pooled rows.
    """
    policy = Policy(min_group_size=1)
    days = [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]
    sites = [
        Site({"t": pd.DataFrame({"d": days})}, policy, name="date"),
        Site({"t": pd.DataFrame({"d": pd.to_datetime(days)})}, policy, name="timestamp"),
    ]
    pooled = duckdb.connect()
    pooled.register("t", pd.DataFrame({"d": pd.to_datetime(days + days)}))
    sql = f"SELECT COUNT(*) FROM t WHERE {where}"  # noqa: S608
    assert pooled.execute(sql).fetchone() == (count,)
    df = query(sites, sql, secure=False)
    assert df.attrs["refused"] == {}
    assert df["COUNT(*)"].fillna(0).tolist() == [count]
    noted = f"SELECT COUNT(*) FILTER (WHERE {where}) AS n, COUNT(*) FROM t"  # noqa: S608
    assert query(sites, noted, secure=True)["n"].fillna(0).tolist() == [count]


def test_a_min_max_column_of_no_value_at_a_site_leaves_its_rows_counted(tmp_path: Path) -> None:
    """A column whose MIN and MAX the policy reveals, unbounded, holds numbers too."""
    policy = Policy(min_max=["cost"], min_group_size=1)
    (tmp_path / "empty.csv").write_text("id,cost\n5,\n6,\n")
    sites = [
        Site({"t": pd.DataFrame({"id": [1, 2], "cost": [1.0, 2.0]})}, policy, name="a"),
        Site({"t": pd.DataFrame({"id": [3, 4], "cost": [None, None]})}, policy, name="b"),
        Site({"t": str(tmp_path / "empty.csv")}, policy, name="c"),
    ]
    df = query(sites, "SELECT COUNT(*), MIN(cost), MAX(cost) FROM t", secure=False)
    assert df.attrs["refused"] == {}
    assert df.iloc[0].tolist() == [6.0, 1.0, 2.0]
