"""Client selection: uniform sampling, selection by reported properties, custom selectors."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest

import covey

SITES = ["hospital", "bank", "hospital", "phone", "hospital", "bank", "hospital", "phone"]


class Site(covey.Client):
    """Reports its site and whether it has a GPU; counts how often it was asked."""

    asked: ClassVar[dict[int, int]] = {}

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def properties(self) -> dict[str, Any]:
        Site.asked[self.cid] = Site.asked.get(self.cid, 0) + 1
        if SITES[self.cid] == "phone":
            raise RuntimeError("phones do not say")
        return {"site": SITES[self.cid], "has_gpu": self.cid % 4 == 0}

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)

    def evaluate(self, weights: covey.Weights, config: dict[str, Any]) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=0.0, num_examples=1)


def run(strategy: covey.Strategy, rounds: int = 3, seed: int = 0) -> covey.History:
    Site.asked = {}
    return covey.simulate(Site, len(SITES), rounds, strategy, {"w": np.zeros(1)}, seed=seed).history


def test_selection_by_required_property_values() -> None:
    history = run(covey.FedAvg(where={"site": "hospital", "has_gpu": True}, min_fit_clients=1))
    for record in history.rounds[1:]:
        assert record.fit_participants == [0, 4]
        assert record.evaluate_participants == [0, 4]
    # Reported properties are remembered; clients that failed are asked again next round.
    assert Site.asked == {0: 1, 1: 1, 2: 1, 3: 3, 4: 1, 5: 1, 6: 1, 7: 3}


def test_selection_by_a_predicate_with_fractions_of_the_eligible() -> None:
    def hospital(props: Any) -> bool:
        return bool(props["site"] == "hospital")

    history = run(
        covey.FedAvg(where=hospital, fraction_fit=0.5, min_fit_clients=1, fraction_evaluate=0.0),
        rounds=6,
    )
    chosen = [record.fit_participants for record in history.rounds[1:]]
    assert all(len(c) == 2 and set(c) <= {0, 2, 4, 6} for c in chosen)
    assert len({tuple(c) for c in chosen}) > 1  # sampled anew each round


def test_clients_that_do_not_report_are_not_selected(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="covey"):
        history = run(covey.FedAvg(where=lambda props: True, fraction_evaluate=0.0), rounds=2)
    for record in history.rounds[1:]:
        assert record.fit_participants == [0, 1, 2, 4, 5, 6]
    assert any("did not report its properties" in r.getMessage() for r in caplog.records)


class Silent(covey.Client):
    """Fails to report its properties unless its id is even."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def properties(self) -> dict[str, Any]:
        if self.cid % 2:
            raise RuntimeError("no properties here")
        return {"even": True}

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)


def test_many_clients_not_reporting_log_a_few_by_name_and_count_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A warning per client that did not report: 500 lines for this run, tens of
    # thousands for a large federation whose clients come and go.
    strategy = covey.FedAvg(where={"even": True}, fraction_fit=0.01, fraction_evaluate=0.0)
    with caplog.at_level(logging.WARNING, logger="covey"):
        covey.simulate(Silent, 1_000, 2, strategy, {"w": np.zeros(1)}, client_cache=0)
    lines = [r.getMessage() for r in caplog.records]
    named = [m for m in lines if "did not report its properties" in m]
    assert 1 <= len(named) <= 2 * 10, len(named)
    counted = [m for m in lines if "more clients did not report their properties" in m]
    assert counted == [
        f"round {r}: 490 more clients did not report their properties; the last: "
        "RuntimeError: no properties here"
        for r in (1, 2)  # asked again in the next round
    ], counted


def test_fedbuff_tests_each_client_against_where_once_per_report() -> None:
    # Each reply, properties included, tested every client against where= and
    # counted the tasks in flight: quadratic in the federation's size (over five
    # minutes before the first update at 100,000 clients).
    tested: list[int] = []

    def even(props: Mapping[str, Any]) -> bool:
        tested.append(1)
        return bool(props["even"])

    class Even(Silent):
        def properties(self) -> dict[str, Any]:
            return {"even": self.cid % 2 == 0}

    n = 2_000
    strategy = covey.FedBuff(buffer_size=2, concurrency=2, where=even)
    result = covey.simulate(Even, n, 3, strategy, {"w": np.zeros(1)}, client_cache=0)
    assert all(c % 2 == 0 for r in result.history.rounds for c in r.fit_participants)
    assert len(tested) <= 2 * n, len(tested)


