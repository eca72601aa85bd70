"""Compression served over real gRPC on 127.0.0.1, tried from outside.

Top-k's error feedback lives in the client process. A client process that
outlives its server (the server restarts, the client reconnects) must carry
its residuals into the resumed run, and must not carry them into a new run:
there they belong to another model, and one of another layout failed every
round of that client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _live import Joined, Served
from covey.clients._client import _HANDLERS
from covey.compress._runtime import _fit_compressed
from covey.compress._task import CONFIG_KEY, KIND
from covey.core._messages import Task
from covey.deploy import ServeResult

pytestmark = pytest.mark.slow


class Steady(covey.Client):
    """Sends the same update every round: all ones, the layout of the weights it gets."""

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(
            delta={n: np.arange(1.0, w.size + 1).reshape(w.shape) for n, w in weights.items()},
            num_examples=1,
        )


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []

    def handler(client: Any, task: Task) -> Any:
        seen.append(task.config[CONFIG_KEY].get("run"))
        return _fit_compressed(client, task)

    monkeypatch.setitem(_HANDLERS, KIND, handler)  # covey's own kind: not register_task
    return seen


def _serve(client: Any, rounds: int, weights: Any, **kwargs: Any) -> ServeResult:
    strategy = covey.FedAvg(
        fraction_fit=1.0, min_fit_clients=1, min_available_clients=1, fraction_evaluate=0.0
    )
    served = Served(strategy, rounds, initial_weights=weights, compression="topk:0.25", **kwargs)
    joined = Joined(served.port, client, name="site", retry_for=3.0)
    result = served.join(60)
    joined.join(30)
    return result


def test_a_client_s_residuals_follow_its_run_across_a_resume_but_not_into_another(
    tokens: list[Any], tmp_path: Path
) -> None:
    client = Steady()  # one client object: a client process outliving its server
    first = _serve(client, 1, {"w": np.zeros(8)}, run_dir=tmp_path / "a").history
    assert not first.rounds[1].fit_failures
    # Bytes as they travel: 8 float64 down; 2 of 8 entries up, a uint32 index and a value each.
    assert (first.rounds[1].bytes_sent, first.rounds[1].bytes_received) == (64, 2 * (4 + 8))
    resumed = _serve(client, 2, None, run_dir=tmp_path / "a", resume=True)
    assert not resumed.history.rounds[2].fit_failures
    # Round 1 sent the 2 largest of 1..8 (7, 8) and kept 1..6; round 2 sends the largest
    # of 1..8 plus that residual (2 * 5, 2 * 6): the residual crossed the resume.
    np.testing.assert_array_equal(resumed.weights["w"], [0, 0, 0, 0, 10, 12, 7, 8])
    other = _serve(client, 1, {"w": np.zeros(5)}).history  # a new run, another layout
    assert not other.rounds[1].fit_failures, other.rounds[1].fit_failures[0].error
    assert tokens[0] is not None
    assert tokens[0] == tokens[1] != tokens[2]
