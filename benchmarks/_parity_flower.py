"""The Flower half of ``flower_parity.py``: Flower's canonical patterns on the parity workload.

Runs in Flower's venv (``.venv-flower``), never in covey's, and prints one JSON
object: for each scenario the final weights and Flower's ``History``. The
clients are ``NumPyClient`` objects built by ``client_fn(context)`` from
``context.node_config["partition-id"]``; the server is Flower's own ``Server``
loop with Flower's strategies. The clients are reached in this process by a
small ``ClientProxy`` (no Ray, no network), so every number is Flower's
arithmetic and runs in a second. With ``--ray`` the FedAvg scenario also
runs as a ``ServerApp`` and ``ClientApp`` through ``run_simulation`` on Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
warnings.simplefilter("ignore", DeprecationWarning)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _parity_workload as wl  # noqa: E402
import numpy as np  # noqa: E402
from flwr.client import NumPyClient  # noqa: E402
from flwr.common import Context, RecordDict, ndarrays_to_parameters  # noqa: E402
from flwr.server import Server  # noqa: E402
from flwr.server.client_manager import SimpleClientManager  # noqa: E402
from flwr.server.client_proxy import ClientProxy  # noqa: E402
from flwr.server.strategy import (  # noqa: E402
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
)

NAMES = ("W", "b")


class DigitsClient(NumPyClient):
    """Flower's NumPyClient: parameters are a list of arrays in a fixed order."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [wl.initial()[k] for k in NAMES]

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"partition": self.pid}

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        mu = float(config.get("proximal_mu", 0.0))
        w, b, loss = wl.train(*parameters, self.pid, int(config["server_round"]), config["lr"], mu)
        return [w, b], len(wl.partition(self.pid)[1]), {"train_loss": loss}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        x, y = wl.partition(self.pid)
        loss, acc = wl.loss_accuracy(*parameters, x, y)
        return loss, len(y), {"accuracy": acc}


def client_fn(context: Context) -> Any:
    """Flower's client_fn: the partition comes from the node's config."""
    return DigitsClient(int(context.node_config["partition-id"])).to_client()


class InProcess(ClientProxy):
    """Reaches one client in this process: each call goes straight to its Client methods."""

    def __init__(self, pid: int) -> None:
        super().__init__(str(pid))
        config = {"partition-id": pid, "num-partitions": wl.NUM_CLIENTS}
        self.client = client_fn(Context(0, pid, config, RecordDict(), {}))

    def get_properties(self, ins: Any, timeout: Any, group_id: Any) -> Any:
        return self.client.get_properties(ins)

    def get_parameters(self, ins: Any, timeout: Any, group_id: Any) -> Any:
        return self.client.get_parameters(ins)

    def fit(self, ins: Any, timeout: Any, group_id: Any) -> Any:
        return self.client.fit(ins)

    def evaluate(self, ins: Any, timeout: Any, group_id: Any) -> Any:
        return self.client.evaluate(ins)

    def reconnect(self, ins: Any, timeout: Any, group_id: Any) -> Any:
        raise NotImplementedError


def fit_config(server_round: int) -> dict[str, Any]:
    return {"server_round": server_round, "lr": wl.learning_rate(server_round)}