def test_too_few_eligible_clients_is_a_clear_error() -> None:
    # It said "only 2 are available ... counting clients that pass where=", naming
    # no filter, where sample() said "only 2 are available" of the same clients.
    with pytest.raises(covey.FederationError) as caught:
        run(covey.FedAvg(where={"site": "bank"}, min_fit_clients=3))
    assert str(caught.value).startswith(
        "round 1: the strategy wants 3 clients to train but only 2 clients pass "
        "where={'site': 'bank'} (min_fit_clients=3); lower min_fit_clients to at most 2, "
        "or let more clients pass where="
    ), caught.value


def test_sampling_too_many_names_the_counts_and_the_filter_alike() -> None:
    # Under where= it said "only 2 are available", though every client was available.
    def bank(props: Mapping[str, Any]) -> bool:
        return bool(props["site"] == "bank")

    said = "round 4 needs 3 clients but only 2 clients"
    for strategy, expected in [
        (covey.FedAvg(), f"{said} are available"),
        (covey.FedAvg(where={"site": "bank"}), f"{said} pass where={{'site': 'bank'}}"),
        (covey.FedAvg(where=bank), f"{said} pass where= "),
    ]:
        with pytest.raises(ValueError, match="needs 3 clients") as caught:
            strategy.sample([1, 5], 3, 4, seed=0, purpose=0)
        assert str(caught.value).startswith(expected), caught.value
    assert str(caught.value).endswith("bank"), caught.value


def test_uniform_sampling_is_seeded_and_reproducible() -> None:
    strategy = covey.FedAvg(fraction_fit=0.25, min_fit_clients=2, fraction_evaluate=0.0)
    first = [r.fit_participants for r in run(strategy, rounds=5, seed=1).rounds[1:]]
    again = [r.fit_participants for r in run(strategy, rounds=5, seed=1).rounds[1:]]
    other = [r.fit_participants for r in run(strategy, rounds=5, seed=2).rounds[1:]]
    assert first == again
    assert first != other
    assert all(len(c) == 2 for c in first)


def test_a_custom_selector_sees_the_eligible_candidates_and_a_seeded_rng() -> None:
    calls: list[tuple[list[int], int, float]] = []

    def lowest_two(candidates: Sequence[int], rnd: int, rng: np.random.Generator) -> list[int]:
        calls.append((list(candidates), rnd, float(rng.random())))
        return sorted(candidates)[:2]

    strategy = covey.FedAvg(
        where={"site": "hospital"}, selector=lowest_two, min_fit_clients=1, fraction_evaluate=0.0
    )
    history = run(strategy, rounds=2)
    assert [r.fit_participants for r in history.rounds[1:]] == [[0, 2], [0, 2]]
    assert [c[:2] for c in calls] == [([0, 2, 4, 6], 1), ([0, 2, 4, 6], 2)]
    replay: list[tuple[list[int], int, float]] = list(calls)
    calls.clear()
    run(strategy, rounds=2)
    assert calls == replay  # the rng is seeded from (seed, round)


def test_a_selector_choosing_unavailable_clients_is_refused() -> None:
    strategy = covey.FedAvg(selector=lambda c, r, g: [99], fraction_evaluate=0.0)
    with pytest.raises(ValueError, match="not available"):
        run(strategy, rounds=1)


def test_a_selector_choosing_a_client_that_fails_where_is_not_called_unavailable() -> None:
    # Before: "selector chose clients that are not available: {1}", though client 1
    # was available and only failed where=.
    def bank(candidates: Sequence[int], rnd: int, rng: Any) -> list[int]:
        return [1]

    strategy = covey.FedAvg(where={"site": "hospital"}, selector=bank, fraction_evaluate=0.0)
    said = (
        r"^selector .*bank chose clients not among its candidates in round 1, the available "
        r"clients that pass where=\{'site': 'hospital'\}: \[1\] are not available or do "
        r"not pass where="
    )
    with pytest.raises(ValueError, match=said):
        run(strategy, rounds=1)
    # Without where=, its candidates are the available clients.
    alone = covey.FedAvg(selector=lambda c, r, g: [99], fraction_evaluate=0.0)
    with pytest.raises(ValueError, match=r"in round 1: \[99\] are not available$"):
        run(alone, rounds=1)


