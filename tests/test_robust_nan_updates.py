"""A NaN update never reaches a robust rule's ranking: it is its client's failure.

The round loops refuse a reply holding NaN before any step sees it. An update a
step before the rule turned NaN (a step of one's own), or one fed to the rule
outside a loop, used to be buffered like any other: the coordinate-wise median
then came out NaN (the round refused, every honest update lost with it), and
Krum's distances from it compared false with everything.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

import covey
from covey.aggregate import (
    AggregationError,
    Begin,
    Contribution,
    Event,
    Step,
    bulyan,
    chain,
    geometric_median,
    krum,
    median,
    multi_krum,
    skip_nonfinite,
    trimmed_mean,
)

RULES = {
    "krum()": lambda: krum(1),
    "multi_krum()": lambda: multi_krum(1),
    "median()": median,
    "trimmed_mean()": lambda: trimmed_mean(0.2),
    "bulyan()": lambda: bulyan(1),
    "geometric_median()": geometric_median,
}


def update(cid: int) -> dict[str, Any]:
    """Client ``cid``'s update; client 0's holds a NaN."""
    delta = np.full(2, 1.0 + 0.01 * cid)
    if cid == 0:
        delta[0] = np.nan
    return {"w": delta}


@pytest.mark.parametrize("name", RULES)
def test_a_robust_rule_refuses_an_update_holding_nan(name: str) -> None:
    step = RULES[name]()
    params = {"w": np.zeros(2)}
    state, _ = step.update(step.init(params), Begin(1, params))
    with pytest.raises(AggregationError, match=re.escape(f"{name}: client 0's update holds NaN")):
        step.update(state, Contribution(0, 1, delta=update(0)))
    # skip_nonfinite() before the rule leaves it out, as the message says
    guarded = chain(skip_nonfinite(), step)
    state, _ = guarded.update(guarded.init(params), Begin(1, params))
    state, out = guarded.update(state, Contribution(0, 1, delta=update(0)))
    assert [type(e).__name__ for e in out] == ["Dropped"]


def poisoning() -> Step:
    """A per-client step of one's own that turns client 0's update NaN (a bug, say)."""

    def init(params: Any) -> Any:
        return None

    def feed(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, Contribution) and event.cid == 0:
            delta = {"w": np.array([np.nan, 1.0])}
            return state, (Contribution(0, event.num_examples, delta=delta),)
        return state, (event,)

    return Step(init, feed)


class Honest(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.full(2, 1.0 + 0.01 * self.cid)}, num_examples=1)


@pytest.mark.parametrize("name", RULES)
def test_a_round_counts_an_update_made_nan_before_the_rule_as_its_clients_failure(
    name: str,
) -> None:
    strategy = covey.Strategy(aggregator=chain(poisoning(), RULES[name]()), fraction_evaluate=0.0)
    result = covey.simulate(Honest, 8, 1, strategy, {"w": np.zeros(2)})
    record = result.history.rounds[1]
    assert record.aggregated, record.aggregate_info
    assert 0 not in record.fit_participants
    assert 0 not in record.aggregate_info.get("selected", [])
    (failure,) = record.fit_failures
    assert failure.cid == 0
    assert "refused by the aggregation step" in failure.error
    assert np.isfinite(result.weights["w"]).all()


class Byzantine(Honest):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta=update(self.cid), num_examples=1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: covey.Krum(f=1, fraction_evaluate=0.0, min_fit_clients=5),
        lambda: covey.MultiKrum(f=1, fraction_evaluate=0.0, min_fit_clients=5),
        lambda: covey.FedMedian(fraction_evaluate=0.0, min_fit_clients=5),
        lambda: covey.FedTrimmedAvg(beta=0.2, fraction_evaluate=0.0, min_fit_clients=5),
        lambda: covey.Bulyan(f=1, fraction_evaluate=0.0, min_fit_clients=5),
    ],
)
def test_a_nan_reply_is_its_clients_failure_before_every_robust_preset(make: Any) -> None:
    result = covey.simulate(Byzantine, 8, 1, make(), {"w": np.zeros(2)})
    record = result.history.rounds[1]
    assert record.aggregated, record.aggregate_info
    assert [f.cid for f in record.fit_failures] == [0]
    assert "non-finite" in record.fit_failures[0].error
    assert 0 not in record.fit_participants
    assert 0 not in record.aggregate_info.get("selected", [])
    assert np.isfinite(result.weights["w"]).all()


def test_a_deployed_byzantine_nan_update_is_never_krums_choice() -> None:
    from _live import served_to

    sites = [(f"site-{cid}", Byzantine(cid)) for cid in range(6)]
    strategy = covey.Krum(f=1, fraction_evaluate=0.0, min_fit_clients=5, min_available_clients=6)
    result = served_to(sites, strategy, {"w": np.zeros(2)})
    record = result.history.rounds[1]
    assert record.aggregated, record.aggregate_info
    names = {cid: result.history.name_of(cid) for cid in record.fit_participants}
    (failure,) = record.fit_failures
    assert result.history.name_of(failure.cid) == "site-0"
    assert "non-finite" in failure.error
    assert "site-0" not in names.values()
    (chosen,) = record.aggregate_info["selected"]
    assert result.history.name_of(chosen) != "site-0"
    assert np.isfinite(result.weights["w"]).all()
