"""where= in simulated rounds: each client judged once, not every client every round."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

import covey
from covey import FitResult
from covey.core import RoundRecord
from covey.server import AsyncLoop, RoundLoop
from covey.sim import inline_transport
from covey.transport import SimulatedAsyncTransport


class Grouped(covey.Client):
    """A stateless client in group ``cid % 4``."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def properties(self) -> dict[str, Any]:
        return {"group": self.cid % 4}

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights={k: v + 1.0 for k, v in weights.items()}, num_examples=1)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=float(self.cid), num_examples=1)


def init() -> dict[str, np.ndarray]:
    return {"w": np.zeros(3)}


def strategy(where: Any) -> covey.Strategy:
    return covey.FedAvg(fraction_fit=0.05, fraction_evaluate=0.05, where=where)


class AskedEveryRound(covey.Strategy):
    """A strategy whose own eligible() a round asks every round, as a deployed round does."""

    def eligible(
        self, available: Sequence[int], properties: Mapping[int, Mapping[str, Any]]
    ) -> list[int]:
        return super().eligible(available, properties)


def participants(history: covey.History) -> list[tuple[list[int], list[int]]]:
    return [(r.fit_participants, r.evaluate_participants) for r in history.rounds]


def test_a_where_predicate_judges_each_simulated_client_once() -> None:
    judged: list[int] = []

    def in_group_one(props: Mapping[str, Any]) -> bool:
        judged.append(props["group"])
        return bool(props["group"] == 1)

    result = covey.simulate(Grouped, 400, 4, strategy(in_group_one), init(), client_cache=0)
    # Each of the 400 clients once: a round judged all 400 for training and again for
    # evaluation, 3,200 calls in four rounds, and so O(N) per round.
    assert len(judged) == 400
    for fit, evaluated in participants(result.history)[1:]:
        assert len(fit) == 5
        assert {cid % 4 for cid in fit} == {1}, fit
        assert len(evaluated) == 5
        assert {cid % 4 for cid in evaluated} == {1}, evaluated


def test_kept_judgement_samples_the_clients_a_round_judging_all_samples() -> None:
    kept = covey.simulate(Grouped, 400, 3, strategy({"group": 2}), init(), seed=3)
    every = AskedEveryRound(fraction_fit=0.05, fraction_evaluate=0.05, where={"group": 2})
    judged_each_round = covey.simulate(Grouped, 400, 3, every, init(), seed=3)
    assert participants(kept.history) == participants(judged_each_round.history)
    assert (kept.weights["w"] == judged_each_round.weights["w"]).all()


def _switching(where: dict[str, Any]) -> Callable[[RoundRecord], None]:
    """An ``on_round`` turning ``where`` to group 3 after round 1 and to group 0 after round 2."""

    def switch(record: RoundRecord) -> None:
        if record.round == 1:
            where["group"] = 3
        if record.round == 2:
            where["group"] = 0

    return switch


def test_a_where_dict_changed_between_rounds_applies_from_the_next_round() -> None:
    where: dict[str, Any] = {"group": 1}
    switch = _switching(where)

    result = covey.simulate(Grouped, 400, 3, strategy(where), init(), on_round=switch)
    groups = [{cid % 4 for cid in fit} for fit, _ in participants(result.history)[1:]]
    assert groups == [{1}, {3}, {0}]


class Counted(dict[int, dict[str, Any]]):
    """Properties that count the look-ups of a client among them (``cid in properties``)."""

    looked = 0

    def __contains__(self, cid: object) -> bool:
        Counted.looked += 1
        return super().__contains__(cid)


class SilentSome(Grouped):
    """Clients whose id ends in 99 never report their properties."""

    def properties(self) -> dict[str, Any]:
        if self.cid % 100 == 99:
            raise RuntimeError("no properties here")
        return super().properties()


def looked_per_step(loop: Any, steps: int) -> list[int]:
    """How many client look-ups each of ``steps`` rounds or updates made, past the first."""
    looked: list[int] = []

    def count(record: RoundRecord) -> None:
        looked.append(Counted.looked)
        Counted.looked = 0

    loop.properties = Counted()
    loop.on_round = count
    loop.run(steps)
    return looked[2:]  # the first update or round asks every client once


def test_a_fedbuff_update_looks_only_at_the_clients_still_to_report() -> None:
    # Each update looked at every client for one still to report: O(N) an update
    # (about 25 ms at 100,000 clients) once all but a few had reported.
    n = 2_000
    transport = SimulatedAsyncTransport(inline_transport(SilentSome, n, client_cache=0))
    strategy = covey.FedBuff(buffer_size=5, concurrency=5, where={"group": 1})
    loop = AsyncLoop(strategy, transport, init())
    looked = looked_per_step(loop, 6)
    assert looked
    assert all(count < n // 10 for count in looked), looked


def test_a_round_looks_only_at_the_simulated_clients_still_to_report() -> None:
    n = 2_000
    transport = inline_transport(SilentSome, n, client_cache=0)
    loop = RoundLoop(strategy({"group": 1}), transport, init(), simulated=True)
    looked = looked_per_step(loop, 4)
    assert looked
    assert all(count < n // 10 for count in looked), looked


class Sent(Grouped):
    """Notes the groups of the clients each update sent a task to."""

    groups: ClassVar[dict[int, set[int]]] = {}

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        Sent.groups.setdefault(config["round"], set()).add(self.cid % 4)
        return super().fit(weights, config)


def test_a_where_dict_changed_between_fedbuff_updates_applies_from_the_next_update() -> None:
    # FedBuff judged each client once, when it reported: a where dict changed
    # between updates went on picking the clients the first entries passed.
    where: dict[str, Any] = {"group": 1}
    switch = _switching(where)

    Sent.groups = {}
    fedbuff = covey.FedBuff(buffer_size=5, concurrency=5, where=where)
    covey.simulate(Sent, 400, 3, fedbuff, init(), on_round=switch, seed=1)
    # The tasks an update sends (a task in flight is trained on the model it was sent).
    assert Sent.groups == {1: {1}, 2: {3}, 3: {0}}
