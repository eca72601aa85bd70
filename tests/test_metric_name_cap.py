"""A client's metric names are capped as ``evaluate_fn``'s are: at most 1,024 characters each.

A client's names were capped only by the wire's 1 Mi characters per string, so
a client could put a name of a million characters into every round's record,
``history.json`` and ``covey runs show``, where ``evaluate_fn``'s was refused
past 1,024. The inline, process and Ray backends are checked by the table of
``_backends_outside.MISTAKES`` (``metric_long_name``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

import covey
from _live import served_to
from covey.core._metricvalues import MAX_METRIC_NAME, MAX_METRICS
from covey.transport.grpc import _wire

LONG = "n" * (MAX_METRIC_NAME + 1)
REFUSAL = (
    f"names a metric {'n' * 40!r}... of {MAX_METRIC_NAME + 1} characters, over the limit of "
    f"{MAX_METRIC_NAME}: choose a shorter name"
)


class Site(covey.Client):
    """Reports a metric of a name one character too long when ``long``, else ``acc``."""

    def __init__(self, long: bool) -> None:
        self.long = long

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        metrics = {LONG: 1.0} if self.long else {"acc": 0.5}
        return covey.FitResult(weights={"w": weights["w"] + 1}, num_examples=1, metrics=metrics)


def test_a_deployed_clients_long_metric_name_fails_it_alone_naming_it() -> None:
    sites = [("site-a", Site(False)), ("site-b", Site(True))]
    strategy = covey.FedAvg(min_fit_clients=1, min_available_clients=2, fraction_evaluate=0.0)
    result = served_to(sites, strategy, {"w": np.zeros(3)})
    record = result.history.rounds[-1]
    (failure,) = record.fit_failures
    assert failure.name == "site-b"
    assert failure.error == f"ValueError: FitResult.metrics {REFUSAL}"
    assert record.fit_metrics == {"acc": 0.5}  # the round went on with the other site
    np.testing.assert_array_equal(result.weights["w"], np.ones(3))


@pytest.mark.parametrize("kind", ["fit", "evaluate"])
def test_a_reply_naming_a_metric_past_the_cap_is_refused_by_the_server(kind: str) -> None:
    # A peer that does not check its result itself: the server refuses the reply.
    head: dict[str, Any] = {"type": kind, "num_examples": 1, "metrics": {LONG: 0.5}}
    head |= {"form": "delta"} if kind == "fit" else {"loss": 0.5}
    arrays = {"w": np.zeros(2)} if kind == "fit" else None
    what = "FitResult" if kind == "fit" else "EvaluateResult"
    with pytest.raises(_wire.WireError, match=re.escape(f"{what}.metrics {REFUSAL}")):
        _wire.result_from_wire(json.dumps(head).encode(), arrays)
    head["metrics"] = {LONG[:-1]: 0.5}
    assert _wire.result_from_wire(json.dumps(head).encode(), arrays).metrics == {LONG[:-1]: 0.5}


def test_a_result_at_both_caps_is_taken() -> None:
    metrics = {f"{i:04d}".ljust(MAX_METRIC_NAME, "m"): 1.0 for i in range(MAX_METRICS)}
    result = covey.EvaluateResult(loss=0.5, num_examples=1, metrics=metrics)
    assert result.metrics == metrics
    with pytest.raises(ValueError, match=re.escape(f"EvaluateResult.metrics {REFUSAL}")):
        covey.EvaluateResult(loss=0.5, num_examples=1, metrics={LONG: 1.0})
