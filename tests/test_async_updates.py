"""FedBuff's clock: what its messages call a step, what staleness counts, what it takes.

An asynchronous run has global updates, not rounds: its errors and log lines
say ``update N``. Staleness counts the models clients trained from, so an
update whose aggregation failed (the model unchanged) makes no later update
staler. A staleness function may return any real scalar NumPy gives.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from safetensors import SafetensorError

import covey
from covey.aggregate import Contribution
from covey.core import RoundRecord
from covey.core._history import Failure
from covey.deploy._console import ServerConsole
from covey.server import AsyncLoop
from covey.server._saver import BackgroundSaver, SaveError, flushing
from covey.server._store import RunStore
from covey.sim import inline_transport
from covey.strategies import ClientInfo
from covey.transport import SimulatedAsyncTransport


class Const(covey.Client):
    """Sends ``delta = cid + 1``; ``broken``: fails; ``empty``: 0 examples in update 2."""

    def __init__(self, cid: int, broken: bool = False, empty: bool = False) -> None:
        self.cid, self.broken, self.empty = cid, broken, empty

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        if self.broken:
            raise RuntimeError(f"client {self.cid} is broken")
        examples = 0 if self.empty and config["round"] == 2 else 1
        return covey.FitResult(delta={"w": np.full(2, float(self.cid + 1))}, num_examples=examples)


def two_clients(client_fn: Any = Const, **strategy: Any) -> covey.sim.SimulationResult:
    """Client 0 takes 1 s, client 1 takes 3 s; each update is one reply (K=1)."""
    return covey.simulate(
        client_fn,
        2,
        4,
        covey.FedBuff(buffer_size=1, concurrency=2, **strategy),
        {"w": np.zeros(2)},
        client_durations=[1.0, 3.0],
    )


# -- 1. "update N", not "round N" --------------------------------------------------------------


def test_the_servers_lines_of_an_asynchronous_run_name_updates() -> None:
    record = RoundRecord(3, fit_participants=[0, 1])
    record.fit_failures.append(Failure(2, "fit", "it broke"))
    record.durations["fit"] = 1.0
    lines: list[str] = []
    ServerConsole(lines.append, 1, {0: "a", 1: "b", 2: "c"}, "update").on_round(record)
    ServerConsole(lines.append, 1, {}, "update").on_round(RoundRecord(0))
    text = "\n".join(lines)
    assert "update 3: fit by a, b" in text
    assert "update 3: took fit 1.00 s" in text
    assert "update 3: client 2 failed in fit:" in text
    assert "update 0 (initial model)" in text
    assert "round" not in text
    rounds: list[str] = []  # a synchronous run's lines are as they were
    ServerConsole(rounds.append, 1, {0: "a", 1: "b", 2: "c"}).on_round(record)
    assert "round 3: fit by a, b" in "\n".join(rounds)
    assert "round 3: client 2 failed in fit:" in "\n".join(rounds)


def test_the_failures_past_those_logged_are_counted_in_the_update(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Clients 1 to 14 fail in update 2 (client 0 took update 1 alone): ten are logged
    # one by one, the other four counted in one line that named "round 2".
    transport = SimulatedAsyncTransport(inline_transport(lambda cid: Const(cid, cid > 0), 15))
    loop = AsyncLoop(covey.FedBuff(buffer_size=1, concurrency=15), transport, {"w": np.zeros(2)})
    with caplog.at_level(logging.WARNING, logger="covey"):
        history = loop.run(2)
    assert len(history.rounds[2].fit_failures) == 14
    counted = [r.getMessage() for r in caplog.records if "more clients failed" in r.getMessage()]
    assert counted == ["update 2: 4 more clients failed in fit; every failure is in the history"]


def test_a_clients_failure_is_logged_under_its_update_as_a_rounds_is_under_its_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A FedBuff run logged "client 0 failed in fit: ..." with no "update N:" before it.
    transport = SimulatedAsyncTransport(inline_transport(lambda cid: Const(cid, cid == 0), 2))
    loop = AsyncLoop(covey.FedBuff(buffer_size=1, concurrency=2), transport, {"w": np.zeros(2)})
    with caplog.at_level(logging.WARNING, logger="covey"):
        history = loop.run(1)
    [failure] = history.rounds[1].fit_failures
    said = [r.getMessage() for r in caplog.records if "failed in fit" in r.getMessage()]
    assert said == [f"update 1: client 0 failed in fit: {failure.error}"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="covey"):
        covey.simulate(
            lambda cid: Const(cid, cid == 1),
            2,
            1,
            covey.FedAvg(min_fit_clients=1, fraction_evaluate=0.0),
            {"w": np.zeros(2)},
        )
    said = [r.getMessage() for r in caplog.records if "failed in fit" in r.getMessage()]
    assert said == ["round 1: client 1 failed in fit: RuntimeError: client 1 is broken"]


def test_a_config_no_client_can_be_sent_names_the_update() -> None:
    def config(update: int) -> dict[str, Any]:
        return {"tags": {"a", "b"}}  # a set: JSON has none

    with pytest.raises(covey.FederationError) as stopped:
        two_clients(on_fit_config=config)
    assert "returned a config for update 1 that clients cannot be sent" in str(stopped.value)
    with pytest.raises(covey.FederationError, match="returned a config for round 1 that"):
        covey.simulate(
            Const, 2, 1, covey.FedAvg(on_fit_config=config), {"w": np.zeros(2)}
        )  # a synchronous run says "round", as before


# -- 2. staleness counts the models produced ----------------------------------------------------


def test_an_update_whose_aggregation_failed_makes_no_update_staler() -> None:
    # t=1: client 0 (sent model 0) -> update 1, w=1. t=2: client 0 -> update 2 with
    # num_examples=0: its weighted mean is undefined, the model stays w=1. t=3: client 1,
    # sent model 0, trained from a model one new model old (not two: update 2 made
    # none), scaled by 1/sqrt(2); then client 0, sent w=1 after update 2, one old too.
    result = two_clients(lambda cid: Const(cid, empty=cid == 0))
    rounds = result.history.rounds[1:]
    assert [r.fit_participants for r in rounds] == [[0], [0], [1], [0]]
    assert [r.aggregated for r in rounds] == [True, False, True, True]
    assert "num_examples=0" in rounds[1].aggregate_info["error"]
    assert [r.aggregate_info["staleness"] for r in rounds] == [[0], [0], [1], [1]]
    expected = 1 + 2 / math.sqrt(2) + 1 / math.sqrt(2)
    np.testing.assert_allclose(result.weights["w"], [expected, expected])
    # Every update applied, client 1's update is two new models old.
    applied = two_clients().history.rounds[1:]
    assert [r.aggregate_info["staleness"] for r in applied] == [[0], [0], [2], [1]]


# -- 3. what a staleness function may return ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "same"), [(np.array(0.5), 0.5), (np.array(1), 1), (np.array(0.25, np.float32), 0.25)]
)
def test_a_staleness_function_may_return_a_0d_array(value: Any, same: Any) -> None:
    # A 0-d array (np.clip of a float, a reduction) was refused where its scalar was taken.
    def run(factor: Any) -> covey.Weights:
        return two_clients(staleness=lambda tau: 1.0 if tau == 0 else factor).weights

    expected = 1 + 1 + float(same) * 2 + float(same) * 1
    np.testing.assert_allclose(run(value)["w"], [expected, expected])
    for scalar in (same, np.float64(same)):
        np.testing.assert_array_equal(run(value)["w"], run(scalar)["w"])


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (True, "a bool, not a number"),
        (np.True_, "a bool, not a number"),
        (np.array(True), "a bool, not a number"),
        (float("nan"), "not a finite number"),
        (np.array(np.inf), "not a finite number"),
        (-0.5, "a negative number"),
        (np.float64(1.5), "above 1"),
        (np.array([0.5]), "an array of shape (1,), not one number"),
        ([0.5], "a list, not a real number"),
        ("0.5", "a str, not a real number"),
        (0.5j, "a complex, not a real number"),
    ],
)
def test_a_staleness_function_returning_no_factor_stops_the_run_naming_it(
    value: Any, why: str
) -> None:
    def mine(tau: int) -> Any:
        return 1.0 if tau == 0 else value

    with pytest.raises(covey.FederationError) as stopped:
        two_clients(staleness=mine)
    message = str(stopped.value)
    assert message.startswith("update 3: the aggregation step failed on client 1's update")
    assert "the staleness function " in message
    assert ".mine' gave " in message
    assert f"for staleness 2, {why}: it must return a number from 0 to 1" in message


# -- 4. what the aggregation step, the configs and the run folder call a step -------------------


def test_the_aggregators_zero_examples_error_names_the_update() -> None:
    # the weighted mean said "round 2: all 1 contributions have num_examples=0" (and the
    # staleness weighting, a per-client step, passes the End on with what it counts)
    result = two_clients(lambda cid: Const(cid, empty=cid == 0))
    said = "AggregationError: update 2: all 1 contributions have num_examples=0"
    assert result.history.rounds[2].aggregate_info["error"].startswith(said)
    rounds = covey.simulate(
        lambda cid: Const(cid, empty=True), 2, 2, covey.FedAvg(), {"w": np.zeros(2)}
    )  # a synchronous run says "round", as before
    said = "AggregationError: round 2: all 2 contributions have num_examples=0"
    assert rounds.history.rounds[2].aggregate_info["error"].startswith(said)


def _misshapen(params: Any) -> Any:
    return None


def _emitting_misshapen(state: Any, event: Any) -> Any:
    """A reducer of one's own whose aggregate delta has the wrong shape."""
    if isinstance(event, covey.aggregate.End):
        delta = {"w": np.ones(3)}
        return state, (covey.aggregate.Aggregate(event.round, 1, 1, delta=delta),)
    if isinstance(event, Contribution):
        return state, ()
    return state, (event,)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_misshapen_aggregate_delta_names_the_update(asynchronous: bool) -> None:
    # Aggregate.apply said "round 2's aggregate delta" in an asynchronous run too
    step = covey.aggregate.Step(_misshapen, _emitting_misshapen)
    options: dict[str, Any] = {"buffer_size": 1} if asynchronous else {}
    strategy = covey.Strategy(aggregator=step, fraction_evaluate=0.0, **options)
    result = covey.simulate(Const, 2, 2, strategy, {"w": np.zeros(2)})
    at = "update" if asynchronous else "round"
    said = f"{at} 2's aggregate delta: 'w' has shape (3,), expected (2,)"
    assert result.history.rounds[2].aggregate_info["error"] == said


