"""covey side of the deployed benchmark: the app ``covey server`` / ``covey client`` load.

``covey server --app _deploy_covey_app:server_app`` and ``covey client --app
_deploy_covey_app:client_fn --cid K`` (with ``benchmarks/`` on ``PYTHONPATH``).
Settings come from environment variables set by ``deploy_vs_flower.py``:

* ``COVEY_BENCH_WORKLOAD``: ``digits`` (``_workload.py``) or ``big`` (``_deploy_model.py``);
* ``COVEY_BENCH_N``: number of clients (every one trains every round);
* ``COVEY_BENCH_ROUNDS``: rounds;
* ``COVEY_BENCH_ELEMENTS``: float32 entries of the big model;
* ``COVEY_BENCH_INPLACE``: ``1`` for the big model's client that trains in place;
* ``COVEY_BENCH_TIMES``: where the server writes a JSON list with the wall-clock
  time of each central evaluation (round 0 and after every round), rewritten
  after each one so that a run cut short still reports its finished rounds.

``python benchmarks/_deploy_covey_app.py simulate`` runs the same clients,
strategy and evaluation through ``covey.simulate`` (inline backend) in one
process, for the deployment-overhead comparison; it adds the history's
per-round durations to the JSON file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _deploy_model as dm
import _workload as wl
import numpy as np

import covey
from covey.deploy import ServerApp


def _setting(name: str, default: str) -> str:
    return os.environ.get(f"COVEY_BENCH_{name}", default)


WORKLOAD = _setting("WORKLOAD", "digits")
N = int(_setting("N", "10"))
ROUNDS = int(_setting("ROUNDS", "10"))
ELEMENTS = int(_setting("ELEMENTS", str(dm.elements_for_mb(400))))
TIMES = _setting("TIMES", "")
INPLACE = _setting("INPLACE", "") == "1"


class DigitsClient(covey.Client):
    """Client ``k`` of ``N`` on the digits workload (one local epoch of SGD)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.x, self.y = wl.client_data(k, N)

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        rnd = int(config["round"])
        w_k, b_k = wl.local_train(weights["W"], weights["b"], self.x, self.y, self.k, rnd)
        return covey.FitResult(weights={"W": w_k, "b": b_k}, num_examples=self.x.shape[0])


class BigClient(covey.Client):
    """A client of the big model: returns ``w + 1``."""

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        return covey.FitResult(weights={dm.KEY: dm.client_update(weights[dm.KEY])}, num_examples=1)


class InPlaceBigClient(covey.Client):
    """The big model's client training in place: adds 1 to the arrays it received."""

    writes_weights = True

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        w = weights[dm.KEY]
        np.add(w, np.float32(1.0), out=w)
        return covey.FitResult(weights={dm.KEY: w}, num_examples=1)


def client_fn(cid: int) -> covey.Client:
    if WORKLOAD == "digits":
        return DigitsClient(int(cid))
    return InPlaceBigClient() if INPLACE else BigClient()


class Recorder:
    """The server's central evaluation: time-stamps every call and writes them to TIMES."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __call__(self, rnd: int, weights: Mapping[str, np.ndarray]) -> tuple[float, dict[str, Any]]:
        if WORKLOAD == "digits":
            loss, acc = wl.evaluate(np.asarray(weights["W"]), np.asarray(weights["b"]))
            metrics: dict[str, Any] = {"accuracy": acc}
        else:
            loss, metrics = 0.0, {"max_error": dm.check(weights[dm.KEY], rnd)}
        self.records.append({"round": rnd, "t": time.time(), "loss": loss, **metrics})
        self.write()
        return loss, metrics

    def write(self, extra: Mapping[str, Any] | None = None) -> None:
        if not TIMES:
            return
        path = Path(TIMES)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"evaluations": self.records, **(extra or {})}))
        tmp.replace(path)


def initial() -> dict[str, np.ndarray]:
    if WORKLOAD == "digits":
        return wl.initial_weights()
    return {dm.KEY: dm.initial(ELEMENTS)}


def strategy() -> covey.Strategy:
    return covey.FedAvg(
        fraction_fit=1.0, min_fit_clients=N, min_available_clients=N, fraction_evaluate=0.0
    )


def server_app() -> ServerApp:
    if WORKLOAD == "digits":
        wl.load_data()
    return ServerApp(
        strategy=strategy(), initial_weights=initial, rounds=ROUNDS, evaluate_fn=Recorder()
    )


def simulate() -> None:
    """The same federation through ``covey.simulate`` (inline), in this one process."""
    if WORKLOAD == "digits":
        wl.load_data()
    recorder = Recorder()
    t0 = time.time()
    result = covey.simulate(
        client_fn=client_fn,
        num_clients=N,
        rounds=ROUNDS,
        strategy=strategy(),
        initial_weights=initial(),
        evaluate_fn=recorder,
        backend="inline",
        seed=0,
    )
    t1 = time.time()
    recorder.write(
        {
            "simulate_seconds": t1 - t0,
            "durations": [r.durations for r in result.history.rounds if r.round > 0],
        }
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["simulate"]:
        raise SystemExit("usage: _deploy_covey_app.py simulate")
    simulate()
