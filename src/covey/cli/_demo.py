"""The demo federation: label-skewed digits across simulated clients, NumPy logistic regression."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covey.cli._model import RoundModels
from covey.core._history import RoundRecord
from covey.core._messages import Scalar
from covey.core._weights import Weights
from covey.data import dirichlet, load_digits
from covey.models import LogisticClient, logistic_evaluate, logistic_init
from covey.server._outputs import plot_history
from covey.server._sync import RoundCallback
from covey.sim import SimulationResult, simulate
from covey.strategies._presets import FedAvg


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo run (the ``covey demo`` flags)."""

    clients: int = 100
    rounds: int = 30
    fraction: float = 0.1
    alpha: float = 0.5
    lr: float = 0.5
    epochs: int = 5
    batch_size: int = 16
    seed: int = 0
    backend: str = "inline"
    start_method: str | None = None


class SplitError(ValueError):
    """The demo's label-skewed split cannot give every client two examples."""


def demo_split(config: DemoConfig, data: Any) -> list[Any]:
    """Each client's indices into the digits: a Dirichlet(alpha) split, two examples each.

    Raises:
        SplitError: naming the flags to change, if no draw gives every client two.
    """
    try:
        return dirichlet(data.y_train, config.clients, config.alpha, seed=config.seed, min_size=2)
    except ValueError:
        raise SplitError(
            f"--clients {config.clients} --alpha {config.alpha:g}: no Dirichlet("
            f"{config.alpha:g}) split of the {len(data.y_train)} digits gave every one of "
            f"{config.clients} clients two examples; raise --alpha or lower --clients"
        ) from None


def _client(config: DemoConfig, data: Any, parts: list[Any], cid: int) -> LogisticClient:
    """Client ``cid`` of the demo (a module-level function: it reaches spawned workers)."""
    x, y = data.client(parts[cid])
    # Each site holds out a fifth of its data for federated evaluation.
    n_val = max(1, len(y) // 5)
    return LogisticClient(
        cid,
        x[n_val:],
        y[n_val:],
        x[:n_val],
        y[:n_val],
        lr=config.lr,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
    )


def run_demo(
    config: DemoConfig,
    *,
    run_dir: Path | None = None,
    progress: bool = True,
    on_round: RoundCallback | None = None,
    models: RoundModels | None = None,
) -> SimulationResult:
    """Run the demo federation and return its result.

    ``models``: given, it keeps the model after the last complete round (for
    ``covey demo --out``), whatever stops the run.
    """
    data = load_digits(seed=config.seed)
    parts = demo_split(config, data)

    def evaluate(rnd: int, weights: Weights) -> tuple[float, dict[str, Scalar]]:
        loss, accuracy = logistic_evaluate(weights, data.x_test, data.y_test)
        return loss, {"accuracy": accuracy}

    evaluate_fn: Any = evaluate
    if models is not None:
        models.evaluate_fn = evaluate
        evaluate_fn = models.evaluate
        on_round = functools.partial(_both, models.finished, on_round)
    per_round = max(2, math.floor(config.clients * config.fraction))
    strategy = FedAvg(
        fraction_fit=config.fraction,
        min_fit_clients=min(per_round, config.clients),
        fraction_evaluate=config.fraction,
        min_evaluate_clients=min(per_round, config.clients),
        min_available_clients=min(2, config.clients),
    )
    backend: Any = config.backend
    return simulate(
        functools.partial(_client, config, data, parts),
        config.clients,
        config.rounds,
        strategy,
        logistic_init(data.num_features, data.num_classes),
        evaluate_fn,
        backend=backend,
        start_method=config.start_method,  # type: ignore[arg-type]
        seed=config.seed,
        progress=progress,
        on_round=on_round,
        run_dir=run_dir,
    )


def _both(first: RoundCallback, then: RoundCallback | None, record: RoundRecord) -> None:
    first(record)
    if then is not None:
        then(record)


__all__ = ["DemoConfig", "plot_history", "run_demo"]
