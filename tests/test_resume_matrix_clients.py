"""Client-side state when a resumed server runs a round again.

A server killed after its clients trained in round r (and perhaps r - 1, whose
checkpoint was still being written) resumes from its last saved round and
sends those rounds again. A client whose state advanced in the lost rounds
(SCAFFOLD's control variate, top-k's error feedback) must train the repeated
round from the state it had the first time, or the resumed run drifts from
one never interrupted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from covey.clients import ControlVariate
from covey.clients._client import run_task
from covey.compress._task import compressed_task
from covey.core._messages import Task

SERVER_C = "scaffold_c"


class Drifting(covey.Client):
    """Three corrected gradient steps towards a client-specific point."""

    def __init__(self, target: float) -> None:
        self.target = target
        self.control = ControlVariate()

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        correction = self.control.correction(weights, config)
        w = {k: np.array(v) for k, v in weights.items()}
        for _ in range(3):
            w = {k: w[k] - 0.1 * (2 * (w[k] - self.target) + correction[k]) for k in w}
        return self.control.fit_result(w, num_examples=4, steps=3, lr=0.1)


def _scaffold_config(rnd: int) -> dict[str, Any]:
    c = {"w": np.full(3, 0.01 * rnd)}
    return {"round": rnd, "extras": {SERVER_C: c}}


def _model(rnd: int) -> dict[str, np.ndarray]:
    return {"w": np.linspace(0.0, 1.0, 3) * rnd}


@pytest.mark.parametrize("lost", [1, 2])
def test_a_scaffold_client_repeats_lost_rounds_from_the_same_control_variate(lost: int) -> None:
    once, twice = Drifting(2.0), Drifting(2.0)
    first: dict[int, Any] = {}
    for rnd in range(1, 5):
        first[rnd] = once.fit(_model(rnd), _scaffold_config(rnd))
    for rnd in range(1, 5):
        twice.fit(_model(rnd), _scaffold_config(rnd))
    # The server lost rounds 5 - lost .. 4 and sends them again.
    for rnd in range(5 - lost, 5):
        again = twice.fit(_model(rnd), _scaffold_config(rnd))
        assert again.delta is not None
        for name in ("w",):
            assert again.delta[name].tobytes() == first[rnd].delta[name].tobytes()
            assert (
                again.extras["scaffold_delta_c"][name].tobytes()
                == first[rnd].extras["scaffold_delta_c"][name].tobytes()
            )
    assert once.control.value is not None
    assert twice.control.value is not None
    assert once.control.value["w"].tobytes() == twice.control.value["w"].tobytes()


class Moving(covey.Client):
    """An update that is not sparse, so top-k leaves a residual every round."""

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        rnd = int(config["round"])
        w = {k: np.asarray(v) + np.sin(np.arange(v.size) + rnd) for k, v in weights.items()}
        return covey.FitResult(weights=w, num_examples=2)


def _topk_task(rnd: int) -> Task:
    fit = Task("fit", rnd, {}, {"w": np.zeros(10)})
    return compressed_task(fit, "topk:0.2", 0, 7)


def handle_task(client: Any, task: Task) -> Any:
    reply = run_task(client, 7, task)
    assert reply.error is None, reply.error
    return reply.result


@pytest.mark.parametrize("lost", [1, 2])
def test_top_k_repeats_lost_rounds_from_the_same_error_feedback(lost: int) -> None:
    once, twice = Moving(), Moving()
    first = {rnd: handle_task(once, _topk_task(rnd)) for rnd in range(1, 5)}
    for rnd in range(1, 5):
        handle_task(twice, _topk_task(rnd))
    for rnd in range(5 - lost, 5):
        again = handle_task(twice, _topk_task(rnd))
        assert repr(again) == repr(first[rnd])
    # And the round after them goes on from the same residual as a run never interrupted.
    assert repr(handle_task(twice, _topk_task(5))) == repr(handle_task(once, _topk_task(5)))