def test_asynchronous_mode_selects_by_properties_too() -> None:
    Site.asked = {}
    result = covey.simulate(
        Site,
        len(SITES),
        4,
        covey.FedBuff(buffer_size=2, concurrency=3, where={"site": "hospital"}),
        {"w": np.zeros(1)},
    )
    participants = {c for r in result.history.rounds for c in r.fit_participants}
    assert participants <= {0, 2, 4, 6}
    assert len(participants) >= 3
    assert all(Site.asked[cid] == 1 for cid in range(len(SITES)) if SITES[cid] != "phone")
    assert Site.asked[3] >= 2  # asked again in later updates


def test_eligible_and_validation() -> None:
    props = {0: {"a": 1}, 1: {"a": 2}, 3: {"b": 1}}
    assert covey.Strategy(where={"a": 1}).eligible([0, 1, 2, 3], props) == [0]
    assert covey.Strategy(where=lambda p: "a" in p).eligible([3, 1, 0], props) == [1, 0]
    assert covey.Strategy().eligible([2, 0], {}) == [2, 0]
    big = covey.Strategy(where=lambda p: p["ram_gb"] >= 16)
    assert big.eligible([0, 1], {0: {"ram_gb": 32}, 1: {"site": "x"}}) == [0]
    with pytest.raises(TypeError, match="where must be"):
        covey.Strategy(where=["site"])  # type: ignore[arg-type]


def test_a_selector_that_repeats_a_client_is_refused() -> None:
    # It said "selector chose some clients more than once: [0, 0]", naming
    # neither the selector nor the round, nor what to return instead.
    def twice(available: Sequence[int], rnd: int, rng: Any) -> list[int]:
        return [available[0], available[0]]

    strategy = covey.Strategy(selector=twice)
    with pytest.raises(ValueError, match="more than once") as caught:
        strategy.sample([0, 1, 2], 2, 3, 0, purpose=0)
    assert str(caught.value) == (
        "selector test_a_selector_that_repeats_a_client_is_refused.<locals>.twice in round 3 "
        "chose clients more than once: [0, 0]; return each client id once"
    )


def test_where_values_match_bools_only_with_bools() -> None:
    """``{"gpu": 1}`` once matched a client reporting ``True`` (``True == 1`` in Python)."""
    props: dict[int, dict[str, Any]] = {
        0: {"gpu": True, "n": 1},
        1: {"gpu": 1, "n": 1.0},
        2: {"gpu": np.bool_(True), "n": np.int64(1)},
        3: {"gpu": False, "n": 0},
        4: {"n": 1},
    }
    ids = list(props)
    assert covey.FedAvg(where={"gpu": True}).eligible(ids, props) == [0, 2]
    assert covey.FedAvg(where={"gpu": 1}).eligible(ids, props) == [1]
    assert covey.FedAvg(where={"gpu": np.bool_(True)}).eligible(ids, props) == [0, 2]
    assert covey.FedAvg(where={"gpu": 0}).eligible(ids, props) == []
    # Numbers of equal value match across int, float and NumPy's types.
    assert covey.FedAvg(where={"n": 1}).eligible(ids, props) == [0, 1, 2, 4]
    assert covey.FedAvg(where={"n": 1.0, "gpu": True}).eligible(ids, props) == [0, 2]


class _Region(covey.Client):
    """Reports its region; trains at once."""

    def __init__(self, region: str) -> None:
        self.region = region

    def properties(self) -> dict[str, Any]:
        return {"region": self.region}

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def test_a_deployed_round_waits_for_enough_clients_that_pass_where() -> None:
    # With two clients connected, one of them outside where=, round 1 stopped at
    # once ("wants 2 clients to train but only 1 clients pass where="), though
    # wait_timeout had most of its 30 s left and a second "eu" site was joining.
    from _live import Joined, Served

    strategy = covey.FedAvg(
        fraction_evaluate=0.0, min_fit_clients=2, min_available_clients=2, where={"region": "eu"}
    )
    served = Served(strategy, 1, wait_timeout=30.0)
    sites = [
        Joined(served.port, _Region("us"), name="us"),
        Joined(served.port, _Region("eu"), name="eu"),
    ]
    try:
        time.sleep(1.0)  # round 1 has begun with one client that passes where=
        sites.append(Joined(served.port, _Region("eu"), name="eu-late"))
        result = served.join(60)
    finally:
        for site in sites:
            site.join(30)
    record = result.history[1]
    assert sorted(result.history.name_of(c) for c in record.fit_participants) == ["eu", "eu-late"]
    assert record.durations["wait"] > 0