def central(server_round: int, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
    _, _, x, y = wl.data()
    loss, acc = wl.loss_accuracy(*parameters, x, y)
    return loss, {"accuracy": acc}


def options() -> dict[str, Any]:
    """Every FedAvg option the scenarios share."""
    n = wl.NUM_CLIENTS
    return {
        "fraction_fit": 1.0,
        "fraction_evaluate": 1.0,
        "min_fit_clients": n,
        "min_evaluate_clients": n,
        "min_available_clients": n,
        "evaluate_fn": central,
        "on_fit_config_fn": fit_config,
        "on_evaluate_config_fn": lambda rnd: {"server_round": rnd},
        "fit_metrics_aggregation_fn": wl.weighted_average,
        "evaluate_metrics_aggregation_fn": wl.weighted_average,
        "initial_parameters": ndarrays_to_parameters([wl.initial()[k] for k in NAMES]),
    }


class SaveModelStrategy(FedAvg):
    """Flower's custom-strategy habit: save the global model each round, add to the config."""

    saved: ClassVar[dict[int, list[np.ndarray]]] = {}

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        from flwr.common import FitIns

        pairs = super().configure_fit(server_round, parameters, client_manager)
        # FedAvg hands every client the same FitIns: build one per client, not edit it in place.
        return [
            (client, FitIns(ins.parameters, {**ins.config, "lr": ins.config["lr"] / 2}))
            for client, ins in pairs
        ]

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        from flwr.common import parameters_to_ndarrays

        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:
            self.saved[server_round] = parameters_to_ndarrays(parameters)
        return parameters, metrics


def strategies() -> dict[str, Any]:
    return {
        "FedAvg": FedAvg(**options()),
        "FedAvgM": FedAvgM(**options(), server_learning_rate=1.0, server_momentum=0.9),
        "FedProx": FedProx(**options(), proximal_mu=0.5),
        "FedMedian": FedMedian(**options()),
        "FedTrimmedAvg": FedTrimmedAvg(**options(), beta=0.2),
        "Krum": Krum(**options(), num_malicious_clients=1, num_clients_to_keep=0),
        "MultiKrum": Krum(**options(), num_malicious_clients=1, num_clients_to_keep=3),
        "FedAdam": FedAdam(**options(), eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-9),
        "SaveModelStrategy": SaveModelStrategy(**options()),
    }


def run(strategy: Any) -> dict[str, Any]:
    manager = SimpleClientManager()
    for pid in range(wl.NUM_CLIENTS):
        manager.register(InProcess(pid))
    server = Server(client_manager=manager, strategy=strategy)
    server.set_max_workers(1)  # one client at a time, in order: no thread decides the sums
    history, _ = server.fit(num_rounds=wl.ROUNDS, timeout=None)
    from flwr.common import parameters_to_ndarrays

    final = parameters_to_ndarrays(server.parameters)
    return {
        "weights": {k: v.tolist() for k, v in zip(NAMES, final, strict=True)},
        "losses_centralized": history.losses_centralized,
        "metrics_centralized": history.metrics_centralized,
        "losses_distributed": history.losses_distributed,
        "metrics_distributed": history.metrics_distributed,
        "metrics_distributed_fit": history.metrics_distributed_fit,
    }


def run_on_ray() -> dict[str, Any]:
    """FedAvg as a ``ServerApp(server_fn)`` and ``ClientApp(client_fn)`` on Flower's Ray engine.

    ``run_simulation`` returns no History: the central evaluation records each
    round's loss and the final weights, the aggregation functions the metrics.
    """
    from flwr.client import ClientApp
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.simulation import run_simulation

    seen: dict[str, Any] = {"losses_centralized": [], "weights": {}}
    fit_metrics: list[list[Any]] = []
    evaluate_metrics: list[list[Any]] = []

    def recording_central(rnd: int, parameters: list[np.ndarray], config: Any) -> Any:
        loss, metrics = central(rnd, parameters, config)
        seen["losses_centralized"].append([rnd, loss])
        seen["weights"] = {k: v.tolist() for k, v in zip(NAMES, parameters, strict=True)}
        return loss, metrics

    def recorder(into: list[list[Any]], key: str) -> Any:
        def aggregate(results: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
            out = wl.weighted_average(results)
            into.append([len(into) + 1, out[key]])
            return out

        return aggregate

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = FedAvg(
            **{
                **options(),
                "evaluate_fn": recording_central,
                "fit_metrics_aggregation_fn": recorder(fit_metrics, "train_loss"),
                "evaluate_metrics_aggregation_fn": recorder(evaluate_metrics, "accuracy"),
            }
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=wl.ROUNDS))

    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=wl.NUM_CLIENTS,
        backend_config={
            "init_args": {"num_cpus": 2, "include_dashboard": False},
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        },
    )
    seen["metrics_distributed_fit"] = {"train_loss": fit_metrics}
    seen["metrics_distributed"] = {"accuracy": evaluate_metrics}
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ray", action="store_true", help="also run FedAvg on the Ray engine")
    args = parser.parse_args()
    import logging

    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.WARNING)
    out: dict[str, Any] = {}
    for name, strategy in strategies().items():
        out[name] = run(strategy)
    out["SaveModelStrategy"]["saved"] = {
        str(r): {k: v.tolist() for k, v in zip(NAMES, arrays, strict=True)}
        for r, arrays in SaveModelStrategy.saved.items()
    }
    if args.ray:
        out["FedAvg on Ray"] = run_on_ray()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
