"""Values of every kind a site's table may hold, against DuckDB on the pooled rows."""

from __future__ import annotations

import decimal
import sqlite3
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from covey.analytics import Policy, Site, query


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
    with sqlite3.connect(tmp_path / "h.db") as db:
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
