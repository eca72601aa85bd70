"""DP noise at the right scale, budgets charged and enforced; secure aggregation hides sites."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from covey.analytics import Analyst, FederationQueryError, Policy, PolicyError, Site, _dp, query
from covey.analytics._site import sensitivity
from covey.clients import run_task
from covey.core import Reply, Task
from covey.transport import MemoryTransport


def _sites(k: int = 3, budget: float | None = None) -> list[Site]:
    policy = Policy(
        bounds={"age": (0, 100)}, domains={"sex": ["F", "M"]}, min_group_size=1, epsilon=budget
    )
    rng = np.random.default_rng(11)
    return [
        Site(
            {
                "p": pd.DataFrame(
                    {"sex": rng.choice(["F", "M"], 200), "age": rng.uniform(0, 100, 200)}
                )
            },
            policy,
            name=f"h{i}",
        )
        for i in range(k)
    ]


def test_noise_shares_sum_to_the_mechanism() -> None:
    rng = np.random.default_rng(0)
    for mechanism, sd in (("laplace", np.sqrt(2) * 2.0), ("gaussian", 2.0)):
        total = sum(_dp.noise_share(mechanism, 2.0, 5, 200_000, rng) for _ in range(5))
        assert np.std(total) == pytest.approx(sd, rel=0.02)
        if mechanism == "laplace":  # Laplace(b): mean absolute deviation b
            assert np.mean(np.abs(total)) == pytest.approx(2.0, rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_dp_error_over_many_runs_matches_the_mechanism_and_is_charged(mechanism: str) -> None:
    sites = _sites(3)
    exact = query(sites, "SELECT sex, COUNT(*), SUM(age) FROM p GROUP BY sex", secure=False)
    runs = 40
    errors = []
    for i in range(runs):
        # a fresh WHERE each run, so no answer comes from the sites' caches
        sql = f"SELECT sex, COUNT(*), SUM(age) FROM p WHERE age >= -{i + 1} GROUP BY sex"  # noqa: S608
        noisy = query(sites, sql, secure=False, epsilon=1.0, mechanism=mechanism)
        errors.append(
            noisy[["COUNT(*)", "SUM(age)"]].to_numpy() - exact[["COUNT(*)", "SUM(age)"]].to_numpy()
        )
    privacy = noisy.attrs["privacy"]
    multiplier = privacy["noise_multiplier"]
    assert privacy["releases"] == 3  # COUNT(*), and COUNT(age) with SUM(age)
    assert privacy["epsilon"] == pytest.approx(1.0, rel=1e-3)
    err = np.asarray(errors)
    # per-unit noise: a count moves by 1 per record, a sum by the bound (100)
    units = np.concatenate([err[:, :, 0].ravel(), err[:, :, 1].ravel() / 100.0])
    expected = multiplier * (np.sqrt(2) if mechanism == "laplace" else 1.0)
    # 4 * runs draws: the standard error of their spread is under 9%, so 30% is > 3 of them
    assert np.sqrt(np.mean(units**2)) == pytest.approx(expected, rel=0.3)
    assert abs(np.mean(units)) < 4 * expected / np.sqrt(units.size)
    # every site charged the query's epsilon once per run
    for site in sites:
        assert site.epsilon_spent == pytest.approx(
            _dp.epsilon_of([_dp.event(mechanism, multiplier, 3)] * runs, 1e-6), rel=1e-6
        )


def test_a_repeated_query_is_answered_from_the_cache_and_charged_once() -> None:
    sites = _sites(2, budget=2.0)
    sql = "SELECT sex, COUNT(*) FROM p GROUP BY sex"
    first = query(sites, sql, secure=False, epsilon=1.0)
    spent = [s.epsilon_spent for s in sites]
    again = query(sites, sql, secure=False, epsilon=1.0)
    pd.testing.assert_frame_equal(first, again)
    assert [s.epsilon_spent for s in sites] == spent
    assert spent[0] == pytest.approx(1.0, rel=1e-3)


def test_a_site_budget_is_enforced_and_the_reason_shown() -> None:
    sites = _sites(2, budget=1.5)
    with pytest.raises(PolicyError, match="answers only with differential privacy"):
        query(sites, "SELECT COUNT(*) FROM p", secure=False)
    query(sites, "SELECT COUNT(*) FROM p", secure=False, epsilon=1.0)
    with pytest.raises(FederationQueryError, match="privacy budget is spent"):
        query(sites, "SELECT SUM(age) FROM p", secure=False, epsilon=1.0)


def test_a_site_refuses_noise_calibrated_below_its_own_sensitivity() -> None:
    site = _sites(1)[0]
    request = {
        "op": "answer",
        "sql": "SELECT SUM(age) FROM p",
        "secure": False,
        "domains": {},
        "stats": [{"op": "sum", "col": "age", "sensitivity": 1.0}],
        "dp": {"mechanism": "laplace", "multiplier": 1.0, "shares": 1},
    }
    reply = run_task(site, 0, Task("analyze", 1, payload=request))
    assert "below this site's 100.0" in reply.result["refused"]
    assert sensitivity({"op": "sum", "col": "age"}, {"age": (0, 100)}, "laplace") == 100.0


class SpyTransport(MemoryTransport):
    """A memory transport that keeps every reply the server receives."""

    def __init__(self, sites: list[Site]) -> None:
        super().__init__(list(range(len(sites))), lambda cid, task: run_task(sites[cid], cid, task))
        self.seen: list[Reply] = []

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        for reply in super().exchange(tasks, timeout=timeout):
            self.seen.append(reply)
            yield reply


def _arrays(value: Any) -> Iterator[np.ndarray]:
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _arrays(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _arrays(v)


def test_under_secure_aggregation_the_server_never_holds_a_single_site_answer() -> None:
    sites = _sites(3)
    sql = "SELECT sex, COUNT(*), SUM(age), AVG(age) FROM p GROUP BY sex"
    spy = SpyTransport(sites)
    secure = query(spy, sql, secure=True)
    plain = query(_sites(3), sql, secure=False)
    np.testing.assert_array_equal(secure["COUNT(*)"], plain["COUNT(*)"])
    np.testing.assert_allclose(secure["AVG(age)"], plain["AVG(age)"], rtol=1e-6)
    # what each site would have sent in the clear
    own = []
    for site in _sites(3):
        rows = site._con.execute("SELECT COUNT(*) FROM p GROUP BY sex ORDER BY sex").fetchall()
        own.append({int(c[0]) for c in rows})
    assert spy.seen, "the spy saw nothing"
    for reply in spy.seen:
        assert reply.ok, reply.error
        assert not (isinstance(reply.result, Mapping) and "vectors" in reply.result)
        for arr in _arrays(reply.result):
            if arr.dtype.kind in "iu" and arr.size >= 2:
                values = {int(v) for v in arr.ravel()[:2]}
                for site_counts in own:
                    assert values != site_counts, "a site's counts reached the server unmasked"


def test_an_analyst_budget_spans_queries_and_a_repeat_is_charged_once() -> None:
    sites = _sites(2)
    analyst = Analyst(epsilon=1.5)
    sql = "SELECT sex, COUNT(*) FROM p GROUP BY sex"
    first = query(sites, sql, secure=False, epsilon=1.0, analyst=analyst)
    assert analyst.spent == pytest.approx(1.0, rel=1e-3)
    assert first.attrs["privacy"]["analyst_spent"] == pytest.approx(1.0, rel=1e-3)
    query(sites, sql, secure=False, epsilon=1.0, analyst=analyst)
    assert analyst.spent == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(PermissionError, match="privacy budget is spent"):
        query(sites, "SELECT SUM(age) FROM p", secure=False, epsilon=1.0, analyst=analyst)
    assert analyst.spent == pytest.approx(1.0, rel=1e-3)
