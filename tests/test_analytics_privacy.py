"""DP noise at the right scale, budgets charged and enforced; secure aggregation hides sites."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import dp_accounting as dpa
import numpy as np
import pandas as pd
import pytest

from covey.analytics import (
    Analyst,
    Policy,
    PolicyError,
    QueryError,
    Site,
    _dp,
    query,
)
from covey.analytics._cli import result_table
from covey.analytics._fixedpoint import sensitivity
from covey.clients import run_task
from covey.core import Reply, Task
from covey.privacy import Ledger
from covey.transport import MemoryTransport


def _dpa_epsilon(events: list[Any], delta: float) -> float:
    """What dp-accounting's RDP accountant says of composing ``events``, independently."""
    accountant = dpa.rdp.RdpAccountant()
    accountant.compose(dpa.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


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
    for k, site in enumerate(sites):
        # Sites draw their noise from the OS; seeded here so that this statistical check
        # cannot fail by chance (the spread of 160 Laplace draws' RMS is about 11%).
        site._rng = np.random.default_rng(1000 + k)
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
    expected *= np.sqrt(len(sites))  # unmasked, each site's answer carries all the noise
    # 4 * runs draws: the standard error of their spread is under 9%, so 30% is > 3 of them
    assert np.sqrt(np.mean(units**2)) == pytest.approx(expected, rel=0.3)
    assert abs(np.mean(units)) < 4 * expected / np.sqrt(units.size)
    # every site charged the query's epsilon once per run
    for site in sites:
        assert site.epsilon_spent == pytest.approx(
            _dpa_epsilon([_dp.event(mechanism, multiplier, 3)] * runs, 1e-6), rel=1e-6
        )


@pytest.mark.parametrize("delta", [0.0, 1.0, 2.0, "1e-6"])
def test_a_bad_query_delta_is_named_before_any_site_is_asked(delta: Any) -> None:
    sites = _sites()
    with pytest.raises(ValueError, match="delta must be a number in \\(0, 1\\)"):
        query(sites, "SELECT COUNT(*) FROM p", epsilon=1.0, mechanism="gaussian", delta=delta)
    assert all(site.epsilon_spent == 0.0 for site in sites)


@pytest.mark.parametrize("secure", [False, True])
def test_the_answer_lists_each_sites_budget_spent(secure: bool) -> None:
    sites = _sites(budget=5.0)
    df = query(sites, "SELECT AVG(age) FROM p", epsilon=1.0, secure=secure)
    spent = df.attrs["privacy"]["site_spent"]
    assert spent == {site.name: site.epsilon_spent for site in sites}
    assert all(value > 0 for value in spent.values())


def test_approx_count_distinct_is_not_answered_with_dp() -> None:
    # noise on 65,536 buckets made 3 distinct values read as about 23,000
    sites = _sites(budget=5.0)
    with pytest.raises(QueryError, match="APPROX_COUNT_DISTINCT is not answered with DP"):
        query(sites, "SELECT APPROX_COUNT_DISTINCT(sex) FROM p", epsilon=2.0)
    assert all(site.epsilon_spent == 0.0 for site in sites)


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
    # it said "the site's privacy budget is spent" with a third of it left
    with pytest.raises(PolicyError, match="privacy budget cannot pay for this query") as info:
        query(sites, "SELECT SUM(age) FROM p", secure=False, epsilon=1.0)
    assert "would take it to 1.994; ask with epsilon " in str(info.value)
    multiplier = _dp.calibrate("laplace", 1.0, 1e-6, 1)
    event = _dp.event("laplace", multiplier, 1)
    budget = _dp.Budget(epsilon=_dp.cost("laplace", multiplier, 1, 1e-6), delta=1e-6)
    budget.charge(event)  # all of it: now it is spent
    with pytest.raises(PermissionError, match=r"budget is spent: epsilon 1 of 1 used, .* 1.994$"):
        budget.check(event)


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
    with pytest.raises(PermissionError, match="privacy budget cannot pay for this"):
        query(sites, "SELECT SUM(age) FROM p", secure=False, epsilon=1.0, analyst=analyst)
    assert analyst.spent == pytest.approx(1.0, rel=1e-3)


def test_the_ledgers_epsilon_is_dp_accountings_over_a_sequence_of_queries() -> None:
    sites = _sites(2)
    analyst = Analyst(delta=1e-5)
    asked = [
        ("SELECT sex, COUNT(*) FROM p GROUP BY sex", 0.5, "laplace"),
        ("SELECT SUM(age), COUNT(*) FROM p", 0.3, "gaussian"),
        ("SELECT sex, COUNT(*) FROM p GROUP BY sex", 0.5, "laplace"),  # a repeat
        ("SELECT sex, AVG(age) FROM p GROUP BY sex", 0.8, "laplace"),
    ]
    events = []
    for sql, eps, mechanism in asked:
        df = query(sites, sql, secure=False, epsilon=eps, mechanism=mechanism, analyst=analyst)
        privacy = df.attrs["privacy"]
        event = _dp.event(mechanism, privacy["noise_multiplier"], privacy["releases"])
        if event not in events:
            events.append(event)
        assert privacy["epsilon"] == pytest.approx(_dpa_epsilon([event], 1e-6), rel=1e-9)
        assert privacy["epsilon"] == pytest.approx(eps, rel=1e-3)
    # the analyst: one event per distinct query, the repeat charged once
    assert analyst.ledger.rounds == 3
    assert analyst.spent == pytest.approx(_dpa_epsilon(events, 1e-5), rel=1e-9)
    assert analyst.ledger.epsilon(1e-5) == analyst.spent
    # each site: the same events (every query here is one stage), accounted at its delta
    for site in sites:
        assert site.budget.ledger.event() == dpa.ComposedDpEvent(
            [dpa.SelfComposedDpEvent(e, 1) for e in events]
        )
        assert site.epsilon_spent == pytest.approx(_dpa_epsilon(events, 1e-6), rel=1e-9)
    # readable as JSON (and rebuilt from it) and as a privacy statement
    data = json.loads(json.dumps(analyst.to_json()))
    assert Ledger.from_json(data["ledger"]) == analyst.ledger
    assert data["spent"] == analyst.spent
    assert data["epsilon"] is None
    # rebuilt, the analyst goes on spending the same ledger; a repeat stays free
    again = Analyst.from_json(data)
    assert again.spent == analyst.spent
    sql, eps, mechanism = asked[0]
    query(sites, sql, secure=False, epsilon=eps, mechanism=mechanism, analyst=again)
    assert again.ledger == analyst.ledger
    data["ledger"]["entries"][0][0]["event"]["type"] = "MadeUpDpEvent"
    with pytest.raises(ValueError, match="unknown privacy ledger event type"):
        Analyst.from_json(data)
    text = analyst.statement()
    assert "Gaussian and Laplace noise" in text
    assert f"({analyst.spent:.4g}, 1e-05)-differential privacy" in text
    assert "any site's tables" in text
    site_text = sites[0].budget.statement()
    assert f"({sites[0].epsilon_spent:.4g}, 1e-06)-differential privacy" in site_text


def test_a_site_refuses_once_its_ledger_would_pass_its_epsilon() -> None:
    sites = _sites(2, budget=2.5)
    site = sites[0]
    spent = []
    for i in range(2):
        query(sites, f"SELECT COUNT(*) FROM p WHERE age > {i}", secure=False, epsilon=1.0)  # noqa: S608
        spent.append(site.epsilon_spent)
    # RDP composes tighter than adding: two queries at 1.0 cost less than 2.0 ...
    assert 1.0 < spent[1] < 2.0
    before = site.budget.ledger
    # ... but a third would pass 2.5, as dp-accounting says of the ledger plus its event
    with pytest.raises(PolicyError, match="privacy budget cannot pay for this query"):
        query(sites, "SELECT COUNT(*) FROM p WHERE age > 5", secure=False, epsilon=1.0)
    event = _dp.event("laplace", _dp.calibrate("laplace", 1.0, 1e-6, 1), 1)
    assert before.add(event).epsilon(1e-6) > 2.5
    assert _dpa_epsilon([before.event(), event], 1e-6) > 2.5
    # the refused answer was not recorded; a smaller query still fits
    assert site.budget.ledger == before
    assert site.epsilon_spent == spent[1]
    query(sites, "SELECT COUNT(*) FROM p WHERE age > 6", secure=False, epsilon=0.2)
    assert spent[1] < site.epsilon_spent <= 2.5
    assert site.budget.to_json()["ledger"]["entries"][-1][1] == 1


def test_a_top_k_query_is_charged_what_its_budget_check_counted() -> None:
    # values of 32 bytes and more: the trie reads every byte it may; under DP the noise
    # keeps prefixes alive to the last byte, so every stage the plan counts is run
    words = ["x" * 40, "y" * 35, "z" * 32]
    frame = pd.DataFrame({"w": [words[0]] * 300 + [words[1]] * 150 + [words[2]] * 50})
    policy = Policy(min_group_size=5, epsilon=10.0)
    sites = [Site({"t": frame}, policy, name=f"s{i}") for i in range(2)]
    for k, site in enumerate(sites):
        site._rng = np.random.default_rng(50 + k)  # seeded: the answer cannot flake
    sql = "SELECT APPROX_TOP_K(w, 2), APPROX_TOP_K(w, 3) FROM t"
    df = query(sites, sql, secure=False, epsilon=2.0)
    privacy = df.attrs["privacy"]
    # COUNT(*), and one trie of the column for both aggregates: one release per byte
    assert privacy["releases"] == 1 + 32
    for site in sites:  # the check before the query counted what the sites were charged
        assert site.epsilon_spent == pytest.approx(privacy["epsilon"], rel=1e-6)
    assert df.iloc[0, 0] == ["x" * 32, "y" * 32]


def test_an_analyst_whose_events_are_missing_is_refused_not_reset() -> None:
    # the recorded spent was ignored: an analyst restored without its events had
    # spent nothing, and could spend its whole budget again
    analyst = Analyst(epsilon=1.0)
    analyst.charge_query("q1", _dp.event("laplace", 2.0, 1))
    data = json.loads(json.dumps(analyst.to_json()))
    assert Analyst.from_json(data).spent == analyst.spent
    data["ledger"]["entries"] = []
    with pytest.raises(ValueError, match=r"records epsilon .* events are missing"):
        Analyst.from_json(data)
    data["spent"] = "0.9"
    with pytest.raises(ValueError, match="not a number"):
        Analyst.from_json(data)


def test_a_ledger_event_of_laplace_noise_zero_is_spent_infinite_not_a_zero_division() -> None:
    # dp-accounting divides by the multiplier: restoring such an analyst (or a
    # site's ledger file) failed with a bare ZeroDivisionError
    event = {"type": "LaplaceDpEvent", "noise_multiplier": 0.0}
    ledger = {"accountant": "rdp", "entries": [[event, 1]]}
    assert Ledger.from_json(ledger).epsilon(1e-6) == float("inf")
    data = {"epsilon": 3.0, "delta": 1e-6, "spent": 0.0, "ledger": ledger, "queries": []}
    analyst = Analyst.from_json(data)
    assert analyst.spent == float("inf")


@pytest.mark.parametrize("secure", [False, True])
def test_a_noisy_mean_variance_or_sum_stays_within_what_the_bounds_allow(secure: bool) -> None:
    # A noisy SUM over a noisy COUNT gave AVG(age) -136 for bounds (0, 110), a VAR_POP
    # past a quarter of the range squared, a negative sum of values none of them negative
    rng = np.random.default_rng(3)
    frames = [
        pd.DataFrame({"g": rng.choice(list("abcdefgh"), 60), "age": rng.uniform(20, 90, 60)})
        for _ in range(3)
    ]
    policy = Policy(
        bounds={"age": (0, 110)},
        domains={"g": list("abcdefgh")},
        min_group_size=5,
        epsilon=1e6,
        max_epsilon=1e6,
    )
    sites = [Site({"p": f}, policy, name=f"s{k}") for k, f in enumerate(frames)]
    for k, site in enumerate(sites):
        site._rng = np.random.default_rng(300 + k)  # seeded: the old answers were past them
    aggregates = ["AVG(age)", "SUM(age)", "VAR_POP(age)", "VAR_SAMP(age)", "STDDEV_POP(age)"]
    shown = 0
    for i in range(4):
        sql = f"SELECT g, {', '.join(aggregates)} FROM p WHERE age > -{i} GROUP BY g"  # noqa: S608
        df = query(sites, sql, epsilon=0.05, secure=secure)
        for name, top in zip(aggregates, [110, np.inf, 110**2 / 4, 110**2 / 2, 55], strict=True):
            values = df[name].dropna().to_numpy()
            shown += values.size
            assert np.all((values >= 0) & (values <= top)), (name, values)
    # the noisy counts showed many groups (not a mean over a count the noise could give)
    assert shown >= 10


def test_a_variance_under_bounds_whose_range_squared_passes_a_float_is_answered() -> None:
    # The largest variance the bounds allow, (high - low) ** 2 / 4, raised a bare
    # OverflowError for bounds (0, 1e200), though without DP nothing is clipped.
    frame = pd.DataFrame({"age": [30.0, 40.0, 50.0, 60.0]})
    for bounds in [(0.0, 1e200), (-1e308, 1e308)]:
        sites = [
            Site({"p": frame}, Policy(min_group_size=1, bounds={"age": bounds}), name=n)
            for n in ("a", "b")
        ]
        sql = "SELECT VAR_POP(age), STDDEV_SAMP(age), AVG(age) FROM p"
        df = query(sites, sql, secure=False)
        assert df.iloc[0].tolist() == pytest.approx([125.0, np.sqrt(1000 / 7), 45.0])


@pytest.mark.parametrize(("mechanism", "charged"), [("gaussian", 0.85), ("laplace", 0.51)])
def test_a_site_charges_a_query_at_its_own_delta(mechanism: str, charged: float) -> None:
    # as docs/analytics.md says: a query at delta 1e-3 costs a site at 1e-6 more than 0.5
    sites = _sites(2, budget=10.0)
    df = query(
        sites, "SELECT COUNT(*) FROM p", epsilon=0.5, delta=1e-3, mechanism=mechanism, secure=False
    )
    assert df.attrs["privacy"]["epsilon"] == pytest.approx(0.5, rel=1e-3)
    for site in sites:
        assert site.epsilon_spent == pytest.approx(charged, abs=0.01)
        assert df.attrs["privacy"]["site_spent"][site.name] == site.epsilon_spent


def test_a_query_over_the_budget_is_told_the_largest_epsilon_that_fits() -> None:
    # it said "ask with a smaller epsilon", and the budget composes by RDP, so what
    # is left is not the limit minus what is spent: the largest epsilon is searched
    sites = _sites(2, budget=1.5)
    query(sites, "SELECT COUNT(*) FROM p", secure=False, epsilon=1.0)
    sql = "SELECT COUNT(*), SUM(age) FROM p WHERE age > 30"
    with pytest.raises(PolicyError, match="cannot pay for this query") as info:
        query(sites, sql, secure=False, epsilon=1.0)
    found = re.search(r"ask with epsilon ([0-9.e-]+) or less \(at delta 1e-06\)", str(info.value))
    assert found is not None, str(info.value)
    most = float(found.group(1))
    assert 0 < most != 0.5  # not the 0.5 left: RDP composition is not additive
    bigger = most * 1.02
    with pytest.raises(PolicyError, match="cannot pay for this query"):
        query(sites, sql, secure=False, epsilon=bigger)
    query(sites, sql, secure=False, epsilon=most)  # answered, within the budget
    assert all(s.epsilon_spent <= 1.5 for s in sites)
    analyst = Analyst(epsilon=0.5)
    query(_sites(2), "SELECT COUNT(*) FROM p", secure=False, epsilon=0.3, analyst=analyst)
    with pytest.raises(PermissionError, match=r"ask with epsilon 0\.[0-9]+ or less"):
        query(_sites(2), sql, secure=False, epsilon=0.3, analyst=analyst)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_a_refusal_by_several_budgets_tells_the_epsilon_all_of_them_pay(mechanism: str) -> None:
    # each site told what it pays at its own delta: the first site's figure was refused
    # by the second (a smaller budget), and by both when the query asks at another delta
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"age": rng.uniform(0, 99, 200)})
    sites = [
        Site(
            {"p": frame},
            Policy(bounds={"age": (0, 100)}, min_group_size=1, epsilon=budget, delta=1e-6),
            name=f"h{i}",
        )
        for i, budget in enumerate((1.5, 1.3))
    ]
    sql = "SELECT COUNT(*), SUM(age) FROM p WHERE age > 30"
    query(sites, "SELECT COUNT(*) FROM p", secure=False, epsilon=0.8, mechanism=mechanism)
    with pytest.raises(PolicyError) as info:
        query(sites, sql, secure=False, epsilon=1.0, delta=1e-5, mechanism=mechanism)
    said = str(info.value)
    found = re.search(r"every site pays for epsilon ([0-9.e-]+) or less", said)
    assert found is not None, said
    assert "at this query's delta 1e-05" in said
    most = float(found.group(1))
    with pytest.raises(PolicyError, match="cannot pay for this query"):
        query(sites, sql, secure=False, epsilon=most * 1.03, delta=1e-5, mechanism=mechanism)
    query(sites, sql, secure=False, epsilon=most, delta=1e-5, mechanism=mechanism)
    assert sites[1].epsilon_spent <= 1.3 * (1 + 1e-9)


