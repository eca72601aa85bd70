"""Flower's canonical patterns and their covey ports, run side by side: same numbers?

Runs the Flower half (``_parity_flower.py``) in Flower's venv and the same
scenarios through ``covey.simulate`` here, on the workload of
``_parity_workload.py`` (5 clients of unequal size, 3 rounds, every client in
every round), and prints a Markdown table of the largest differences: final
weights, central loss (rounds 0-3), federated loss, and the aggregated fit and
evaluate metrics. ``docs/migrating-from-flower.md`` reports the table.

Usage (``--ray`` adds FedAvg run by Flower's ``run_simulation`` on Ray, ~30 s)::

    python benchmarks/flower_parity.py --flower-python .venv-flower/bin/python [--ray]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _parity_workload as wl

import covey
from covey import clients
from covey.aggregate import reducer

HERE = Path(__file__).resolve().parent


class DigitsClient(covey.Client):
    """The port of ``_parity_flower.DigitsClient``: named weights, results as records."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def properties(self) -> dict[str, Any]:
        return {"partition": self.pid}

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        mu = clients.proximal_mu(config)
        w, b, loss = wl.train(
            weights["W"], weights["b"], self.pid, config["round"], config["lr"], mu
        )
        n = len(wl.partition(self.pid)[1])
        return covey.FitResult(
            weights={"W": w, "b": b}, num_examples=n, metrics={"train_loss": loss}
        )

    def evaluate(self, weights: Any, config: dict[str, Any]) -> covey.EvaluateResult:
        x, y = wl.partition(self.pid)
        loss, acc = wl.loss_accuracy(weights["W"], weights["b"], x, y)
        return covey.EvaluateResult(loss=loss, num_examples=len(y), metrics={"accuracy": acc})


def options() -> dict[str, Any]:
    n = wl.NUM_CLIENTS
    return {
        "fraction_fit": 1.0,
        "fraction_evaluate": 1.0,
        "min_fit_clients": n,
        "min_evaluate_clients": n,
        "min_available_clients": n,
        "on_fit_config": lambda rnd: {"lr": wl.learning_rate(rnd)},
        "on_evaluate_config": lambda rnd: {},
        "fit_metrics": wl.weighted_average,
        "evaluate_metrics": wl.weighted_average,
    }


class HalvedRate(covey.Strategy):
    """The port of ``SaveModelStrategy.configure_fit``: one more change to each round's config."""

    def fit_config(self, round: int) -> dict[str, Any]:
        config = super().fit_config(round)
        return {**config, "lr": config["lr"] / 2}


def aggregate_fit(params: Any, contributions: Any) -> dict[str, np.ndarray]:
    """FedAvg's ``aggregate_fit``, written as one function for ``reducer``."""
    total = sum(c.num_examples for c in contributions)
    return {
        name: sum(c.num_examples * c.as_weights(params)[name] for c in contributions) / total
        for name in params
    }


def strategies() -> dict[str, covey.Strategy]:
    return {
        "FedAvg": covey.FedAvg(**options()),
        "FedAvgM": covey.FedAvgM(server_lr=1.0, server_momentum=0.9, **options()),
        "FedProx": covey.FedProx(proximal_mu=0.5, **options()),
        "FedMedian": covey.FedMedian(**options()),
        "FedTrimmedAvg": covey.FedTrimmedAvg(beta=0.2, **options()),
        "Krum": covey.Krum(f=1, **options()),
        "MultiKrum": covey.MultiKrum(f=1, m=3, weighted=True, **options()),
        "FedAdam": covey.FedAdam(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-9, **options()),
        "SaveModelStrategy": HalvedRate(**options()),
        "FedAvg by reducer(aggregate_fit)": covey.Strategy(
            aggregator=reducer(aggregate_fit), **options()
        ),
    }


def run_covey(strategy: covey.Strategy) -> dict[str, Any]:
    saved: dict[int, dict[str, np.ndarray]] = {}

    def evaluate_fn(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        saved[rnd] = {k: np.array(v) for k, v in weights.items()}  # the model of every round
        _, _, x, y = wl.data()
        loss, acc = wl.loss_accuracy(weights["W"], weights["b"], x, y)
        return loss, {"accuracy": acc}

    result = covey.simulate(
        DigitsClient, wl.NUM_CLIENTS, wl.ROUNDS, strategy, wl.initial(), evaluate_fn
    )
    out: dict[str, Any] = {"weights": result.weights, "history": result.history, "saved": saved}
    return out


def _series(pairs: list[list[Any]]) -> dict[int, float]:
    return {int(r): float(v) for r, v in pairs}


def compare(flower: dict[str, Any], ours: dict[str, Any]) -> dict[str, float]:
    """The largest absolute difference of each quantity between the two runs."""
    rounds = ours["history"].rounds
    diffs = {
        "weights": max(
            float(np.max(np.abs(np.asarray(flower["weights"][k]) - ours["weights"][k])))
            for k in ("W", "b")
        )
    }
    central = _series(flower["losses_centralized"])
    diffs["central loss"] = max(abs(central[r.round] - r.central_loss) for r in rounds)
    if "losses_distributed" in flower:  # run_simulation (Ray) returns no History
        fed = _series(flower["losses_distributed"])
        diffs["federated loss"] = max(abs(fed[r.round] - r.evaluate_loss) for r in rounds[1:])
    fit = _series(flower["metrics_distributed_fit"]["train_loss"])
    diffs["fit metric"] = max(abs(fit[r.round] - r.fit_metrics["train_loss"]) for r in rounds[1:])
    acc = _series(flower["metrics_distributed"]["accuracy"])
    diffs["evaluate metric"] = max(
        abs(acc[r.round] - r.evaluate_metrics["accuracy"]) for r in rounds[1:]
    )
    if "saved" in flower:
        diffs["saved models"] = max(
            float(np.max(np.abs(np.asarray(arrays[k]) - ours["saved"][int(r)][k])))
            for r, arrays in flower["saved"].items()
            for k in ("W", "b")
        )
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flower-python", default=".venv-flower/bin/python")
    parser.add_argument("--ray", action="store_true", help="also FedAvg on Flower's Ray engine")
    args = parser.parse_args()
    if not Path(args.flower_python).is_file():
        parser.error(
            f"--flower-python {args.flower_python}: no such file; `make bench-flower` "
            "creates .venv-flower with flwr[simulation]==1.42.0"
        )
    done = subprocess.run(
        [args.flower_python, str(HERE / "_parity_flower.py"), *(["--ray"] if args.ray else [])],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        sys.exit(
            f"the Flower half failed ({args.flower_python} exited with {done.returncode}):\n{tail}"
        )
    flower = json.loads(done.stdout)
    columns = ["weights", "central loss", "federated loss", "fit metric", "evaluate metric"]
    print("| scenario | " + " | ".join(f"max abs diff: {c}" for c in columns) + " |")
    print("|" + " --- |" * (len(columns) + 1))
    runs = [(name, name.split(" ")[0], strategy) for name, strategy in strategies().items()]
    if args.ray:
        runs.append(("FedAvg on Ray", "FedAvg on Ray", covey.FedAvg(**options())))
    for name, key, strategy in runs:
        diffs = compare(flower[key], run_covey(strategy))
        cells = [f"{diffs[c]:.1e}" if c in diffs else "n/a" for c in columns]
        extra = f" (saved models: {diffs['saved models']:.1e})" if "saved models" in diffs else ""
        print(f"| {name}{extra} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
