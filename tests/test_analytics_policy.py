"""Refusals with clear reasons, site policies, minimum group size, and the sources a site reads."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from covey.analytics import (
    TASK_KIND,
    FederationQueryError,
    Policy,
    PolicyError,
    QueryError,
    Site,
    plan,
    query,
)
from covey.clients import run_task
from covey.core import Task


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "sex": rng.choice(["F", "M"], n),
            "condition": rng.choice(["diabetes", "asthma"], n),
            "age": rng.uniform(20, 90, n).round(1),
            "ssn": rng.integers(10**8, 10**9, n),
        }
    )


POLICY = Policy(
    columns=["sex", "condition", "age"],
    bounds={"age": (0, 120)},
    domains={"sex": ["F", "M"], "condition": ["diabetes", "asthma"]},
    min_group_size=10,
)


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("SELECT age FROM patients", ["age", "line 1, column 8", "row-level"]),
        ("SELECT * FROM patients", ["SELECT *", "row-level"]),
        (
            "SELECT COUNT(*) FROM patients p JOIN visits v ON p.id = v.id",
            ["JOIN", "line 1, column 33", "joins"],
        ),
        ("SELECT COUNT(*) FROM patients\nORDER BY 1", ["ORDER BY", "line 2, column 1"]),
        ("SELECT COUNT(*) FROM patients LIMIT 5", ["LIMIT", "column 31"]),
        ("SELECT sex, COUNT(*) FROM patients GROUP BY sex HAVING COUNT(*) > 3", ["HAVING"]),
        ("SELECT COUNT(DISTINCT age) FROM patients", ["COUNT(DISTINCT", "APPROX_COUNT_DISTINCT"]),
        ("SELECT SUM(age + 1) FROM patients", ["SUM", "age + 1", "column"]),
        ("SELECT COUNT(*) FROM patients WHERE abs(age) > 3", ["ABS", "WHERE", "column 37"]),
        ("SELECT COUNT(*) FROM patients WHERE age IN (SELECT 1)", ["subqueries", "column 45"]),
        ("SELECT STRING_AGG(sex) FROM patients", ["not supported"]),
        ("SELECT COUNT(*) FROM (SELECT * FROM patients)", ["FROM", "subquery"]),
        ("SELECT COUNT(*) FROM patients; DROP TABLE patients", ["one SQL statement"]),
        ("SELECT SUM(age) OVER () FROM patients", ["OVER"]),
        ("SELECT COUNT(*) FROM a UNION SELECT COUNT(*) FROM b", ["UNION"]),
        ("DELETE FROM patients", ["only SELECT"]),
        ("SELECT COUNT(*) FROM patients TABLESAMPLE 1 ROWS", ["FROM", "TABLESAMPLE"]),
        ("SELECT COUNT(*) FROM patients AT (VERSION => 1)", ["FROM", "time travel"]),
        ("SELECT SUM(age) FROM patients p(age, sex)", ["FROM", "column aliases"]),
        ("SELECT sex, COUNT(*) FROM patients GROUP BY sex, sex", ["GROUP BY", "'sex' twice"]),
    ],
)
def test_unsupported_sql_is_refused_naming_the_clause_and_where(sql: str, words: list[str]) -> None:
    with pytest.raises(QueryError) as info:
        plan(sql)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("'/etc/passwd'", "names '/etc/passwd', which is no site's table"),
        ('"/etc/passwd"', "names '/etc/passwd', which is no site's table"),
        ("'data.parquet'", "names 'data.parquet', which is no site's table"),
        ("'https://example.invalid/x.csv'", "names 'https://example.invalid/x.csv'"),
        ('"my patients"', "names 'my patients', which is no site's table"),
        ("read_csv('/etc/passwd')", "not the function READ_CSV"),
        ("read_parquet('x.parquet')", "not the function READ_PARQUET"),
    ],
)
def test_a_file_or_table_function_in_from_is_refused_before_any_site(
    source: str, named: str
) -> None:
    # A quoted file name was planned as a table and sent to every site, which each
    # refused it; the planner refuses it now, naming it
    sql = f"SELECT COUNT(*) FROM {source}"  # noqa: S608
    with pytest.raises(QueryError, match="FROM at line 1, column 17") as info:
        plan(sql)
    assert named in str(info.value)
    asked: list[str] = []

    class Watched(Site):
        def answer(self, request: Any, *, masked: bool = False) -> Any:
            asked.append(self.name)
            return super().answer(request, masked=masked)

    sites = [Watched({"patients": _frame(30)}, POLICY, name=n) for n in ("a", "b")]
    with pytest.raises(QueryError, match="FROM at line 1, column 17"):
        query(sites, sql, secure=False)
    assert asked == []


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("(" * 4000 + "age > 1" + ")" * 4000, "parentheses nest more than 24 deep"),
        ("NOT " * 4000 + "age > 1", "the query has more than 24 NOTs"),
    ],
)
def test_a_query_nested_too_deeply_is_refused_not_a_recursion_error(where: str, said: str) -> None:
    sites = [Site({"patients": _frame(30)}, POLICY)]
    with pytest.raises(QueryError, match=said):
        query(sites, "SELECT COUNT(*) FROM patients WHERE " + where, secure=False)  # noqa: S608


def _deep(frames: int, call: Callable[[], Any]) -> Any:
    """``call()`` made ``frames`` Python frames deeper than here (a notebook, an app)."""
    return call() if frames == 0 else _deep(frames - 1, call)


@pytest.mark.parametrize("frames", [0, 900])
def test_how_deep_a_query_may_nest_is_one_bound_whatever_the_callers_stack(frames: int) -> None:
    # The bound was Python's recursion limit inside the parser: about 41 parentheses or
    # 96 NOTs from a shallow stack, fewer from a deep one, and 96 NOTs passed the
    # server's check but not the sites' (whose handler frames left the parser less).
    sites = [Site({"patients": _frame(30)}, POLICY) for _ in range(2)]
    deepest = "NOT (" * 12 + "(" * 12 + "age > 1" + ")" * 24
    most_nots = "NOT " * 12 + "NOT (" * 12 + "age > 1" + ")" * 12
    for where in (deepest, most_nots):
        sql = "SELECT COUNT(*) FROM patients WHERE " + where  # noqa: S608
        got = _deep(frames, functools.partial(query, sites, sql, secure=False))
        assert got.iloc[0, 0] == 60
    sql = "SELECT COUNT(*) FROM patients WHERE " + "(" * 25 + "age > 1" + ")" * 25
    with pytest.raises(QueryError, match="parentheses nest more than 24 deep at line 1, column 61"):
        _deep(frames, lambda: plan(sql))


def test_a_where_deeper_than_the_sites_sql_engine_reads_is_refused_before_any_site() -> None:
    # 1500 additions passed the server, then every site failed with a hint to check
    # the literals' types (DuckDB reads at most 1000 levels)
    sites = [Site({"patients": _frame(30)}, POLICY)]
    where = "age" + " + 1" * 1500 + " > 0"
    with pytest.raises(QueryError, match=r"WHERE nests too deeply \(over 500 levels\)"):
        query(sites, "SELECT COUNT(*) FROM patients WHERE " + where, secure=False)  # noqa: S608
    where = "age" + " + 1" * 400 + " > 0"
    sql = "SELECT COUNT(*) FROM patients WHERE " + where  # noqa: S608
    assert query(sites, sql, secure=False).iloc[0, 0] == 30


@pytest.mark.parametrize(
    "sql",
    ["SELEC COUNT(*) FROM patients", "SELECT COUNT(* FROM patients", "SELECT 'open FROM t", ""],
)
def test_malformed_sql_gets_a_clear_error(sql: str) -> None:
    with pytest.raises(QueryError, match=r"malformed SQL|only SELECT|empty"):
        plan(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT MAX(age_at_diagnosis, 3) FROM patients",
        "SELECT MIN(age_at_diagnosis, 2) AS low FROM patients",
        "SELECT COUNT(age_at_diagnosis, sex) FROM patients",
        "SELECT COUNT(*, sex) FROM patients",
        "SELECT APPROX_COUNT_DISTINCT(sex, 0.1) FROM patients",
        "SELECT QUANTILE_DISC(age_at_diagnosis, 0.5, 3) FROM patients",
        "SELECT APPROX_TOP_K(sex, 2, 100) FROM patients",
    ],
)
def test_an_aggregate_given_more_arguments_than_it_takes_is_refused_not_cut(sql: str) -> None:
    # MAX(x, 3) is DuckDB's list of the 3 largest values: answering MAX(x) under that
    # name would be another statistic than the one asked for
    with pytest.raises(QueryError, match=r"takes \d arguments?, got \d"):
        plan(sql)


def test_aggregates_are_named_by_their_sql_text_or_alias() -> None:
    p = plan("SELECT sex, AVG(age_at_diagnosis), count(*) AS n FROM patients GROUP BY sex")
    assert [a.name for a in p.aggregates] == ["AVG(age_at_diagnosis)", "n"]


def test_a_forbidden_column_is_refused_with_the_reason() -> None:
    sites = [Site({"patients": _frame(50, s)}, POLICY, name=f"h{s}") for s in range(2)]
    with pytest.raises(PolicyError, match=r"column 'ssn' is not open"):
        query(sites, "SELECT COUNT(*) FROM patients WHERE ssn > 3", secure=False)
    with pytest.raises(PolicyError, match=r"no bounds for 'ssn'|column 'ssn'"):
        query(sites, "SELECT AVG(ssn) FROM patients", secure=False)


def test_min_max_only_where_allowed_and_never_secure() -> None:
    sites = [Site({"patients": _frame(50, s)}, POLICY) for s in range(2)]
    with pytest.raises(PolicyError, match="does not reveal the MIN or MAX"):
        query(sites, "SELECT MIN(age) FROM patients", secure=False)
    with pytest.raises(QueryError, match="never answered under secure aggregation") as info:
        query(sites, "SELECT MAX(age) FROM patients", secure=True)
    assert "ask without it (query(..., secure=False), covey query --no-secure)" in str(info.value)
    with pytest.raises(PolicyError, match=r"a policy lists such columns in min_max="):
        query(sites, "SELECT MIN(age) FROM patients", secure=False)


def test_a_site_without_a_policy_answers_nothing() -> None:
    open_site = Site({"patients": _frame(50)}, POLICY, name="open")
    closed = Site({"patients": _frame(50, 1)}, None, name="closed")
    df = query([open_site, closed], "SELECT COUNT(*) FROM patients", secure=False)
    assert df.attrs["sites"] == ["open"]
    assert "no policy" in df.attrs["refused"]["closed"]
    with pytest.raises(PolicyError, match="no site answers"):
        query([closed], "SELECT COUNT(*) FROM patients", secure=False)


def test_group_by_needs_a_declared_domain() -> None:
    site = Site({"patients": _frame(50)}, Policy(bounds={"age": (0, 120)}))
    with pytest.raises(PolicyError, match="declares no domain for 'sex'"):
        query([site], "SELECT sex, COUNT(*) FROM patients GROUP BY sex", secure=False)


def test_a_group_under_the_minimum_size_is_suppressed() -> None:
    frame = pd.DataFrame(
        {"sex": ["F"] * 30 + ["M"] * 4, "condition": "asthma", "age": 50.0, "ssn": 1}
    )
    sites = [Site({"patients": frame}, POLICY, name=f"h{i}") for i in range(2)]
    df = query(sites, "SELECT sex, COUNT(*), AVG(age) FROM patients GROUP BY sex", secure=False)
    assert df["COUNT(*)"].tolist()[0] == 60
    assert df[df["sex"] == "M"][["COUNT(*)", "AVG(age)"]].isna().all(axis=None)
    assert df.attrs["suppressed"] == [("M",)]
    # each site withheld its 4 men before answering: the total never saw them
    assert df.attrs["withheld_groups"] == 2


def test_the_total_is_checked_again_after_the_sites() -> None:
    # each site has 6 men: under the site minimum (5 here) they pass, the total minimum is 10...
    frame = pd.DataFrame({"sex": ["F"] * 20 + ["M"] * 6, "condition": "asthma", "age": 40.0})
    lenient = Policy(bounds={"age": (0, 120)}, domains={"sex": ["F", "M"]}, min_group_size=5)
    strict = Policy(bounds={"age": (0, 120)}, domains={"sex": ["F", "M"]}, min_group_size=20)
    df = query(
        [Site({"patients": frame}, lenient), Site({"patients": frame}, strict)],
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex",
        secure=False,
    )
    # the strict site withholds its men (6 < 20); the total (6) is under the largest minimum
    assert df.attrs["min_group_size"] == 20
    assert df["COUNT(*)"].tolist()[0] == 40
    assert np.isnan(df["COUNT(*)"].tolist()[1])


def test_values_outside_the_bounds_are_clipped_and_counted() -> None:
    frame = pd.DataFrame({"age": [10.0] * 10 + [200.0, -5.0]})
    site = Site({"p": frame}, Policy(bounds={"age": (0, 100)}, min_group_size=1))
    df = query([site], "SELECT SUM(age) FROM p", secure=False)
    assert df["SUM(age)"].iloc[0] == 200.0
    assert df.attrs["clipped"] == {"age": 2}


def test_a_site_with_a_sqlite_database_parquet_and_csv_answers(tmp_path: Path) -> None:
    frames = [_frame(40, s) for s in range(3)]
    db = tmp_path / "hospital.db"
    with closing(sqlite3.connect(db)) as con, con:
        frames[0].to_sql("patients", con, index=False)
    frames[1].to_parquet(tmp_path / "patients.parquet")
    frames[2].to_csv(tmp_path / "patients.csv", index=False)
    policy = Policy(bounds={"age": (0, 120)}, domains={"sex": ["F", "M"]}, min_group_size=1)
    sites = [
        Site({"patients": f"sqlite:///{db}"}, policy, name="sqlite"),
        Site({"patients": tmp_path / "patients.parquet"}, policy, name="parquet"),
        Site({"patients": str(tmp_path / "patients.csv")}, policy, name="csv"),
    ]
    sql = "SELECT sex, COUNT(*), SUM(age) FROM patients GROUP BY sex"
    df = query(sites, sql, secure=False)
    pooled = pd.concat(frames)
    for _, row in df.iterrows():
        part = pooled[pooled["sex"] == row["sex"]]
        assert row["COUNT(*)"] == len(part)
        assert row["SUM(age)"] == pytest.approx(part["age"].sum(), rel=1e-12)
    assert df.attrs["sites"] == ["sqlite", "parquet", "csv"]


def test_a_missing_sqlite_table_or_file_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    with closing(sqlite3.connect(db)) as con, con:
        con.execute("CREATE TABLE other (x INTEGER)")
    with pytest.raises(ValueError, match="has no table 'patients'"):
        Site({"patients": f"sqlite:///{db}"}, POLICY)
    with pytest.raises(FileNotFoundError, match="no SQLite database"):
        Site({"patients": f"sqlite:///{tmp_path / 'none.db'}"}, POLICY)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match=r"neither \.parquet nor \.csv"):
        Site({"patients": tmp_path / "x.json"}, POLICY)
    with pytest.raises(ValueError, match="not a valid table"):
        Site({"bad name": _frame(3)}, POLICY)


def test_policy_checks_its_own_settings() -> None:
    with pytest.raises(ValueError, match="low < high"):
        Policy(bounds={"age": (5, 1)})
    with pytest.raises(ValueError, match="distinct values"):
        Policy(domains={"sex": ["F", "F"]})
    with pytest.raises(ValueError, match="at least 1"):
        Policy(min_group_size=0)
    with pytest.raises(ValueError, match="epsilon must be positive"):
        Policy(epsilon=0)


def test_a_domain_too_long_or_with_a_repeat_says_how_not_every_value() -> None:
    # A domain of 5,000 codes was refused with the whole list in the message (tens of
    # kilobytes), not its length; a repeat among them was not named.
    with pytest.raises(ValueError, match=r"got 5000 values$") as long:
        Policy(domains={"code": list(range(5000))})
    assert len(str(long.value)) < 100
    with pytest.raises(ValueError, match="got 0 values"):
        Policy(domains={"code": []})
    with pytest.raises(ValueError, match=r"it lists 'F' twice$"):
        Policy(domains={"sex": ["F", "M", "F"]})
    with pytest.raises(ValueError, match=r"it lists 1 and True, one value$"):
        Policy(domains={"flag": [1, 0, True]})


@pytest.mark.parametrize(
    "bound", ["05", b"09", {0: "a", 5: "b"}, {0: 1, 5: 2}, (0, 5, 9), (0, True)]
)
def test_a_bound_that_is_not_a_pair_of_numbers_is_refused(bound: Any) -> None:
    # iterated as a pair: "05" read as (0, 5), b"09" as the codes (48, 57), and a
    # mapping was taken by the constructor and failed later in describe()
    with pytest.raises(ValueError, match=r"bounds\['x'\] must be"):
        Policy(bounds={"x": bound})


def test_a_policy_file_with_a_quoted_bound_is_refused(tmp_path: Path) -> None:
    import typer

    from covey.analytics._cli import load_policy

    path = tmp_path / "policy.toml"
    path.write_text('[policy]\nbounds = { x = "09" }\n')
    with pytest.raises(typer.BadParameter, match=r"bounds\['x'\] must be \(low, high\)"):
        load_policy(path)
    path.write_text("[policy]\nbounds = { x = [0, 9] }\n")
    assert load_policy(path).bounds == {"x": (0.0, 9.0)}
    numpy_pair = (np.float64(0.0), np.float64(9.0))
    assert Policy(bounds={"x": numpy_pair}).describe()["bounds"] == {"x": [0.0, 9.0]}


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("", "no \\[policy\\] table"),
        ("# the policy of site a\n", "no \\[policy\\] table"),
        ("min_group_size = 5\n", "no \\[policy\\] table"),
        ("[other]\nmin_group_size = 5\n", "no \\[policy\\] table"),
        ("policy = 3\n", "policy = 3, not a table"),
    ],
)
def test_a_policy_file_without_a_policy_table_is_refused(
    tmp_path: Path, text: str, found: str
) -> None:
    import typer

    from covey.analytics._cli import load_policy

    # read as Policy() it would open every column of every table
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(typer.BadParameter, match=rf"policy.toml has {found}: .* \[policy\] table"):
        load_policy(path)
    path.write_text("[policy]\nmin_group_size = 5\n")
    assert load_policy(path).min_group_size == 5


def test_a_single_name_given_as_a_string_is_refused_not_matched_by_substring() -> None:
    # "name" in "name_hash" and "a" in "age" hold for strings: such a policy would open more
    frame = pd.DataFrame({"name": ["x"] * 20, "name_hash": ["h"] * 20, "a": [99.0] * 20})
    with pytest.raises(
        TypeError, match=r"columns must be a list of names.*columns=\['name_hash'\]"
    ):
        Policy(columns="name_hash", domains={"name": ["x"]}, min_group_size=1)
    with pytest.raises(TypeError, match="min_max must be a list of names"):
        Policy(min_max=("age"), min_group_size=1)  # ("age") is a str, not a tuple
    with pytest.raises(TypeError, match="tables must be a list of names"):
        Policy(tables="p")
    policy = Policy(columns=["name_hash"], domains={"name": ["x"]}, min_max=["age"])
    with pytest.raises(PolicyError, match="column 'name' is not open to queries"):
        query(
            [Site({"p": frame}, policy)], "SELECT name, COUNT(*) FROM p GROUP BY name", secure=False
        )


def test_a_where_literal_of_the_wrong_type_is_refused_without_quoting_a_row() -> None:
    frame = pd.DataFrame({"name": ["Alice Secret", "Bob"] * 10, "age": [30.0, 40.0] * 10})
    policy = Policy(bounds={"age": (0, 120)}, min_group_size=1)
    site = Site({"p": frame}, policy, name="a")
    request = {
        "op": "answer",
        "sql": "SELECT COUNT(*) FROM p WHERE name = 1",
        "domains": {},
        "stats": [{"op": "count"}],
    }
    reply = run_task(site, 0, Task(TASK_KIND, 1, payload=request))
    assert "Alice" not in str(reply.error) + str(reply.result)
    assert "WHERE name = 1" in str(reply.result["refused"])
    for secure in (False, True):
        sites = [site, Site({"p": frame}, policy, name="b")] if secure else [site]
        with pytest.raises(Exception, match=r"Conversion error.*WHERE name = 1") as info:
            query(sites, "SELECT COUNT(*) FROM p WHERE name = 1", secure=secure)
        assert "Alice" not in str(info.value)


def test_a_site_whose_column_is_text_refuses_up_front_and_the_others_answer() -> None:
    policy = Policy(bounds={"age": (0, 120), "alive": (0, 1)}, min_group_size=1)
    good = pd.DataFrame({"age": np.arange(20.0), "alive": [True, False] * 10})
    text = pd.DataFrame({"age": ["30"] * 5, "alive": [True] * 5})
    sites = [Site({"p": good}, policy, name="a"), Site({"p": text}, policy, name="t")]
    df = query(sites, "SELECT COUNT(*), AVG(age) FROM p", secure=False)
    assert df["AVG(age)"].tolist() == [9.5]
    assert "needs numbers" in df.attrs["refused"]["t"]
    assert "'age'" in df.attrs["refused"]["t"]
    assert "VARCHAR" in df.attrs["refused"]["t"]
    with pytest.raises(Exception, match=r"two answering sites.*t: AVG\(age\) needs numbers"):
        query(sites, "SELECT AVG(age) FROM p", secure=True)
    km = query(sites[:1], "SELECT KAPLAN_MEIER(age, alive, 5) FROM p", secure=False)
    assert not km.attrs["refused"]


def test_a_sites_database_reads_no_file_even_past_the_sql_checks(tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("x\n1\n")
    frame_path = tmp_path / "patients.csv"
    _frame(30).to_csv(frame_path, index=False)
    site = Site({"patients": str(frame_path)}, POLICY)
    con = site._con  # what a query that slipped past plan() would run on
    for sql in (
        f"SELECT * FROM read_csv('{secret}')",  # noqa: S608
        f"COPY patients TO '{tmp_path / 'leak.csv'}'",
        "SET enable_external_access = true",
    ):
        with pytest.raises(duckdb.Error):
            con.execute(sql)
    assert not (tmp_path / "leak.csv").exists()
    assert query([site], "SELECT COUNT(*) FROM patients", secure=False).iloc[0, 0] == 30


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), "60"])
def test_a_timeout_that_waits_for_nothing_is_refused_before_any_site_answers(
    timeout: object,
) -> None:
    # It used to reach every site, drop each answer as late and say "no site answers".
    site = Site({"patients": _frame(50)}, POLICY)
    with pytest.raises(ValueError, match="timeout must be None or a positive number"):
        query([site], "SELECT COUNT(*) FROM patients", secure=False, timeout=timeout)  # type: ignore[arg-type]


class _Counting(Site):
    asked = 0

    def answer(self, request: Any, *, masked: bool = False) -> dict[str, Any]:
        type(self).asked += 1
        return super().answer(request, masked=masked)


@pytest.mark.parametrize("precision", [0, -1.0, float("nan"), "0.1", True])
def test_a_bad_quantile_precision_is_refused_before_any_site_computes(
    precision: object,
) -> None:
    # the sites computed the first stage before "the quantile precision must be
    # positive"; "0.1" failed with "could not convert string to float"
    site = _Counting({"patients": _frame(50)}, POLICY)
    with pytest.raises(ValueError, match="precision must be None or a positive number"):
        query([site], "SELECT MEDIAN(age) FROM patients", secure=False, precision=precision)  # type: ignore[arg-type]
    assert _Counting.asked == 0


def test_an_analyst_that_is_no_analyst_is_refused_by_name() -> None:
    site = Site({"patients": _frame(50)}, POLICY)
    with pytest.raises(TypeError, match=r"analyst must be a covey\.analytics\.Analyst, got str"):
        query([site], "SELECT COUNT(*) FROM patients", secure=False, epsilon=1.0, analyst="me")  # type: ignore[arg-type]


@pytest.mark.parametrize("secure", [False, True])
def test_a_where_the_sites_cannot_run_is_refused_with_their_reason(secure: bool) -> None:
    # Found only when the sites ran the query's first stage: the analyst read "stopped
    # answering mid-query" (under secure aggregation after "secure aggregation aborted
    # in stage mask"); each site now refuses it when it is described.
    frame = pd.DataFrame({"name": ["x", "y"] * 10, "age": [30.0, 40.0] * 10})
    policy = Policy(bounds={"age": (0, 120)}, min_group_size=1)
    sites = [Site({"p": frame}, policy, name=n) for n in "ab"]
    with pytest.raises(PolicyError) as info:
        query(sites, "SELECT SUM(age) FROM p WHERE name > 5", secure=secure)
    message = str(info.value)
    assert message.startswith("no site answers this query (a: this site could not run the query")
    assert "check that the literals in WHERE name > 5 have the types of their columns" in message
    assert "stage mask" not in message


def test_a_where_whose_literals_overflow_is_refused_naming_the_where() -> None:
    # Refused only as "(OutOfRange error in DuckDB)", naming neither the clause nor why.
    frame = pd.DataFrame({"id": np.arange(20), "age": np.full(20, 40.0)})
    policy = Policy(bounds={"age": (0, 120)}, min_group_size=1)
    sites = [Site({"p": frame}, policy, name=n) for n in "ab"]
    with pytest.raises(PolicyError) as info:
        query(sites, "SELECT SUM(age) FROM p WHERE id > 9223372036854775807 + 1", secure=False)
    assert (
        "arithmetic on the literals in WHERE id > 9223372036854775807 + 1 overflows their type"
    ) in str(info.value)


@pytest.mark.parametrize("secure", [False, True])
def test_a_site_whose_column_has_another_type_in_where_is_left_out_as_in_select(
    secure: bool,
) -> None:
    # One site keeps age as text: SELECT AVG(age) left it out, naming why, while
    # WHERE age > 35 failed the whole query mid-way ("c stopped answering mid-query").
    policy = Policy(bounds={"age": (0, 120)}, min_group_size=1)
    good = pd.DataFrame({"age": [30, 40, 50, 60] * 5})
    text = good.assign(age=good.age.astype(str))
    sites = [Site({"t": f}, policy, name=n) for n, f in zip("abc", (good, good, text), strict=True)]
    got = query(sites, "SELECT COUNT(*) FROM t WHERE age > 35", secure=secure)
    assert got.iloc[0, 0] == 30.0
    assert set(got.attrs["refused"]) == {"c"}
    assert "Binder error in DuckDB" in got.attrs["refused"]["c"]


def test_one_answering_site_under_secure_aggregation_names_the_option_of_both_apis() -> None:
    # the command line has no secure=False: its analyst read a Python keyword only
    frame = _frame(30)
    sites = [
        Site({"patients": frame}, POLICY, name="a"),
        Site({"patients": frame.drop(columns="age")}, POLICY, name="b"),
    ]
    with pytest.raises(FederationQueryError, match=r"secure=False \(covey query --no-secure\)"):
        query(sites, "SELECT AVG(age) FROM patients")


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        (
            "SELECT QUANTILE_CONT(age, [0.1, 0.9]) FROM patients",
            "QUANTILE_CONT must be a literal number, got [0.1, 0.9] at line 1, column 8",
        ),
        ("SELECT list(age) FROM patients", "the function LIST at line 1, column 8 is not"),
        ("SELECT string_agg(sex, ',') FROM patients", "function STRING_AGG at line 1, column 8"),
        ("SELECT SUM(age) % 2 FROM patients", "SUM(age) % 2 at line 1, column 8 is not supported"),
        ("SELECT 1 FROM patients", "1 at line 1, column 8 is not supported"),
        ("SELECT COUNT(*) FROM patients, visits", "FROM at line 1, column 17 names more than one"),
        ("SELECT COUNT(*) FROM patients WHERE", "malformed SQL at line 1, column 35: WHERE is"),
        (
            "SELECT COUNT(*) FROM patients WHERE sex ~ 'F'",
            "~ at line 1, column 41 is not allowed in WHERE; match text with LIKE",
        ),
        (  # these named sqlglot's nodes (NULLSAFENEQ, MOD, DPIPE, INTDIV) and the WHERE
            "SELECT COUNT(*) FROM patients WHERE age IS DISTINCT FROM 40",
            "IS DISTINCT FROM at line 1, column 41 is not allowed in WHERE",
        ),
        ("SELECT COUNT(*) FROM patients WHERE age % 2 = 0", "% at line 1, column 41 is not"),
        ("SELECT COUNT(*) FROM patients WHERE sex || 'x' = 'F'", "|| at line 1, column 41 is"),
        ("SELECT COUNT(*) FROM patients WHERE age // 10 = 4", "// at line 1, column 41 is not"),
        ("SELECT COUNT(*) FROM patients WHERE age[1] = 4", "[ at line 1, column 40 is not"),
    ],
)
def test_a_refusal_names_what_the_query_wrote_and_where(sql: str, said: str) -> None:
    # They named sqlglot's rewrites (PERCENTILE_CONT, ARRAY_AGG, GROUP_CONCAT, ADD,
    # LITERAL, "Required keyword: 'this' missing for <class ...Where>") and no position.
    with pytest.raises(QueryError) as info:
        plan(sql)
    assert said in str(info.value)


def test_like_with_an_escape_character_matches_a_literal_percent() -> None:
    # LIKE ... ESCAPE was refused ("ESCAPE is not allowed in WHERE"), so nothing matched a '%'
    frame = pd.DataFrame({"code": ["5%", "5%", "50", "5%x", "A_1", "AB1"]})
    sites = [Site({"p": frame}, Policy(min_group_size=1), name=n) for n in ("a", "b")]
    pooled = pd.concat([frame, frame])
    for where, want in [
        ("code LIKE '5!%' ESCAPE '!'", 4),
        ("code ILIKE '5#%%' ESCAPE '#'", 6),
        ("code LIKE 'A\\_%' ESCAPE '\\' AND code NOT LIKE '%!%%' ESCAPE '!'", 2),
    ]:
        sql = f"SELECT COUNT(*) FROM p WHERE {where}"  # noqa: S608
        df = query(sites, sql, secure=False)
        assert df["COUNT(*)"].tolist() == [want], where
        assert duckdb.query_df(pooled, "p", sql).fetchall() == [(want,)], where
    with pytest.raises(QueryError, match=r"ESCAPE at line 1, column 44 takes one character"):
        plan("SELECT COUNT(*) FROM p WHERE code LIKE 'a' ESCAPE 'ab'")


def test_a_date_literal_in_where_is_answered() -> None:
    # DATE '2012-01-01' was refused as "CAST is not allowed in WHERE" (a string worked).
    days = pd.to_datetime(["2011-12-31", "2012-01-01", "2012-01-02", "2013-05-05"])
    frame = pd.DataFrame({"d": days, "age": [30.0, 40.0, 50.0, 60.0]})
    policy = Policy(bounds={"age": (0, 100)}, min_group_size=1)
    sites = [Site({"p": frame}, policy, name=name) for name in ("a", "b")]
    for literal in ("DATE '2012-01-01'", "TIMESTAMP '2012-01-01 00:00:00'"):
        sql = f"SELECT COUNT(*), SUM(age) FROM p WHERE d > {literal}"  # noqa: S608
        assert query(sites, sql, secure=False).iloc[0].tolist() == [4.0, 220.0]
    for cast in ("CAST(age AS DATE)", "CAST('1' AS INTEGER)", "CAST(DATE '2012-01-01' AS DATE)"):
        sql = f"SELECT COUNT(*) FROM p WHERE {cast} > 1"  # noqa: S608
        with pytest.raises(QueryError):
            plan(sql)


def test_query_with_its_arguments_swapped_names_their_order() -> None:
    # said "the query is empty"
    site = Site({"patients": _frame(50)}, POLICY)
    with pytest.raises(QueryError, match=r"SQL text, got list \(query\(sites, sql\): the sites"):
        query("SELECT COUNT(*) FROM patients", [site])  # type: ignore[arg-type]


def test_an_answer_without_a_refusing_site_says_whose_rows_it_leaves_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the total came back as if it covered every site, with the refusal in df.attrs only
    sites = [Site({"patients": _frame(50, seed=i)}, POLICY, name=f"h{i}") for i in range(2)]
    closed = Site({"patients": _frame(50, seed=9)}, None, name="closed")  # answers nothing
    with caplog.at_level("WARNING", logger="covey"):
        df = query([*sites, closed], "SELECT COUNT(*) FROM patients", secure=False)
    assert float(df.iloc[0, 0]) == 100.0
    assert list(df.attrs["refused"]) == ["closed"]
    assert "2 of 3 sites answer this query; the answer leaves out the rows of closed" in caplog.text


@pytest.mark.parametrize("sql", [None, 42])
def test_a_query_that_is_not_text_is_refused_as_bytes_and_lists_are(sql: Any) -> None:
    # failed inside the SQL tokenizer with "object of type 'NoneType' has no len()"
    site = Site({"patients": _frame(50)}, POLICY)
    with pytest.raises(QueryError, match=r"the query must be SQL text, got (NoneType|int)"):
        plan(sql)
    with pytest.raises(QueryError, match=r"the query must be SQL text, got (NoneType|int)"):
        query([site], sql, secure=False)


@pytest.mark.parametrize(
    ("settings", "error", "said"),
    [
        # OverflowError: int too large to convert to float
        ({"bounds": {"x": (0, 10**400)}}, ValueError, r"bounds\['x'\] must be finite numbers"),
        # unhashable type: 'list'
        ({"domains": {"g": [[1]]}}, TypeError, r"domains\['g'\] values must be str, int or bool"),
        ({"domains": {"g": [{"a": 1}]}}, TypeError, r"domains\['g'\] values must be str"),
        # 'int' object is not iterable
        ({"columns": 3}, TypeError, r"columns must be a list of names, got 3"),
        ({"domains": 3}, TypeError, r"domains must be \{column: \[values\]\}, got 3"),
        ({"bounds": 3}, TypeError, r"bounds must be \{column: \(low, high\)\}, got 3"),
    ],
)
def test_a_policy_setting_of_the_wrong_shape_is_refused_naming_it(
    settings: dict[str, Any], error: type[Exception], said: str
) -> None:
    with pytest.raises(error, match=said):
        Policy(**settings)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[policy]\nbounds = { v = [0, 1" + "0" * 400 + "] }\n", r"bounds\['v'\] must be finite"),
        ("[policy]\ndomains = { g = [[1]] }\n", r"domains\['g'\] values must be str"),
    ],
)
def test_a_policy_file_with_a_setting_of_the_wrong_shape_is_refused(
    tmp_path: Path, text: str, said: str
) -> None:
    import typer

    from covey.analytics._cli import load_policy

    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(typer.BadParameter, match=said):
        load_policy(path)


@pytest.mark.parametrize(
    ("frame", "said"),
    [
        (pd.DataFrame(), "table 'p' has no columns"),
        (pd.DataFrame({"v": [1 + 2j]}), "column 'v' of type complex128 cannot be loaded"),
        (pd.DataFrame({"v": np.array([1j], dtype=np.complex64)}), "column 'v' of type complex64"),
        (pd.DataFrame({"v": pd.period_range("2020", periods=2, freq="M")}), r"type period\[M\]"),
        (pd.DataFrame({"v": pd.interval_range(0, 2)}), r"column 'v' of type interval\["),
        (pd.DataFrame({"v": pd.arrays.SparseArray([0.0, 1.0])}), r"column 'v' of type Sparse\["),
        (pd.DataFrame({"a": [1, 2], "v": [1, b"\x00"]}), "column 'v' of type object cannot be"),
    ],
)
def test_a_table_duckdb_cannot_load_is_refused_naming_its_column(
    frame: pd.DataFrame, said: str
) -> None:
    # raw duckdb errors naming neither the table nor the column
    with pytest.raises(ValueError, match=said):
        Site({"p": frame}, POLICY)


def test_a_sqlite_column_of_numbers_and_blobs_is_refused_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "mixed.db"
    with closing(sqlite3.connect(db)) as con, con:
        con.execute("CREATE TABLE p (id INTEGER, v)")  # an untyped column holds any value
        con.executemany("INSERT INTO p VALUES (?, ?)", [(1, 1), (2, b"\x00"), (3, 2.5)])
    with pytest.raises(ValueError, match=r"table 'p': column 'v' of type object cannot be loaded"):
        Site({"p": f"sqlite:///{db}"}, POLICY)


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        # these named the parser's own functions: POWER, REGEXP_LIKE, REGEXP_MATCHES, CAST
        ("SELECT COUNT(*) FROM p WHERE age ^ 2 > 4", "^ at line 1, column 34 is not allowed"),
        ("SELECT COUNT(*) FROM p WHERE age ** 2 > 4", "** at line 1, column 34 is not"),
        ("SELECT COUNT(*) FROM p WHERE age ^ 2 > 4", "for a square write x * x"),
        ("SELECT COUNT(*) FROM p WHERE sex !~ 'F'", "!~ at line 1, column 34 is not allowed"),
        ("SELECT COUNT(*) FROM p WHERE sex ~* 'f'", "~* at line 1, column 34 is not allowed"),
        ("SELECT COUNT(*) FROM p WHERE sex ~* 'f'", "match text with ILIKE"),
        ("SELECT COUNT(*) FROM p WHERE sex ^@ 'F'", "^@ at line 1, column 34 is not allowed"),
        ("SELECT COUNT(*) FROM p WHERE sex ^@ 'F'", "write col LIKE 'prefix%'"),
        ("SELECT COUNT(*) FROM p WHERE age::INT > 4", ":: at line 1, column 33 is not allowed"),
        ("SELECT COUNT(*) FROM p WHERE CAST(age AS INT) > 4", "CAST at line 1, column 30"),
        ("SELECT COUNT(*) FROM p WHERE sex -> 'F' = 1", "-> at line 1, column 34 is not"),
        ("SELECT COUNT(*) FROM p WHERE age <=> 4", "<=> at line 1, column 34 is not"),
        ("SELECT COUNT(*) FROM p WHERE regexp_matches(sex, 'F')", "REGEXP_MATCHES at line 1"),
        (
            "SELECT COUNT(*) FROM p WHERE ~age > 4",
            "~ at line 1, column 30 is not allowed in WHERE; use",
        ),
        ("SELECT COUNT(*) FROM p GROUP BY age ^ 2", "takes column names, got age ^ 2"),
        ("SELECT COUNT(*) FROM p GROUP BY sex ~ 'F'", "takes column names, got sex ~ 'F'"),
        ("SELECT SUM(age ^ 2) FROM p", "not the expression age ^ 2 at"),
        ("SELECT SUM(sex ~ 'F') FROM p", "not the expression sex ~ 'F' at"),
        ("SELECT AVG(-age) FROM p", "not the expression -age at"),
        ("SELECT SUM(age) ^ 2 FROM p", "SUM(age) ^ 2 at line 1, column 8 is not supported"),
        ("SELECT SUM(age) + COUNT(*) ^ 2 FROM p", "COUNT(*) ^ 2 at line 1, column 19 in"),
        ("SELECT SUM(age[1]) FROM p", "not the expression age[1] at"),
    ],
)
def test_a_refused_operator_is_named_as_written(sql: str, said: str) -> None:
    with pytest.raises(QueryError) as info:
        plan(sql)
    assert said in str(info.value)
    for internal in ("POWER", "REGEXP_LIKE", "REGEXP_MATCHES(", "STARTS_WITH", "JSON_EXTRACT"):
        assert internal not in str(info.value)


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        # a type after :: keeps no position: these showed CAST(COUNT(*) AS DOUBLE),
        # CAST(sex AS TEXT) and "the function CAST", which the query never wrote
        ("SELECT COUNT(*)::DOUBLE FROM p", "COUNT(*)::DOUBLE at line 1, column 8 is not"),
        ("SELECT AVG(age)::INT AS a FROM p", "AVG(age)::INT at line 1, column 8 is not"),
        ("SELECT COUNT(*) + SUM(age)::INT FROM p", "SUM(age)::INT at line 1, column 19 in"),
        ("SELECT COUNT(*) FROM p GROUP BY sex::VARCHAR", "column names, got sex::VARCHAR"),
        ("SELECT sex::VARCHAR, COUNT(*) FROM p GROUP BY sex", "sex::VARCHAR at line 1, column 8"),
        ("SELECT SUM(age)::DECIMAL(10, 2) FROM p", "SUM(age)::DECIMAL(10, 2) at line 1"),
        ("SELECT CAST(COUNT(*) AS INT) FROM p", "CAST(COUNT(*) AS INT) at line 1, column 8"),
    ],
)
def test_a_cast_by_double_colon_is_named_as_written(sql: str, said: str) -> None:
    with pytest.raises(QueryError) as info:
        plan(sql)
    assert said in str(info.value)
    if "::" in sql:
        assert "CAST" not in str(info.value)
