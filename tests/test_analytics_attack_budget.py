"""An analyst's budget against repeats that are not repeats, and a site's budget across restarts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import covey.analytics._site as site_module
from covey.analytics import Analyst, Policy, Site, query

POLICY = Policy(bounds={"x": (0, 10)}, min_group_size=5)
SQL = "SELECT SUM(x) FROM t"


def _site(i: int) -> Site:
    rng = np.random.default_rng(i)
    return Site({"t": pd.DataFrame({"x": rng.uniform(0, 10, 50)})}, POLICY, name=f"s{i}")


@pytest.mark.parametrize("secure", [False, True])
def test_the_same_sql_over_other_sites_is_charged_again(secure: bool) -> None:
    a, b, c = _site(0), _site(1), _site(2)
    analyst = Analyst(epsilon=10.0)
    query([a, b], SQL, secure=secure, epsilon=1.0, analyst=analyst)
    once = analyst.spent
    query([a, b, c], SQL, secure=secure, epsilon=1.0, analyst=analyst)
    # a third site's fresh noisy answer: the difference of the two totals is its sum
    assert analyst.spent > once * 1.5
    query([a, b, c], SQL, secure=secure, epsilon=1.0, analyst=analyst)
    assert analyst.spent == pytest.approx(2 * once, rel=0.05)  # a true repeat stays free


@pytest.mark.parametrize("secure", [False, True])
def test_a_repeat_a_site_answers_afresh_is_charged(
    secure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(site_module, "MAX_CACHE", 1)
    sites = [_site(0), _site(1)]
    analyst = Analyst(epsilon=10.0)
    first = query(sites, SQL, secure=secure, epsilon=1.0, analyst=analyst)
    query(sites, "SELECT COUNT(*) FROM t", secure=secure, epsilon=1.0, analyst=analyst)
    spent = analyst.spent
    again = query(sites, SQL, secure=secure, epsilon=1.0, analyst=analyst)
    # the sites' caches let the first answer go: new noise, a new release
    assert again.iloc[0, 0] != first.iloc[0, 0]
    assert analyst.spent > spent * 1.2
    assert again.attrs["privacy"]["analyst_spent"] == analyst.spent
