"""The answer's columns: in the SELECT list's order, named as DuckDB names them, or refused."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from covey.analytics import Policy, QueryError, Site, plan, query
from covey.analytics._cli import answer_json, result_table


def _frames(group: str = "region") -> list[pd.DataFrame]:
    rng = np.random.default_rng(11)
    return [
        pd.DataFrame(
            {group: rng.choice(["N", "S"], 40), "x": rng.integers(0, 100, 40).astype(float)}
        )
        for _ in range(3)
    ]


def _sites(frames: list[pd.DataFrame], group: str = "region") -> list[Site]:
    policy = Policy(bounds={"x": (0, 100)}, domains={group: ["N", "S"]}, min_group_size=1)
    return [Site({"t": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]


def _duckdb(frames: list[pd.DataFrame], sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = duckdb.connect()
    con.register("t", pd.concat(frames, ignore_index=True))
    cur = con.execute(sql)
    rows = cur.fetchall()
    return [d[0] for d in cur.description], rows


@pytest.mark.parametrize("secure", [False, True])
def test_the_answer_keeps_the_select_lists_order(secure: bool) -> None:
    # the group keys came first whatever SELECT said: ['region', 'n', 'total']
    frames = _frames()
    sql = "SELECT COUNT(*) AS n, region, SUM(x) AS total FROM t GROUP BY region"
    df = query(_sites(frames), sql, secure=secure)
    names, rows = _duckdb(frames, sql + " ORDER BY region")
    assert list(df.columns) == names == ["n", "region", "total"]
    assert df.values.tolist() == [[float(n), g, pytest.approx(s)] for n, g, s in rows]


def test_a_group_column_select_leaves_out_still_comes_first() -> None:
    frames = _frames()
    df = query(_sites(frames), "SELECT SUM(x), COUNT(*) FROM t GROUP BY region", secure=False)
    assert list(df.columns) == ["region", "SUM(x)", "COUNT(*)"]
    assert df["region"].tolist() == ["N", "S"]


def test_the_printed_table_and_the_json_keep_the_select_lists_order() -> None:
    frames = _frames()
    sql = "SELECT AVG(x), region, COUNT(*) FROM t GROUP BY region"
    df = query(_sites(frames), sql, secure=False)
    assert json.loads(answer_json(df, sql))["columns"] == ["AVG(x)", "region", "COUNT(*)"]
    table = result_table(df, sql)
    assert [str(c.header) for c in table.columns] == ["AVG(x)", "region", "COUNT(*)"]
    assert [str(cell) for cell in table.columns[1]._cells] == ["N", "S"]


def test_an_alias_of_a_group_column_names_its_keys() -> None:
    # SELECT region AS r: the answer's column was still named 'region'
    frames = _frames()
    sql = "SELECT region AS r, COUNT(*) AS n FROM t GROUP BY region"
    df = query(_sites(frames), sql, secure=False)
    names, rows = _duckdb(frames, sql + " ORDER BY r")
    assert list(df.columns) == names == ["r", "n"]
    assert df["r"].tolist() == [r[0] for r in rows]


@pytest.mark.parametrize("name", [" ", 'a"b', "ñ", "x y", "COUNT(*)", "Région"])
def test_odd_names_are_the_names_duckdb_gives(name: str) -> None:
    frames = _frames(name)
    quoted = '"' + name.replace('"', '""') + '"'
    sql = f"SELECT COUNT(*) AS {quoted}, SUM(x) AS total FROM t"  # noqa: S608
    assert list(query(_sites(frames, name), sql, secure=False).columns) == _duckdb(frames, sql)[0]
    sql = f"SELECT {quoted}, SUM(x) AS total FROM t GROUP BY {quoted}"  # noqa: S608
    assert list(query(_sites(frames, name), sql, secure=False).columns) == _duckdb(frames, sql)[0]


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT COUNT(*) AS "" FROM t',
        'SELECT "", COUNT(*) FROM t GROUP BY ""',
        'SELECT SUM("") FROM t',
    ],
)
def test_the_empty_name_is_refused_naming_it(sql: str) -> None:
    # DuckDB refuses "" (a zero-length identifier); COUNT(*) AS "" was named 'COUNT(*) AS ""'
    with pytest.raises(duckdb.ParserException, match="zero-length"):
        duckdb.connect().execute(sql)
    at = sql.index('""') + 1
    with pytest.raises(QueryError, match=f'the empty name "" at line 1, column {at} names no'):
        plan(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT region, region, COUNT(*) FROM t GROUP BY region",
        "SELECT SUM(x), SUM(x) FROM t",
        "SELECT SUM(x) AS s, COUNT(*) AS s FROM t",
        "SELECT region AS n, region AS n, COUNT(*) FROM t GROUP BY region",
    ],
)
def test_two_columns_of_one_name_are_refused(sql: str) -> None:
    # SELECT region, region gave one column, as if it had been selected once
    with pytest.raises(QueryError, match="two columns of the answer would be named"):
        plan(sql)


def test_two_columns_of_one_name_are_answered_once_aliased() -> None:
    frames = _frames()
    sql = "SELECT region, region AS again, SUM(x), SUM(x) AS s FROM t GROUP BY region"
    df = query(_sites(frames), sql, secure=False)
    assert list(df.columns) == ["region", "again", "SUM(x)", "s"]
    assert df["region"].tolist() == df["again"].tolist() == ["N", "S"]
    assert df["SUM(x)"].tolist() == df["s"].tolist()


def test_an_aggregate_named_as_a_group_column_says_it_has_no_alias() -> None:
    # it said "the alias 'COUNT(*)'" of a query that gave no alias
    with pytest.raises(QueryError, match=r"the aggregate COUNT\(\*\) is the name of a GROUP BY"):
        plan('SELECT "COUNT(*)", COUNT(*) FROM t GROUP BY "COUNT(*)"')


_BIG = 2**62
_TRICKY = [
    pd.DataFrame(
        {
            "g": ["a", "a", "b", "b"],
            "i": np.array([_BIG, _BIG, 1, 2], dtype="int64"),
            "k": np.array([1, 2, 3, 4], dtype="int64"),
            "z": np.array([0, 0, 1, 2], dtype="int64"),
            "n": [1.0, None, 3.0, None],
        }
    ),
    pd.DataFrame(
        {
            "g": ["a", "b", "b", "a"],
            "i": np.array([_BIG, 3, 4, _BIG], dtype="int64"),
            "k": np.array([5, 6, 7, 8], dtype="int64"),
            "z": np.array([0, 3, 0, 1], dtype="int64"),
            "n": [None, None, 2.0, 5.0],
        }
    ),
]


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT g, SUM(i), AVG(i), COUNT(*) FROM t GROUP BY g",
        "SELECT g, COUNT(*) FROM t WHERE i * 4 > 0 GROUP BY g",
        "SELECT COUNT(*), SUM(k) FROM t WHERE k / z > 1",
        "SELECT COUNT(*) FROM t WHERE k / 0 > 1",
        "SELECT COUNT(*), AVG(k) FROM t WHERE k / 2 = 1.5 OR k * 1.5 = 6",
        "SELECT AVG(k), SUM(k), VAR_SAMP(k), STDDEV_POP(k) FROM t",
        "SELECT AVG(n), SUM(n), COUNT(n), COUNT(*) FROM t",
        "SELECT COUNT(*) FROM t WHERE n > 1 OR n IS NULL",
        "SELECT COUNT(*) FROM t WHERE n IN (1, NULL) OR NOT (n > 2)",
        "SELECT COUNT(*) FROM t WHERE k - 9223372036854775807 - 10 < 0",
    ],
)
def test_tricky_queries_equal_duckdb_on_the_pooled_table(sql: str, secure: bool) -> None:
    # large BIGINTs, division by zero, NULLs and integer averages, without DP
    policy = Policy(
        bounds={"i": (0, 2**63 - 1), "k": (0, 10), "z": (0, 10), "n": (0, 10)},
        domains={"g": ["a", "b"]},
        min_group_size=1,
    )
    sites = [Site({"t": f}, policy, name=f"s{i}") for i, f in enumerate(_TRICKY)]
    df = query(sites, sql, secure=secure)
    rows = _duckdb(_TRICKY, sql + (" ORDER BY g" if "GROUP BY" in sql else ""))[1]
    assert len(df) == len(rows)
    for got, want in zip(df.itertuples(index=False), rows, strict=True):
        assert list(got) == pytest.approx([v if isinstance(v, str) else float(v) for v in want])


@pytest.mark.parametrize("secure", [False, True])
def test_group_by_all_groups_by_the_select_lists_columns(secure: bool) -> None:
    # GROUP BY ALL was refused as "the column region ... is neither aggregated nor in GROUP BY"
    frames = _frames()
    sql = "SELECT COUNT(*) AS n, region AS r, region, SUM(x) AS total FROM t GROUP BY ALL"
    df = query(_sites(frames), sql, secure=secure)
    names, rows = _duckdb(frames, sql + " ORDER BY r")
    assert list(df.columns) == names == ["n", "r", "region", "total"]
    assert df.values.tolist() == [[float(n), r, g, pytest.approx(s)] for n, r, g, s in rows]
    assert plan("SELECT COUNT(*) FROM t GROUP BY ALL").group_by == ()


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        (
            "SELECT region AS r, COUNT(*) FROM t GROUP BY r",
            "(GROUP BY r names the alias of region, and GROUP BY takes only the table's column "
            "names: write GROUP BY region)",
        ),
        (
            "SELECT region, COUNT(*) FROM t GROUP BY 1",
            "got 1 (a position in the SELECT list is not supported: name the column)",
        ),
        (
            "SELECT COUNT(*) FROM t p GROUP BY p.region",
            "got p.region (name the column alone: region)",
        ),
        (
            "SELECT p.region, COUNT(*) FROM t p GROUP BY region",
            "qualified column p.region at line 1, column 8 is not supported: name the column "
            "alone (region)",
        ),
        (
            "SELECT COUNT(*) FROM t p WHERE p.x > 1",
            "qualified column p.x at line 1, column 32 is not supported: name the column alone (x)",
        ),
    ],
)
def test_a_group_by_refusal_says_what_to_write(sql: str, said: str) -> None:
    # "GROUP BY r" and "SELECT p.region ... GROUP BY region" were refused as "the column region
    # is neither aggregated nor in GROUP BY", and a position or a table's name got no hint
    with pytest.raises(QueryError) as info:
        plan(sql)
    assert said in str(info.value)
