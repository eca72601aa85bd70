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
