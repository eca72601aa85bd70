"""A contribution a later step refuses leaves no trace in the steps before it.

The round loop goes on with the chain's state from before the refused
contribution; steps that fold into buffers of their own (SCAFFOLD's sum of
control-variate changes, the clients a per-client step notes) must not have
kept it there.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import numpy as np
import pytest

import covey
from _steps import refuse_client
from covey import FitResult
from covey.aggregate import (
    Aggregate,
    AggregationError,
    Begin,
    Contribution,
    End,
    Event,
    Step,
    chain,
    clip_norm,
    qfedavg,
    scaffold,
    staleness_weight,
    weighted_mean,
)
from covey.aggregate._scaffold import CLIENT_DELTA, SERVER_CONTROL

NUM_CLIENTS = 4
REFUSED = 1


class ControlReporter(covey.Client):
    """Sends ``Delta c_i = cid + 1`` everywhere; keeps the ``c`` it receives by round."""

    seen: ClassVar[dict[tuple[int, int], np.ndarray]] = {}

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        c = (config.get("extras") or {}).get(SERVER_CONTROL)
        if c is not None:
            ControlReporter.seen[(config["round"], self.cid)] = np.array(c["w"])
        # q-FedAvg refuses a NaN loss: client REFUSED's contribution, and only its.
        loss = float("nan") if self.cid == REFUSED else 1.0
        return FitResult(
            weights={k: v + 1 for k, v in weights.items()},
            num_examples=1,
            metrics={"loss": loss},
            extras={CLIENT_DELTA: {"w": np.full(3, self.cid + 1.0)}},
        )


@pytest.mark.parametrize(
    "refusing",
    [
        pytest.param(lambda: chain(refuse_client(REFUSED), weighted_mean()), id="own-step"),
        pytest.param(qfedavg, id="qfedavg"),
    ],
)
def test_scaffold_leaves_out_the_change_of_a_client_a_later_step_refuses(refusing: Any) -> None:
    ControlReporter.seen.clear()
    strategy = covey.Strategy(
        aggregator=chain(scaffold(NUM_CLIENTS), refusing()), fraction_evaluate=0.0
    )
    result = covey.simulate(ControlReporter, NUM_CLIENTS, 2, strategy, {"w": np.zeros(3)})
    record = result.history.rounds[1]
    assert record.fit_participants == [0, 2, 3]
    assert [f.cid for f in record.fit_failures] == [REFUSED]
    assert record.aggregate_info["scaffold_clients"] == 3
    # c = (1/N) sum of the accepted clients' changes: (1 + 3 + 4) / 4, without client 1's 2.
    accepted = [cid + 1.0 for cid in range(NUM_CLIENTS) if cid != REFUSED]
    expected = np.full(3, sum(accepted) / NUM_CLIENTS)
    for cid in range(NUM_CLIENTS):
        np.testing.assert_array_equal(ControlReporter.seen[(1, cid)], np.zeros(3))
        np.testing.assert_array_equal(ControlReporter.seen[(2, cid)], expected)


def feed_as_the_loop_does(step: Step, state: Any, event: Event) -> Any:
    """One contribution fed as the round loops do: a refused one leaves ``state`` as it was."""
    with contextlib.suppress(AggregationError):
        state, _ = step.feed(state, event)
    return state


def control_change(cid: int, value: float) -> Contribution:
    w = {"w": np.array([1.0, 2.0])}
    return Contribution(cid, 1, weights=w, extras={CLIENT_DELTA: {"w": np.full(2, value)}})


def test_scaffold_takes_refusals_in_a_row_and_at_the_end_of_a_round_exactly() -> None:
    refused = {1, 2, 5}

    def refuse(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, Contribution) and event.cid in refused:
            raise AggregationError(f"client {event.cid} is not welcome")
        return state, (event,)

    step = chain(scaffold(8), Step(lambda params: None, refuse), weighted_mean())
    params = {"w": np.zeros(2)}
    state, _ = step.feed(step.init(params), Begin(1, params))
    changes = [0.1, 0.7, 0.3, 1e-3, 1 / 3, 0.9]
    for cid, value in enumerate(changes):
        state = feed_as_the_loop_does(step, state, control_change(cid, value))
    state, out = step.feed(state, End(1))
    assert isinstance(out[0], Aggregate)
    assert out[0].info["scaffold_clients"] == 3
    expected = np.zeros(2)
    for cid in (0, 3, 4):  # summed as the step sums them, in float64, in client order
        expected += changes[cid]
    np.testing.assert_array_equal(state[0].c["w"], expected / 8)


def test_a_per_client_step_does_not_list_a_client_a_later_step_refuses() -> None:
    strategy = covey.Strategy(
        aggregator=chain(clip_norm(0.5), refuse_client(REFUSED), weighted_mean()),
        fraction_evaluate=0.0,
    )
    result = covey.simulate(ControlReporter, NUM_CLIENTS, 1, strategy, {"w": np.zeros(3)})
    record = result.history.rounds[1]
    assert record.fit_participants == [0, 2, 3]
    assert record.aggregate_info["clipped"] == [0, 2, 3]


def test_fedbuff_staleness_weight_does_not_list_a_client_a_later_step_refuses() -> None:
    step = chain(staleness_weight(), refuse_client(REFUSED), weighted_mean())
    params = {"w": np.zeros(2)}
    state, _ = step.feed(step.init(params), Begin(1, params))
    for cid in range(3):
        stale = Contribution(cid, 1, delta={"w": np.ones(2)}, staleness=2)
        state = feed_as_the_loop_does(step, state, stale)
    _, out = step.feed(state, End(1, step="update"))
    assert isinstance(out[0], Aggregate)
    assert out[0].info["stale"] == [0, 2]