def test_a_config_setting_what_covey_sets_names_the_update() -> None:
    def extras(rnd: int) -> dict[str, Any]:
        return {"extras": 1}

    def own_round(rnd: int, client: ClientInfo) -> dict[str, Any]:
        return {"round": 7}

    def broken(rnd: int, client: ClientInfo) -> dict[str, Any]:
        raise KeyError("lr")

    clients = [ClientInfo(0, None)]
    # a synchronous run's configs say "round", as before
    for strategy, step in ((covey.FedBuff, "update"), (covey.FedAvg, "round")):
        with pytest.raises(ValueError, match=f"set 'extras' in {step} 3: covey sets"):
            strategy(on_fit_config=extras).fit_task_config(3)
        configs = strategy(on_client_fit_config=own_round)
        with pytest.raises(ValueError, match=f"set 'round' for client 0 in {step} 3: covey sets"):
            configs.client_task_configs("fit", 3, {}, clients)
        with pytest.raises(KeyError) as raised:
            strategy(on_client_fit_config=broken).client_task_configs("fit", 3, {}, clients)
        assert f"for client 0 in {step} 3" in "\n".join(raised.value.__notes__)


def _same(saver: BackgroundSaver) -> BackgroundSaver:
    return saver


def test_a_save_that_fails_names_the_update_of_an_asynchronous_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a deployed FedBuff run whose disk filled said "saving round 1 ... cannot save round 1"
    save_file = safetensors.numpy.save_file

    def full(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    contribution = Contribution(0, 1, delta={"w": np.ones(2)})
    # a synchronous run's words are as before
    for options, step, one in (
        ({"buffer_size": 2}, "update", "an update"),
        ({}, "round", "a round"),
    ):
        monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
        run_dir = tmp_path / step
        config = {"strategy": {"name": "FedBuff" if options else "FedAvg", "options": options}}
        saver = BackgroundSaver(RunStore.create(run_dir, config=config))
        saver.submit(0, {"w": np.zeros(2)}, None)
        saver.flush()
        monkeypatch.setattr(safetensors.numpy, "save_file", full)
        saver.submit(1, {"w": np.ones(2)}, None)
        wrapped = flushing(covey.FedBuff(buffer_size=2), functools.partial(_same, saver))
        update = wrapped.aggregator.update
        caplog.clear()
        with pytest.raises(SaveError) as failed:
            update(None, contribution)
        said = str(failed.value)
        assert said.startswith(f"saving {step} 1 to {run_dir} failed: OSError: ")
        file = run_dir / "weights" / "round-00001.safetensors"
        assert f"cannot save {step} 1 to {file}: Error while serializing" in said
        assert ("round" not in said.replace(str(file), "")) == (step == "update")
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("saving")]
        assert [m.split(" to ")[0] for m in logged] == [
            f"saving {one} failed: cannot save {step} 1"
        ]
        saver.store.close()
