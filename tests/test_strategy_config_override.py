"""A subclass's fit_config()/evaluate_config() override beside the on_*_config option."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from covey import EvaluateResult, FitResult


class Told(covey.Client):
    def __init__(self, seen: list[dict[str, Any]]) -> None:
        self.seen = seen

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        self.seen.append(dict(config))
        return FitResult(delta={"w": np.ones(1)}, num_examples=1)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        self.seen.append(dict(config))
        return EvaluateResult(loss=0.0, num_examples=1)


class Schedule(covey.Strategy):
    def fit_config(self, round: int) -> dict[str, Any]:
        return {"lr": 0.5**round}


class Merged(covey.Strategy):
    def fit_config(self, round: int) -> dict[str, Any]:
        return {**super().fit_config(round), "lr": 0.5**round}


class Judged(covey.Strategy):
    def evaluate_config(self, round: int) -> dict[str, Any]:
        return {"batch": 64}


def _run(strategy: covey.Strategy) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    covey.simulate(lambda cid: Told(seen), 2, 1, strategy, {"w": np.zeros(1)})
    return seen


def test_an_override_that_drops_the_option_given_beside_it_is_refused_naming_both() -> None:
    # Schedule(on_fit_config=...) trained with the override's entries alone: the
    # option's "epochs" never reached a client, and nothing said so.
    strategy = Schedule(on_fit_config=lambda round: {"epochs": 5}, fraction_evaluate=0.0)
    with pytest.raises(
        ValueError,
        match=r"Schedule\.fit_config\(\) overrides Strategy\.fit_config\(\) without calling "
        r"it, so on_fit_config=\S*<lambda> given to the strategy is never called: .*"
        r"super\(\)\.fit_config\(round\)",
    ):
        _run(strategy)
    judged = Judged(on_evaluate_config=lambda round: {"steps": 1}, fraction_evaluate=1.0)
    with pytest.raises(ValueError, match=r"Judged\.evaluate_config\(\) overrides"):
        _run(judged)


def test_an_override_alone_or_one_that_calls_the_base_runs_as_written() -> None:
    assert _run(Schedule(fraction_evaluate=0.0)) == [{"lr": 0.5, "round": 1}] * 2
    merged = Merged(on_fit_config=lambda round: {"epochs": 5}, fraction_evaluate=0.0)
    assert _run(merged) == [{"epochs": 5, "lr": 0.5, "round": 1}] * 2
    assert _run(Judged(fraction_evaluate=1.0))[-1] == {"batch": 64, "round": 1}


class ByClient(covey.Strategy):
    def client_fit_config(self, round: int, client: Any) -> dict[str, Any]:
        return {"lr": 0.1 * (client.cid + 1)}


class ByClientMerged(covey.Strategy):
    def client_fit_config(self, round: int, client: Any) -> dict[str, Any]:
        return {**super().client_fit_config(round, client), "lr": 0.1 * (client.cid + 1)}


def test_a_per_client_override_that_drops_its_option_is_refused_too() -> None:
    def epochs(round: int, client: Any) -> dict[str, Any]:
        return {"epochs": 2}

    strategy = ByClient(on_client_fit_config=epochs, fraction_evaluate=0.0)
    with pytest.raises(
        ValueError,
        match=r"ByClient\.client_fit_config\(\) overrides Strategy\.client_fit_config\(\) "
        r"without calling it, so on_client_fit_config=\S*epochs given to the strategy is "
        r"never called: .*super\(\)\.client_fit_config\(round, client\)",
    ):
        _run(strategy)
    assert sorted(c["lr"] for c in _run(ByClient(fraction_evaluate=0.0))) == [0.1, 0.2]
    merged = _run(ByClientMerged(on_client_fit_config=epochs, fraction_evaluate=0.0))
    assert sorted((c["lr"], c["epochs"]) for c in merged) == [(0.1, 2), (0.2, 2)]


class Direct(covey.Strategy):
    def fit_config(self, round: int) -> dict[str, Any]:
        return {**self.on_fit_config(round), "lr": 0.5**round}

    def client_fit_config(self, round: int, client: Any) -> dict[str, Any]:
        assert self.on_client_fit_config is not None
        return {**self.on_client_fit_config(round, client), "cid": client.cid}


def test_an_override_that_calls_its_option_itself_runs_and_leaves_it_as_given() -> None:
    def epochs(round: int) -> dict[str, Any]:
        return {"epochs": 5}

    def steps(round: int, client: Any) -> dict[str, Any]:
        return {"steps": 3}

    strategy = Direct(on_fit_config=epochs, on_client_fit_config=steps, fraction_evaluate=0.0)
    seen = _run(strategy)
    assert sorted(c["cid"] for c in seen) == [0, 1]
    assert all(c["epochs"] == 5 and c["steps"] == 3 and c["lr"] == 0.5 for c in seen)
    assert strategy.on_fit_config is epochs
    assert strategy.on_client_fit_config is steps


class LeaderFirst(covey.Strategy):
    def client_fit_config(self, round: int, client: Any) -> dict[str, Any]:
        if client.cid == 0:  # the first client is told apart; the others get the option's
            return {"leader": True}
        return super().client_fit_config(round, client)


def test_a_per_client_override_that_calls_its_option_for_some_clients_runs() -> None:
    # Only the round's first client was looked at: an override that calls the default
    # for every client but that one was refused, though the option reached the others.
    def epochs(round: int, client: Any) -> dict[str, Any]:
        return {"epochs": 2}

    seen = _run(LeaderFirst(on_client_fit_config=epochs, fraction_evaluate=0.0))
    assert sorted(seen, key=lambda c: "leader" in c) == [
        {"epochs": 2, "round": 1},
        {"leader": True, "round": 1},
    ]


class LaterOwn(covey.Strategy):
    def fit_config(self, round: int) -> dict[str, Any]:
        if round > 2:  # from round 3 on, the override's entries alone
            return {"lr": 0.01}
        return super().fit_config(round)


def test_an_override_that_drops_its_option_from_a_later_round_on_is_warned_of_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Refused as round 3's config was made: a run stopped mid-way for what round 1 passed.
    seen: list[dict[str, Any]] = []
    strategy = LaterOwn(on_fit_config=lambda round: {"epochs": 5}, fraction_evaluate=0.0)
    with caplog.at_level("WARNING", logger="covey"):
        result = covey.simulate(lambda cid: Told(seen), 2, 5, strategy, {"w": np.zeros(1)})
    assert [r.aggregated for r in result.history.rounds[1:]] == [True] * 5
    assert [c.get("epochs") for c in seen] == [5, 5, 5, 5, None, None, None, None, None, None]
    warned = [r.getMessage() for r in caplog.records if "never called" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith(
        "from round 3: LaterOwn.fit_config() overrides Strategy.fit_config() without calling it"
    )
