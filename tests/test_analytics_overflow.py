"""Sums past the largest float64: refused with the aggregate and the column, never a number.

A site's sum over its own rows, its noise, or the server's sum across the sites
can pass the largest float64 when the bounds allow values near it. The answer
was the largest float64 (a site's infinite sum read as a number) or inf with a
RuntimeWarning (the server's), both presented as answers.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
import pytest

from covey.analytics import TASK_KIND, FederationQueryError, Policy, QueryError, Site, query
from covey.clients import run_task
from covey.core import Task

HUGE = Policy(bounds={"x": (0, 1e308)}, min_group_size=1)


def sites(values: list[list[float]], policy: Policy = HUGE) -> list[Site]:
    return [Site({"p": pd.DataFrame({"x": v})}, policy, name=f"s{i}") for i, v in enumerate(values)]


@pytest.mark.parametrize(
    ("aggregate", "stat"),
    [
        ("SUM(x)", "values"),
        ("AVG(x)", "values"),
        ("VAR_POP(x)", "values"),  # its first stage's sums already overflow
    ],
)
def test_a_site_whose_sum_passes_float64_refuses_naming_it(aggregate: str, stat: str) -> None:
    sql = f"SELECT {aggregate} FROM p"  # noqa: S608
    # the site answered the largest float64 for its sum, read as 1.797e308
    said = (
        rf"s0 stopped answering mid-query: {re.escape(aggregate)} "
        rf"cannot be answered: the sum of the {stat} of 'x' over this site's rows overflows "
        r"float64 \(it passes the largest float64, about 1\.8e308\); declare bounds of 'x'"
    )
    with pytest.raises(FederationQueryError, match=said):
        query(sites([[1e308, 1e308], [1.0]]), sql, secure=False)
    # a group the site withholds (under its minimum) is answered as zero, overflow or not
    small = Policy(bounds={"x": (0, 1e308)}, min_group_size=3)
    df = query(sites([[1e308, 1e308], [1.0] * 5], small), "SELECT SUM(x) FROM p", secure=False)
    assert df.iloc[0, 0] == 5.0


@pytest.mark.parametrize("aggregate", ["SUM(x)", "AVG(x)", "STDDEV_SAMP(x)"])
def test_the_sum_across_sites_past_float64_is_refused_naming_it(aggregate: str) -> None:
    sql = f"SELECT {aggregate} FROM p"  # noqa: S608
    # each site's sum is finite; their sum was inf, with "overflow encountered in add"
    said = (
        rf"^{re.escape(aggregate)} cannot be answered: the sum of the values of 'x' across the "
        r"sites overflows float64 \(it passes the largest float64, about 1\.8e308\)"
    )
    with pytest.raises(FederationQueryError, match=said):
        query(sites([[1e308], [1e308]]), sql, secure=False)
    negative = Policy(bounds={"x": (-1e308, 0)}, min_group_size=1)
    with pytest.raises(FederationQueryError, match=said):
        query(sites([[-1e308], [-1e308]], negative), sql, secure=False)


def test_noise_whose_scale_passes_float64_is_refused_before_any_site_spends() -> None:
    # the noise's scale (multiplier times 1e308) was inf: each site drew inf - inf
    policy = Policy(bounds={"x": (0, 1e308)}, min_group_size=1, epsilon=10.0, max_epsilon=10.0)
    both = sites([[1.0, 2.0], [3.0]], policy)
    said = r"the bounds of 'x' are too wide for DP: the sensitivity of its sums .* overflows"
    with pytest.raises(QueryError, match=said):
        query(both, "SELECT SUM(x) FROM p", secure=False, epsilon=1.0)
    assert [s.epsilon_spent for s in both] == [0.0, 0.0]


def test_noise_that_takes_a_site_s_sum_past_float64_is_refused_naming_it() -> None:
    # the site's noisy sum overflowed in numpy: "overflow encountered in add"
    policy = Policy(bounds={"x": (0, 1e308)}, min_group_size=1, max_epsilon=100.0)
    said = r"s0 stopped answering mid-query: SUM\(x\) cannot be answered: the sum of the values"
    with pytest.raises(FederationQueryError, match=said):
        query(sites([[1e308] * 3], policy), "SELECT SUM(x) FROM p", secure=False, epsilon=50.0)


def test_a_noise_request_whose_scale_overflows_is_refused_by_the_site() -> None:
    # a server asking for a multiplier that makes the scale inf: the site drew inf - inf
    site = sites([[1.0, 2.0]])[0]
    request: dict[str, Any] = {
        "op": "answer",
        "sql": "SELECT SUM(x) FROM p",
        "secure": False,
        "domains": {},
        "stats": [
            {"op": "count", "sensitivity": 1.0},
            {"op": "count_col", "col": "x", "sensitivity": 1.0},
            {"op": "sum", "col": "x", "sensitivity": 1e308},
        ],
        "dp": {"mechanism": "laplace", "multiplier": 1e10, "shares": 1, "releases": 3},
    }
    reply = run_task(site, 0, Task(TASK_KIND, 1, payload=request))
    assert reply.error is None, reply.error
    assert isinstance(reply.result, dict)
    assert reply.result["refused"] == "bad noise request: the noise scale of sum overflows"
