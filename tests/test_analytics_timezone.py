"""A TIMESTAMP WITH TIME ZONE column (pandas' ``datetime64[ns, UTC]``) is read in UTC.

Its values matched no day of a domain (their text carried the offset, ``+00``), and
a site read it, and the times a query compares it with, in its machine's time zone:
the same rows answered otherwise at a site in Auckland than at one in London.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd

from covey.analytics import Policy, Site, query

TIMES = ["2024-01-01 00:00", "2024-01-01 09:00", "2024-01-01 23:30", "2024-01-02 00:00"]

SCRIPT = textwrap.dedent(
    """
    import json, sys

    import pandas as pd

    from covey.analytics import Policy, Site, query

    frame = pd.DataFrame({"d": pd.to_datetime(json.loads(sys.argv[1])).tz_localize("UTC")})
    policy = Policy(
        domains={"d": ["2024-01-01", "2024-01-02", "2024-01-01 09:00:00"]},
        min_group_size=1,
        distinct=["d"],
    )
    site = Site({"t": frame}, policy)
    answers = [
        query([site], sql, secure=False).iloc[:, -1].tolist()
        for sql in (
            "SELECT d, COUNT(*) FROM t GROUP BY d",
            "SELECT COUNT(*) FROM t WHERE d < '2024-01-01 12:00'",
            "SELECT COUNT(*) FROM t WHERE d < DATE '2024-01-02'",
            "SELECT APPROX_TOP_K(d, 4) FROM t",
        )
    ]
    print(json.dumps(answers, default=str))
    """
)


def test_a_column_of_a_time_zone_groups_by_its_days_in_utc() -> None:
    # each group was NaN: the values read '2024-01-01 00:00:00+00', no day of the domain
    utc = pd.to_datetime(TIMES).tz_localize("UTC")
    frames = [pd.DataFrame({"d": utc}), pd.DataFrame({"d": utc.tz_convert("Asia/Tokyo")})]
    policy = Policy(
        domains={"d": ["2024-01-01", "2024-01-02T09:00:00+09:00", "2024-01-01 09:00:00"]},
        min_group_size=1,
    )
    sites = [Site({"t": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]
    got = query(sites, "SELECT d, COUNT(*) FROM t GROUP BY d", secure=False)
    # the second value names 2024-01-02 00:00 UTC; a row at 23:30 is in no group
    assert got["COUNT(*)"].tolist() == [2.0, 2.0, 2.0]
    assert got.attrs["outside_domain"] == 2


def test_a_site_answers_a_time_zone_column_alike_in_any_time_zone() -> None:
    answers = []
    for zone in ("UTC", "Pacific/Auckland", "America/Los_Angeles"):
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, json.dumps(TIMES)],
            env={**os.environ, "TZ": zone},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    assert answers[0] == [
        [1.0, 1.0, 1.0],
        [2.0],
        [3.0],
        [["2024-01-01", "2024-01-01 09:00:00", "2024-01-01 23:30:00", "2024-01-02"]],
    ]
    assert answers[1] == answers[0]
    assert answers[2] == answers[0]
