"""A small deterministic federation for the kill-and-resume matrix.

Settings come from environment variables, so one module serves every case:

- ``COVEY_RM_STRATEGY``: which strategy (see :data:`STRATEGIES`).
- ``COVEY_RM_CLIENTS``, ``COVEY_RM_ROUNDS``: the federation's size and length.
- ``COVEY_RM_FIT_DELAY`` / ``COVEY_RM_EVAL_DELAY``: seconds a client's fit and the
  server's central evaluation linger, so that a kill can land inside them.
- ``COVEY_RM_MARKERS``: a folder where clients and the server drop marker files
  (``fit-r3-k1``, ``central-r3``) as they start each step.

Every client k holds a linear-regression share drawn from ``default_rng(k)`` and
trains with a few full-batch gradient steps, so a run's bits depend only on
the strategy, the seeds and the order replies are folded in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import covey
from covey import clients
from covey.deploy import ServerApp

DIM = 6
LR = 0.05
STEPS = 3


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def num_clients() -> int:
    """The federation's size."""
    return int(_env("COVEY_RM_CLIENTS", "4"))


def _mark(name: str) -> None:
    folder = os.environ.get("COVEY_RM_MARKERS")
    if folder:
        Path(folder, name).touch()


def _data(k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + k)
    x = rng.normal(size=(12 + k, DIM))
    w_true = np.linspace(-1.0, 1.0, DIM) + 0.3 * k
    return x, x @ w_true + 0.5 + rng.normal(scale=0.1, size=len(x))


def _loss(weights: covey.Weights, x: np.ndarray, y: np.ndarray) -> float:
    err = x @ np.asarray(weights["w"]) + float(np.asarray(weights["b"])[0]) - y
    return float(np.mean(err**2))


