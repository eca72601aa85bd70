"""Code inside a client's task knows which client and which round it runs for."""

from __future__ import annotations

from typing import Any

import numpy as np

import covey
from covey.clients import run_task
from covey.clients._client import fit_result
from covey.clients._current import TaskContext, current_task
from covey.core._messages import Task

MODEL = {"w": np.zeros(2)}


class Seen(covey.Client):
    """Keeps the task context each of its fits ran in."""

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        self.seen.append(current_task())
        return covey.FitResult(weights=dict(weights), num_examples=1)


def test_the_runtime_tells_a_fit_its_client_and_round_and_nothing_outside() -> None:
    seen: list[Any] = []
    assert run_task(Seen(seen), 7, Task("fit", 3, weights=MODEL)).error is None
    fit_result(Seen(seen), 2, Task("fit", 5, weights=MODEL))
    assert seen == [TaskContext(7, 3), TaskContext(2, 5)]
    assert current_task() is None
    Seen(seen).fit(MODEL, {"round": 1})  # called directly: no task
    assert seen[-1] is None


def test_a_simulation_tells_each_fit_its_cid_and_round() -> None:
    seen: list[Any] = []
    covey.simulate(lambda cid: Seen(seen), 2, 2, covey.FedAvg(fraction_evaluate=0.0), MODEL)
    assert sorted(seen) == [(0, 1), (0, 2), (1, 1), (1, 2)]