def test_an_analysts_refusal_tells_the_epsilon_it_pays_at_the_querys_delta() -> None:
    # the analyst's budget named what it pays at its own delta (1e-6), which a query
    # asking at 1e-5 was refused again for
    analyst = Analyst(epsilon=1.5)
    sites = _sites(1)
    query(sites, "SELECT COUNT(*) FROM p", secure=False, epsilon=1.0, delta=1e-5, analyst=analyst)
    sql = "SELECT COUNT(*), SUM(age) FROM p WHERE age > 30"
    with pytest.raises(PermissionError, match="the analyst's privacy budget") as info:
        query(sites, sql, secure=False, epsilon=1.0, delta=1e-5, analyst=analyst)
    found = re.search(
        r"it pays for epsilon ([0-9.e-]+) or less at this query's delta 1e-05", str(info.value)
    )
    assert found is not None, str(info.value)
    query(sites, sql, secure=False, epsilon=float(found.group(1)), delta=1e-5, analyst=analyst)
    assert analyst.spent <= 1.5 * (1 + 1e-9)


def _sites_with_an_empty_group(monkeypatch: pytest.MonkeyPatch) -> list[Site]:
    """Two sites whose group 'c' holds no row, every noise share fixed at 3.0."""
    monkeypatch.setattr(_dp, "noise_share", lambda _m, _s, _n, size, _rng: np.full(size, 3.0))
    frame = pd.DataFrame({"g": ["a"] * 500 + ["b"] * 60, "x": [40.0] * 500 + [60.0] * 60})
    policy = Policy(
        bounds={"x": (0, 100)},
        domains={"g": ["a", "b", "c"]},
        min_group_size=1,
        max_epsilon=10.0,
        epsilon=100.0,
    )
    return [Site({"t": frame}, policy, name=n) for n in "pq"]


