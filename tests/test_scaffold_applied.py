"""SCAFFOLD: a client keeps its change of ``c_i`` only once the server's ``c`` took it.

A client computes ``Delta c_i`` as it builds its reply. It used to keep the new
``c_i`` at once, so a reply the server never folded (a client failing after
building it, an update the server refused) left ``c`` short of that change for
the rest of the run: ``c`` was no longer the mean of the clients' ``c_i``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import covey
from covey import clients
from covey.aggregate import (
    Begin,
    Broadcast,
    Contribution,
    Dropped,
    Event,
    Step,
    chain,
    mean,
    run_round,
    scaffold,
)
from covey.aggregate._scaffold import APPLIED_ROUND, CLIENT_DELTA

N = 3
MODEL = {"w": np.zeros(4), "b": np.zeros(2)}


class Drifting(covey.Client):
    """Takes a few steps towards its own target; fails after its reply in one round."""

    seen: ClassVar[dict[int, dict[int, tuple[Any, Any]]]] = {}
    fail: ClassVar[tuple[int, int, str]] = (1, 1, "raise")

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.control = clients.ControlVariate()

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        correction = self.control.correction(weights, config)
        rnd = config["round"]
        assert self.control.value is not None
        copied = {k: v.copy() for k, v in self.control.value.items()}
        Drifting.seen.setdefault(rnd, {})[self.cid] = (config["extras"]["scaffold_c"], copied)
        w = {k: np.array(v) for k, v in weights.items()}
        for _ in range(3):
            for k in w:
                w[k] -= 0.1 * ((w[k] - (self.cid + 1.0)) + correction[k])
        result = self.control.fit_result(w, num_examples=1, steps=3, lr=0.1)
        cid, when, how = Drifting.fail
        if (self.cid, rnd) == (cid, when):
            if how == "raise":
                raise RuntimeError("lost after building the reply")
            assert result.delta is not None
            result.delta["w"][0] = np.nan  # refused by the server's check of updates
        return result


@pytest.mark.parametrize("how", ["raise", "nan"])
def test_c_stays_the_mean_of_the_clients_c_i_when_a_reply_is_lost(how: str) -> None:
    Drifting.seen, Drifting.fail = {}, (1, 1, how)
    strategy = covey.Scaffold(
        num_clients=N, fraction_fit=1.0, min_fit_clients=2, fraction_evaluate=0.0
    )
    result = covey.simulate(Drifting, N, 3, strategy, MODEL)
    assert [f.cid for f in result.history.rounds[1].fit_failures] == [1]
    for rnd in (2, 3):
        seen = Drifting.seen[rnd]
        assert sorted(seen) == list(range(N))
        c = seen[0][0]
        for k in MODEL:
            mean = sum(seen[cid][1][k] for cid in range(N)) / N
            np.testing.assert_allclose(c[k], mean, atol=1e-12, err_msg=f"round {rnd} {k}")


def _config(rnd: int, c: Any, applied: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {"round": rnd, "extras": {"scaffold_c": c}}
    if applied is not None:
        config[APPLIED_ROUND] = applied
    return config


@pytest.mark.parametrize(("applied", "kept"), [(1, True), (0, False)])
def test_a_deployed_client_keeps_the_unconfirmed_change_across_a_restart(
    tmp_path: Path, applied: int, kept: bool
) -> None:
    path = tmp_path / "scaffold.bin"
    x = {"w": np.zeros(3)}
    c = {"w": np.zeros(3)}
    first = clients.ControlVariate(path)
    first.correction(x, _config(1, c, 0))
    result = first.fit_result({"w": np.ones(3)}, num_examples=1, steps=1, lr=1.0)
    change = result.extras["scaffold_delta_c"]["w"]
    np.testing.assert_array_equal(change, -np.ones(3))
    assert first.value is not None
    np.testing.assert_array_equal(first.value["w"], 0.0)  # not before the server says
    assert first.pending is not None
    restarted = clients.ControlVariate(path)
    assert restarted.pending is not None
    restarted.correction(x, _config(2, c, applied))
    assert restarted.pending is None
    assert restarted.value is not None
    np.testing.assert_array_equal(restarted.value["w"], change if kept else 0.0)
    # The kept change on disk, and nothing pending; dropped, c_i is still the zeros unsaved.
    assert [p.name for p in tmp_path.iterdir()] == (["scaffold.bin"] if kept else [])
    again = clients.ControlVariate(path)
    if kept:
        assert again.value is not None
        np.testing.assert_array_equal(again.value["w"], change)
    else:
        assert again.value is None


def test_a_server_that_says_nothing_gets_the_change_kept_at_once() -> None:
    # A server of an earlier version: the client keeps its c_i+ as sent.
    control = clients.ControlVariate()
    control.correction({"w": np.zeros(2)}, _config(1, {"w": np.zeros(2)}, None))
    control.fit_result({"w": np.ones(2)}, num_examples=1, steps=1, lr=1.0)
    assert control.pending is None
    assert control.value is not None
    np.testing.assert_array_equal(control.value["w"], -1.0)


def _drop_client(cid: int, rnd: int) -> Step:
    """A step of one's own that leaves client ``cid``'s update of round ``rnd`` out."""

    def init(params: covey.Weights) -> int:
        return 0

    def update(state: int, event: Event) -> tuple[int, tuple[Event, ...]]:
        if isinstance(event, Begin):
            return event.round, (event,)
        if isinstance(event, Contribution) and (event.cid, state) == (cid, rnd):
            return state, (Dropped(cid, "left out by a step of one's own"),)
        return state, (event,)

    return Step(init, update)


def test_c_stays_the_mean_when_a_step_after_scaffold_drops_a_contribution() -> None:
    Drifting.seen, Drifting.fail = {}, (-1, -1, "")
    strategy = covey.Strategy(
        aggregator=chain(scaffold(N), _drop_client(1, 1), mean()),
        fraction_fit=1.0,
        fraction_evaluate=0.0,
    )
    result = covey.simulate(Drifting, N, 3, strategy, MODEL)
    assert [f.cid for f in result.history.rounds[1].fit_failures] == [1]
    assert result.history.rounds[1].aggregate_info["scaffold_clients"] == N - 1
    for rnd in (2, 3):
        seen = Drifting.seen[rnd]
        c = seen[0][0]
        for k in MODEL:
            mean_c_i = sum(seen[cid][1][k] for cid in range(N)) / N
            np.testing.assert_allclose(c[k], mean_c_i, atol=1e-12, err_msg=f"round {rnd} {k}")


def test_a_nested_chain_after_scaffold_that_drops_leaves_no_change_in_c() -> None:
    x = {"w": np.zeros(2)}
    step = chain(scaffold(2), chain(_drop_client(1, 1), mean()))
    given = [
        Contribution(
            cid, 1, delta={"w": np.ones(2)}, extras={CLIENT_DELTA: {"w": np.full(2, cid + 1.0)}}
        )
        for cid in (0, 1)
    ]
    state, aggregate = run_round(step, step.init(x), 1, x, given)
    assert aggregate is not None
    assert aggregate.info["scaffold_clients"] == 1
    _, out = step.feed(state, Begin(2, x))
    (sent,) = [e for e in out if isinstance(e, Broadcast)]
    np.testing.assert_array_equal(sent.extras["scaffold_c"]["w"], 0.5)  # client 0's 1.0 over N=2