def _grad(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    err = x @ w + b[0] - y
    return {"w": 2.0 * x.T @ err / len(y), "b": np.array([2.0 * err.mean()])}


class RegressionClient(covey.Client):
    """Client k: a few gradient steps on its own share; SCAFFOLD and FedProx aware."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.x, self.y = _data(k)
        self.control = clients.ControlVariate()

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        rnd = int(config["round"])
        _mark(f"fit-r{rnd}-k{self.k}")
        time.sleep(float(_env("COVEY_RM_FIT_DELAY", "0")))
        scaffold = _env("COVEY_RM_STRATEGY", "") == "scaffold"
        correction = self.control.correction(weights, config) if scaffold else None
        mu = float(config.get("proximal_mu", 0.0))
        start = {k: np.array(v) for k, v in weights.items()}
        w, b = np.array(weights["w"]), np.array(weights["b"])
        for _ in range(STEPS):
            g = _grad(w, b, self.x, self.y)
            for name, param in (("w", w), ("b", b)):
                step = g[name] + mu * (param - start[name])
                if correction is not None:
                    step = step + correction[name]
                param -= LR * step
        metrics: dict[str, Any] = {"loss": _loss(weights, self.x, self.y)}
        trained = {"w": w, "b": b}
        if "pad" in weights:  # carried along, moved a little so every checkpoint differs
            trained["pad"] = np.asarray(weights["pad"]) + 1e-3 * (self.k + 1)
        if correction is not None:
            return self.control.fit_result(
                trained, num_examples=len(self.y), steps=STEPS, lr=LR, metrics=metrics
            )
        return covey.FitResult(weights=trained, num_examples=len(self.y), metrics=metrics)

    def evaluate(self, weights: covey.Weights, config: dict[str, Any]) -> covey.EvaluateResult:
        loss = _loss(weights, self.x, self.y)
        return covey.EvaluateResult(loss=loss, num_examples=len(self.y), metrics={"mse": loss})


def client_fn(cid: int) -> RegressionClient:
    return RegressionClient(cid)


def initial() -> dict[str, Any]:
    """The step-0 model; ``COVEY_RM_PAD`` floats more make its checkpoints slow to write."""
    pad = int(_env("COVEY_RM_PAD", "0"))
    return {"w": np.zeros(DIM), "b": np.zeros(1)} | ({"pad": np.zeros(pad)} if pad else {})


_X_TEST, _Y_TEST = _data(99)


def evaluate_fn(rnd: int, weights: covey.Weights) -> tuple[float, dict[str, Any]]:
    """The central loss on a held-out share (lingering ``COVEY_RM_EVAL_DELAY`` s after round 0)."""
    _mark(f"central-r{rnd}")
    if rnd > 0:
        time.sleep(float(_env("COVEY_RM_EVAL_DELAY", "0")))
    loss = _loss(weights, _X_TEST, _Y_TEST)
    return loss, {"mse": loss}


def _options(n: int) -> dict[str, Any]:
    return {
        "fraction_fit": 1.0,
        "min_fit_clients": n,
        "min_available_clients": n,
        "fraction_evaluate": 0.0,
        "min_evaluate_clients": 0,
    }


def strategy(name: str | None = None) -> covey.Strategy:
    """The strategy ``name`` (default: ``COVEY_RM_STRATEGY``) over the federation."""
    name = name or _env("COVEY_RM_STRATEGY", "fedavg")
    n = num_clients()
    opts = _options(n)
    if name == "sampled":
        opts.update(fraction_fit=0.5, min_fit_clients=2)
    if name == "fedeval":
        opts.update(fraction_evaluate=0.5, min_evaluate_clients=2)
    builders: dict[str, Any] = {
        "fedavg": lambda: covey.FedAvg(**opts),
        "sampled": lambda: covey.FedAvg(**opts),
        "fedeval": lambda: covey.FedAvg(**opts),
        "q8": lambda: covey.FedAvg(**opts),
        "topk": lambda: covey.FedAvg(**opts),
        "fedprox": lambda: covey.FedProx(proximal_mu=0.1, **opts),
        "fedadam": lambda: covey.FedAdam(eta=0.05, **opts),
        "fedyogi": lambda: covey.FedYogi(eta=0.05, **opts),
        "fedadagrad": lambda: covey.FedAdagrad(eta=0.05, **opts),
        "scaffold": lambda: covey.Scaffold(num_clients=n, **opts),
        "qfedavg": lambda: covey.QFedAvg(q=0.5, client_lr=LR, **opts),
        "trimmed": lambda: covey.FedTrimmedAvg(beta=0.25, **opts),
        "krum": lambda: covey.Krum(f=1, **opts),
        "dp": lambda: covey.privacy.central(
            covey.FedAvg(**{**opts, "fraction_fit": 0.75, "min_fit_clients": 1}),
            noise_multiplier=0.5,
            clip=1.0,
            delta=1e-3,
            noise_seed=7,
        ),
        "dpadam": lambda: covey.privacy.central(
            covey.FedAdam(eta=0.05, **{**opts, "fraction_fit": 0.75, "min_fit_clients": 1}),
            noise_multiplier=0.5,
            clip=1.0,
            delta=1e-3,
            noise_seed=7,
        ),
        "fedbuff": lambda: covey.FedBuff(buffer_size=2, concurrency=2, **_buff(opts)),
        # Every client in each buffer, none stale: the same updates as FedAvg's rounds.
        "fedbuff-full": lambda: covey.FedBuff(buffer_size=n, concurrency=n, **_buff(opts)),
    }
    strategy: covey.Strategy = builders[name]()
    return strategy


def _buff(opts: dict[str, Any]) -> dict[str, Any]:
    out = dict(opts)
    out.pop("fraction_fit")
    out.pop("min_fit_clients")
    return out


def compression(name: str | None = None) -> str | None:
    """The compression of case ``name``."""
    name = name or _env("COVEY_RM_STRATEGY", "fedavg")
    return {"q8": "q8", "topk": "topk:0.3"}.get(name)


def server_app() -> ServerApp:
    return ServerApp(
        strategy=strategy(),
        initial_weights=initial,
        rounds=int(_env("COVEY_RM_ROUNDS", "5")),
        evaluate_fn=evaluate_fn,
        seed=3,
        compression=compression(),
    )