class _Charged(covey.Strategy):
    """Lets only clients that report a battery above 50 take part."""

    def eligible(
        self, available: Sequence[int], properties: Mapping[int, Mapping[str, Any]]
    ) -> list[int]:
        return [c for c in available if properties.get(c, {}).get("battery", 0) > 50]


class _Phone(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def properties(self) -> dict[str, Any]:
        return {"battery": 10 * self.cid}

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)

    def evaluate(self, weights: covey.Weights, config: dict[str, Any]) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=0.0, num_examples=1)


def test_a_subclass_overriding_eligible_selects_by_it_without_where() -> None:
    # The override was asked only when where= was given too: without it every
    # client could be sampled, those with a battery of 0-50 included.
    strategy = _Charged(fraction_fit=0.5, min_fit_clients=1, min_evaluate_clients=1)
    history = covey.simulate(_Phone, 10, 3, strategy, {"w": np.zeros(1)}, seed=0).history
    for record in history.rounds[1:]:
        assert len(record.fit_participants) == 2, record.fit_participants  # half of 4
        assert all(c > 5 for c in record.fit_participants + record.evaluate_participants)
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(_Phone, 10, 1, _Charged(min_fit_clients=6), {"w": np.zeros(1)})
    assert str(caught.value).startswith(
        "round 1: the strategy wants 6 clients to train but only 4 clients pass "
        "_Charged.eligible() (min_fit_clients=6); lower min_fit_clients to at most 4, or let "
        "more clients pass _Charged.eligible()"
    ), caught.value
    buffered = _Charged(buffer_size=2, fraction_fit=0.0, min_fit_clients=2, fraction_evaluate=0.0)
    history = covey.simulate(_Phone, 10, 3, buffered, {"w": np.zeros(1)}, seed=0).history
    assert all(c > 5 for r in history.rounds for c in r.fit_participants)


def test_a_round_whose_fraction_of_the_eligible_rounds_down_to_none_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 3 of 10 clients pass where=, and 0.2 of 3 is 0: every round trained no
    # client without a word, where simulate() refuses 0.2 of 3 clients up front.
    strategy = covey.FedAvg(
        fraction_fit=0.2,
        min_fit_clients=0,
        fraction_evaluate=0.0,
        where=lambda p: p["battery"] > 60,
    )
    with caplog.at_level(logging.WARNING, logger="covey"):
        history = covey.simulate(_Phone, 10, 2, strategy, {"w": np.zeros(1)}).history
    said = (
        "fraction_fit=0.2 rounds down to no client (3 clients pass where= "
        "test_a_round_whose_fraction_of_the_eligible_rounds_down_to_none_says_so.<locals>."
        "<lambda>) and min_fit_clients=0: no client trains; raise fraction_fit or min_fit_clients"
    )
    for record in history.rounds[1:]:
        assert record.fit_participants == []
        assert record.aggregate_info["error"] == said
    assert f"round 1: {said}; the global model is unchanged" in caplog.messages
    none = covey.FedAvg(
        fraction_fit=0.5, min_fit_clients=0, fraction_evaluate=0.0, where={"battery": -1}
    )
    history = covey.simulate(_Phone, 10, 1, none, {"w": np.zeros(1)}).history
    assert history[1].aggregate_info["error"] == (
        "0 clients pass where={'battery': -1}: no client trains"
    )


@pytest.mark.parametrize("purpose", [0, 1])
def test_the_same_clients_are_sampled_whatever_order_a_transport_lists_them_in(
    purpose: int,
) -> None:
    # A transport of one's own may list its clients in the order they connected:
    # the run's seed picks the same clients from the same set all the same.
    strategy = covey.FedAvg()
    ids = [0, 1, 3, 5, 7, 9, 12, 20]
    in_order = strategy.sample(ids, 3, 1, 0, purpose)
    for order in ([20, 5, 1, 9, 3, 12, 7, 0], ids[::-1]):
        assert strategy.sample(order, 3, 1, 0, purpose) == in_order
    assert strategy.sample(range(10), 4, 2, 0, purpose) == strategy.sample(
        list(range(10))[::-1], 4, 2, 0, purpose
    )


def test_a_selector_is_given_the_candidates_in_id_order() -> None:
    given: list[list[int]] = []

    def first_two(candidates: Sequence[int], round: int, rng: np.random.Generator) -> list[int]:
        given.append(list(candidates))
        return list(candidates[:2])

    strategy = covey.FedAvg(selector=first_two)
    assert strategy.sample([9, 4, 6, 1], 2, 1, 0, 0) == [1, 4]
    assert given == [[1, 4, 6, 9]]
