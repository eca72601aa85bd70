"""The distinct metric names of a round's clients are capped: past the cap, a client fails alone.

Each result carries at most MAX_METRICS metrics, but a round's clients together
were not capped: a thousand clients each reporting a thousand names of their
own made a million names in the round's record and ``history.json``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytest

import covey
from covey.core._messages import MAX_METRICS, Metrics
from covey.server._roundmetrics import MAX_ROUND_METRICS, RoundMetrics

#: Clients reporting MAX_METRICS names, one shared and the rest their own, that fit the cap.
FIT = (MAX_ROUND_METRICS - 1) // (MAX_METRICS - 1)
OVER = [FIT, FIT + 1]  # two more such clients: over the cap
PLAIN = FIT + 2  # one more, reporting only the shared name
CLIENTS = FIT + 3
NAMES = 1 + FIT * (MAX_METRICS - 1)  # the names the round keeps


def _metrics(cid: int) -> Metrics:
    own: Metrics = {} if cid == PLAIN else {f"c{cid}_m{i}": 1.0 for i in range(MAX_METRICS - 1)}
    return {"acc": float(cid), **own}


class Named(covey.Client):
    """Client ``cid`` reports :func:`_metrics` from fit and from evaluate."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(3)}, num_examples=1, metrics=_metrics(self.cid))

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=0.5, num_examples=1, metrics=_metrics(self.cid))


def _init() -> dict[str, Any]:
    return {"w": np.zeros(3)}


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_clients_past_the_rounds_distinct_names_fail_alone_naming_the_limit(
    backend: Literal["inline", "process"],
) -> None:
    strategy = covey.FedAvg(min_fit_clients=1, min_evaluate_clients=1, fraction_evaluate=1.0)
    result = covey.simulate(Named, CLIENTS, 1, strategy, _init(), backend=backend)
    record = result.history.rounds[1]
    for stage, failures in (("fit", record.fit_failures), ("evaluate", record.evaluate_failures)):
        assert [f.cid for f in failures] == OVER
        error = failures[0].error
        assert error.startswith(f"its {stage} metrics add {MAX_METRICS - 1} names the round's ")
        assert f"(the first 'c{FIT}_m0') to their {NAMES}, over the limit of " in error
        assert f"{MAX_ROUND_METRICS} distinct metric names in a round" in error
    kept = [cid for cid in range(CLIENTS) if cid not in OVER]
    assert record.fit_participants == kept
    assert record.evaluate_participants == kept
    assert len(record.fit_metrics) == len(record.evaluate_metrics) == NAMES
    assert record.fit_metrics["acc"] == pytest.approx(np.mean(kept))
    np.testing.assert_array_equal(result.weights["w"], np.ones(3))  # the round went on


def test_an_asynchronous_update_keeps_its_distinct_names_under_the_cap() -> None:
    strategy = covey.FedBuff(buffer_size=CLIENTS - len(OVER), concurrency=CLIENTS)
    result = covey.simulate(Named, CLIENTS, 1, strategy, _init())
    record = result.history.rounds[1]
    assert len(record.fit_metrics) <= MAX_ROUND_METRICS
    refused = [f for f in record.fit_failures if "distinct metric names" in f.error]
    assert refused
    assert len(record.fit_participants) == CLIENTS - len(OVER)


def test_clients_reporting_the_same_names_never_near_the_cap() -> None:
    taken = RoundMetrics("fit")
    for cid in range(10 * MAX_ROUND_METRICS // MAX_METRICS):
        metrics: Metrics = {f"m{i}": float(cid) for i in range(MAX_METRICS)}
        assert taken.refusal(metrics) is None
        taken.append((1, metrics))
    assert len(taken.names) == MAX_METRICS
