"""A config holding NaN is refused alike in simulation and deployed.

A deployed client refuses a task whose config holds NaN (``refusing the task:
the server's config holds NaN at lr``), while inline and process clients were
handed the NaN and trained with it: a run that worked in simulation failed
deployed. Every backend now fails such a client with the deployed error; an
infinity (no limit) is kept everywhere.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pytest

import covey
from _live import Joined
from covey.core._messages import Reply, Task
from covey.sim import ProcessTransport, inline_transport
from covey.transport.grpc import GrpcServerTransport

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")]

CONFIGS: list[dict[str, Any]] = [
    {"lr": math.nan},
    {"clip": math.inf, "lr": 0.1},
    {"opt": {"betas": [0.9, math.nan]}},
]

ERRORS = [
    "refusing the task: the server's config holds NaN at lr",
    None,
    "refusing the task: the server's config holds NaN at opt.betas[1]",
]


class Echo(covey.Client):
    """Trains nothing; reports the config entries it was given as metrics."""

    def get_weights(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(2)}

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        metrics = {k: v for k, v in config.items() if isinstance(v, float)}
        return covey.FitResult(weights=weights, num_examples=1, metrics=metrics)


def _tasks() -> dict[int, Task]:
    weights = {"w": np.zeros(2)}
    return {i: Task("fit", 1, config, weights) for i, config in enumerate(CONFIGS)}


def _errors(replies: Any) -> list[str | None]:
    return [r.error for r in sorted(replies, key=lambda r: r.cid)]


def _simulated(backend: str) -> list[Reply]:
    tasks = _tasks()
    if backend == "inline":
        return list(inline_transport(lambda cid: Echo(), len(tasks)).exchange(tasks))
    with ProcessTransport(lambda cid: Echo(), len(tasks), num_workers=1) as processes:
        return list(processes.exchange(tasks))


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_simulation_refuses_a_config_holding_nan_as_deployed(backend: str) -> None:
    replies = _simulated(backend)
    assert _errors(replies) == ERRORS
    (kept,) = [r for r in replies if r.ok]
    assert kept.result.metrics == {"clip": math.inf, "lr": 0.1}


def test_a_deployed_client_refuses_the_same_configs() -> None:
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    client = Joined(transport.port, Echo(), name="site", max_attempts=1)
    try:
        assert transport.wait_for_clients(1, 20)
        (cid,) = transport.clients()
        errors = [next(iter(transport.exchange({cid: task}))).error for task in _tasks().values()]
    finally:
        transport.close()
        client.join(30)
    assert errors == ERRORS


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_round_config_holding_nan_fails_the_round_naming_the_key(
    backend: Literal["inline", "process"],
) -> None:
    strategy = covey.FedAvg(on_fit_config=lambda rnd: {"lr": math.nan})
    with pytest.raises(covey.FederationError, match=r"config holds NaN at lr"):
        covey.simulate(
            lambda cid: Echo(),
            num_clients=2,
            rounds=1,
            strategy=strategy,
            initial_weights={"w": np.zeros(2)},
            backend=backend,
        )
