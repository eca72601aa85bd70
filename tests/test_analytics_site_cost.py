"""What building a site and answering a query cost in DuckDB statements and SQL parses.

Many sites simulated in one process each pay these, so they are counted here
(not timed): a site describes each of its tables once, when it loads them, and
the sites of one process parse one query's text once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from covey.analytics import Policy, QueryError, Site, query


class _Counting:
    """A DuckDB connection (or cursor) that records the statements run on it."""

    def __init__(self, con: Any, seen: list[str]) -> None:
        self.con, self.seen = con, seen

    def execute(self, sql: str, *args: Any) -> Any:
        self.seen.append(sql)
        return self.con.execute(sql, *args)

    def cursor(self) -> _Counting:
        return _Counting(self.con.cursor(), self.seen)

    def __enter__(self) -> _Counting:
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.con.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def _frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "sex": rng.choice(["F", "M"], 200),
            "age": rng.uniform(0, 100, 200).round(1),
            "bmi": rng.uniform(15, 40, 200).round(1),
        }
    )
    frame.loc[::7, "age"] = np.nan
    frame.loc[::5, "bmi"] = np.nan
    return frame


POLICY = Policy(
    bounds={"age": (0, 110), "bmi": (10, 70)}, domains={"sex": ["F", "M"]}, min_group_size=5
)


def test_a_site_describes_each_table_once_whatever_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DESCRIBE ran twice per table as a site loaded it, then twice more per stage
    # of every query with a WHERE (its type check and its computation), and once
    # per check of a query: the tables never change after loading
    seen: list[str] = []
    connect = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: _Counting(connect(*a, **k), seen))
    _frame(2).to_parquet(tmp_path / "visits.parquet")
    site = Site({"patients": _frame(1), "visits": str(tmp_path / "visits.parquet")}, POLICY)

    def described() -> list[str]:
        return sorted(s.split()[1] for s in seen if s.lstrip().upper().startswith("DESCRIBE"))

    assert described() == ['"patients"', '"visits"']
    for sql in (
        "SELECT sex, AVG(age), STDDEV_SAMP(bmi), COUNT(*) FROM patients "
        "WHERE age > 20 GROUP BY sex",
        "SELECT MEDIAN(bmi) FROM Visits WHERE sex = 'F' AND bmi < 35",
    ):
        df = query([site], sql, secure=False, precision=1e-3)
        assert len(df) >= 1
    assert len(seen) > 10  # the queries ran on the counted connection
    assert described() == ['"patients"', '"visits"']


def test_the_sites_of_one_process_parse_a_query_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # every site parsed the SQL again for its check and for every stage it answered
    from covey.analytics import _sql

    parsed: list[str] = []
    parse = _sql._plan

    def counting(sql: str) -> Any:
        parsed.append(sql)
        return parse(sql)

    monkeypatch.setattr(_sql, "_plan", counting)
    kept = getattr(_sql, "_kept_plan", None)
    if kept is not None:  # a text kept before this test would not be parsed in it
        kept.cache_clear()
    frames = [_frame(seed) for seed in range(4)]
    sites = [Site({"patients": f}, POLICY, name=f"site-{i}") for i, f in enumerate(frames)]
    sql = (
        "SELECT sex, AVG(age), VAR_SAMP(age), COUNT(*) FROM patients WHERE bmi > 18.25 GROUP BY sex"
    )
    for secure in (False, True):
        df = query(sites, sql, secure=secure).set_index("sex")
        assert parsed == [sql]
        # the answers are those of the pooled rows
        pooled = pd.concat(frames)
        pooled = pooled[pooled["bmi"] > 18.25].groupby("sex")["age"]
        np.testing.assert_allclose(df["AVG(age)"], pooled.mean(), rtol=1e-9)
        np.testing.assert_allclose(df["VAR_SAMP(age)"], pooled.var(), rtol=1e-9)
        np.testing.assert_array_equal(df["COUNT(*)"], pooled.size())
    # a refused text is refused each time, never kept
    for _ in range(2):
        with pytest.raises(QueryError, match="row-level"):
            query(sites, "SELECT sex FROM patients GROUP BY sex", secure=False)
    assert parsed.count("SELECT sex FROM patients GROUP BY sex") == 2


def test_nan_in_several_float_columns_of_a_file_is_null_in_each(tmp_path: Path) -> None:
    # a file's NaN became NULL one column at a time; now in one statement for all
    frame = _frame(3).astype({"bmi": "float32"})
    frame.loc[[0, 1, 2], ["age", "bmi"]] = np.nan  # in both columns of a row, and apart
    frame.to_parquet(tmp_path / "t.parquet")
    sql = "SELECT sex, COUNT(age), SUM(age), COUNT(bmi), AVG(bmi), COUNT(*) FROM t GROUP BY sex"
    got = [
        query([Site({"t": source}, POLICY)], sql, secure=False)
        for source in (frame, str(tmp_path / "t.parquet"))
    ]
    pd.testing.assert_frame_equal(got[1], got[0])
    counts = frame.groupby("sex").count()
    np.testing.assert_array_equal(got[0]["COUNT(age)"], counts["age"])
    np.testing.assert_array_equal(got[0]["COUNT(bmi)"], counts["bmi"])