@pytest.mark.parametrize("secure", [False, True])
def test_a_dp_mean_over_a_noisy_count_the_noise_alone_gives_is_not_available(
    secure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # group 'c' has no row: its noisy count of 6 (or 3) passed the minimum group
    # size, and its AVG, a noisy sum over a noisy count, was shown as 1.0 (clipped
    # into the bounds: 0.0 or 100.0 as often), a mean of no record
    sites = _sites_with_an_empty_group(monkeypatch)
    sql = "SELECT g, AVG(x) AS m, AVG(x) FILTER (WHERE x > 0) AS f, COUNT(*) AS n FROM t GROUP BY g"
    df = query(sites, sql, secure=secure, epsilon=1.0)
    assert df.loc[2, "n"] > 1  # the group is shown: its count is over the minimum
    assert np.isnan(df.loc[2, "m"])
    assert np.isnan(df.loc[2, "f"])
    assert df.loc[0, "m"] == pytest.approx(40.0, abs=0.5)  # 40 plus the noise: 6 over 1006
    assert df.loc[1, "m"] == pytest.approx(60.0, abs=3.0)
    for col in ("m", "f"):
        said = df.attrs["unavailable"][col]
        assert said["groups"] == [("c",)]
        assert said["reason"].startswith("the noisy count of values of 'x' is under ")
        assert said["reason"].endswith(
            "passes 1 time in 40 (a group of no value), so the mean is noise"
        )


def test_a_mean_over_fewer_values_than_the_minimum_says_why_it_is_not_shown() -> None:
    frame = pd.DataFrame({"g": ["a"] * 5 + ["b"] * 5, "x": [1.0] * 5 + [2.0] + [None] * 4})
    policy = Policy(bounds={"x": (0, 10)}, domains={"g": ["a", "b"]}, min_group_size=3)
    df = query(
        [Site({"t": frame}, policy, name="p")], "SELECT g, AVG(x) FROM t GROUP BY g", secure=False
    )
    assert np.isnan(df.loc[1, "AVG(x)"])
    assert df.attrs["unavailable"] == {
        "AVG(x)": {
            "groups": [("b",)],
            "reason": "fewer values of 'x' than the minimum group size, 3",
        }
    }


@pytest.mark.parametrize("secure", [False, True])
def test_a_dp_formula_over_a_noisy_count_the_noise_alone_gives_is_not_available(
    secure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # group 'c' has no row: its noisy COUNT(*) of 6 (or 3) passed the minimum group
    # size, and SUM(x) / COUNT(*), a noisy sum over it, was shown as a bound (0.5 or
    # 100.0 as often), a mean of no record
    sites = _sites_with_an_empty_group(monkeypatch)
    sql = (
        "SELECT g, SUM(x) / COUNT(*) AS r, 100 * SUM(x) / (2 * COUNT(x)) AS h, "
        "SUM(x) + 1 AS s, COUNT(*) AS n FROM t GROUP BY g"
    )
    df = query(sites, sql, secure=secure, epsilon=1.0)
    assert df.loc[2, "n"] > 1  # the group is shown: its count is over the minimum
    assert np.isnan(df.loc[2, "r"])
    assert np.isnan(df.loc[2, "h"])
    assert not np.isnan(df.loc[2, "s"])  # no division: a noisy sum, shown
    assert df.loc[0, "r"] == pytest.approx(40.0, abs=0.5)
    assert df.loc[1, "h"] == pytest.approx(3000.0, abs=150.0)
    assert set(df.attrs["unavailable"]) == {"r", "h"}
    for col, count in (("r", "n"), ("h", "COUNT(x)")):  # a count named by its alias
        said = df.attrs["unavailable"][col]
        assert said["groups"] == [("c",)]
        assert said["reason"].startswith(f"the noisy count it divides by, {count}, is under ")
        assert said["reason"].endswith("passes 1 time in 40 (a group of no value), so it is noise")
    caption = str(result_table(df, sql).caption)
    assert "r not available for [('c',)]: the noisy count it divides by, n, is" in caption


def test_a_formula_over_counts_without_dp_is_shown_as_computed() -> None:
    frame = pd.DataFrame({"g": ["a"] * 3 + ["b"], "x": [1.0, 2.0, 3.0, 4.0]})
    policy = Policy(bounds={"x": (0, 10)}, domains={"g": ["a", "b"]}, min_group_size=1)
    sql = "SELECT g, SUM(x) / COUNT(*) AS r FROM t GROUP BY g"
    df = query([Site({"t": frame}, policy, name="p")], sql, secure=False)
    assert df["r"].tolist() == [2.0, 4.0]
    assert df.attrs["unavailable"] == {}


@pytest.mark.parametrize("secure", [False, True])
def test_a_dp_quantile_whose_rank_noise_can_pass_its_group_is_not_available(
    secure: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # group 'b' has 60 rows all 60.0; its DP median came back anywhere (55.9, 12.7, 6.7)
    # with a stated precision of 5e-5: the noise on its rank counts passes the group
    sites = _sites_with_an_empty_group(monkeypatch)
    sql = "SELECT g, MEDIAN(x) AS m, QUANTILE_DISC(x, 0.1) AS d FROM t GROUP BY g"
    df = query(sites, sql, secure=secure, epsilon=1.0)
    assert df.loc[0, "m"] == pytest.approx(40.0, abs=0.01)  # 1000 rows: shown
    for col in ("m", "d"):
        assert np.isnan(df.loc[1, col])
        assert np.isnan(df.loc[2, col])
        said = df.attrs["unavailable"][col]
        assert said["groups"] == [("b",), ("c",)]
        assert said["reason"].startswith("the noisy count of values of 'x' is under ")
        assert said["reason"].endswith(
            "the rows the noise on one rank count of the bisection passes 1 time in 40, "
            "so the quantile is noise"
        )
    rows = df.attrs["privacy"]["quantile_rank_error"]
    assert set(rows) == {"m", "d"}
    assert 60 < rows["m"] < 1000
    assert df.attrs["precision"]["m"] < 1e-3  # the bisection's, as before
    caption = str(result_table(df, sql).caption)
    assert "m not available for [('b',), ('c',)]: the noisy count of values of 'x'" in caption
    assert f"m: rank within {rows['m']:.4g} rows (DP noise, 1 time in 40 past it)" in caption


def test_a_quantile_without_dp_states_no_rank_error_and_nothing_unavailable() -> None:
    frame = pd.DataFrame({"g": ["a"] * 5, "x": [1.0, 2.0, 3.0, 4.0, 5.0]})
    policy = Policy(bounds={"x": (0, 10)}, domains={"g": ["a"]}, min_group_size=1)
    df = query([Site({"t": frame}, policy, name="p")], "SELECT MEDIAN(x) AS m FROM t", secure=False)
    assert df.loc[0, "m"] == pytest.approx(3.0, abs=1e-3)
    assert df.attrs["unavailable"] == {}
    assert df.attrs["privacy"] is None
