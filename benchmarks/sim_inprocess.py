"""covey's simulation overhead in wall time, both systems in one process, taken in turns.

``sim_overhead.py`` counts instructions; this script measures time, the
quantity the target is stated in, on the digits workload: ``covey.simulate``
(inline backend) and the plain NumPy loop of ``run_plain.py``, each ``--rounds``
rounds of ``--n`` clients, run in turns ``--repeats`` times in one process
(same heap, same imports, same data; a warm-up run of each first). Each
covey run's final weights are checked bit for bit against the plain loop's.

``--framework`` gives every client a fixed reply instead of training (both
systems): what is left is the framework's own work per client and round
(validation, records, re-ordering, folding) against the plain loop's fold.

``--minimal`` adds a third system: the same client objects called in a bare
loop that does only what covey must do for each reply (read-only weights, a
config per client, the ``FitResult`` checks, the layout and finiteness check,
the fold into a scratch buffer), in a handful of Python frames: how close to
the plain loop a framework doing that work can get.

Examples::

    .venv/bin/python benchmarks/sim_inprocess.py --n 1000 --rounds 5 --repeats 5
    .venv/bin/python benchmarks/sim_inprocess.py --n 1000 --rounds 10 --framework
    .venv/bin/python benchmarks/sim_inprocess.py --n 1000 --rounds 5 --repeats 7 --minimal
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads: no spinning BLAS thread
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _workload as wl
import numpy as np
import run_covey

import covey
from covey.core._weights import WeightsSpec

Weights = dict[str, np.ndarray]


class FixedClient(covey.Client):
    """Client ``k`` returns the same weights every round: no training, only the framework."""

    def __init__(self, k: int, replies: list[Weights]) -> None:
        self.k = k
        self.replies = replies

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        return covey.FitResult(weights=self.replies[self.k], num_examples=50)


def plain_loop(
    n: int, rounds: int, fit: Callable[[int, Weights, int], tuple[Weights, int]]
) -> Weights:
    """The plain loop: for each client in order, train, then ``acc += n_k * w_k``."""
    weights = wl.initial_weights()
    for rnd in range(1, rounds + 1):
        acc = {k: np.zeros_like(v) for k, v in weights.items()}
        total = 0
        for k in range(n):
            new, n_k = fit(k, weights, rnd)
            acc["W"] += n_k * new["W"]
            acc["b"] += n_k * new["b"]
            total += n_k
        weights = {k: v / total for k, v in acc.items()}
    return weights


def minimal_loop(clients: list[Any], rounds: int) -> Weights:
    """The bare loop of ``--minimal``: covey's per-reply duties and nothing else, in order."""
    weights = wl.initial_weights()
    spec = WeightsSpec.of(weights)
    multiply, add = np.multiply, np.add
    for rnd in range(1, rounds + 1):
        for value in weights.values():
            value.flags.writeable = False  # clients get read-only arrays, as covey lends them
        acc = {k: np.zeros_like(v) for k, v in weights.items()}
        scratch = {k: np.empty_like(v) for k, v in weights.items()}
        total = 0
        for client in clients:
            result = client.fit(weights, {"round": rnd})
            if not isinstance(result, covey.FitResult) or result.weights is None:
                raise TypeError("fit must return a FitResult with weights")
            if spec.conformity(result.weights) is None:
                raise ValueError("a reply of another layout, or not finite")
            n_k = result.num_examples
            for name, x in result.weights.items():
                buf = scratch[name]
                multiply(x, float(n_k), buf)
                add(acc[name], buf, acc[name])
            total += n_k
        weights = {k: v / total for k, v in acc.items()}
    return weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--framework", action="store_true", help="fixed replies, no training")
    p.add_argument("--minimal", action="store_true", help="also time the bare validated loop")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    wl.load_data()
    n, rounds = args.n, args.rounds
    if args.framework:
        base = wl.initial_weights()
        replies = [{k: v + 1e-3 * i for k, v in base.items()} for i in range(n)]
        client_fn: Any = functools.partial(FixedClient, replies=replies)

        def fit(k: int, weights: Weights, rnd: int) -> tuple[Weights, int]:
            return replies[k], 50
    else:
        parts = [wl.client_data(k, n) for k in range(n)]
        client_fn = functools.partial(run_covey.DigitsClient, n_clients=n)

        def fit(k: int, weights: Weights, rnd: int) -> tuple[Weights, int]:
            x, y = parts[k]
            w, b = wl.local_train(weights["W"], weights["b"], x, y, k, rnd)
            return {"W": w, "b": b}, x.shape[0]

    def run_covey_once() -> Weights:
        result = covey.simulate(
            client_fn=client_fn,
            num_clients=n,
            rounds=rounds,
            strategy=covey.FedAvg(fraction_fit=1.0, min_fit_clients=n, fraction_evaluate=0.0),
            initial_weights=wl.initial_weights(),
            backend="inline",
            seed=0,
        )
        return dict(result.weights)

    clients = [client_fn(k) for k in range(n)]
    systems = {"covey": run_covey_once}
    if args.minimal:
        systems["minimal"] = lambda: minimal_loop(clients, rounds)
    times = measure(lambda: plain_loop(n, rounds, fit), systems, args.repeats)
    report(times, 1e6 / (n * rounds))


def _timed(f: Callable[[], Weights]) -> tuple[float, Weights]:
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def measure(
    plain: Callable[[], Weights], systems: dict[str, Callable[[], Weights]], repeats: int
) -> dict[str, list[float]]:
    """Seconds of ``repeats`` runs of the plain loop and of each system, taken in turns.

    A first turn warms up and is not counted; every system's weights are checked
    bit for bit against the plain loop's in every turn.
    """
    times: dict[str, list[float]] = {"plain": [], **{name: [] for name in systems}}
    for i in range(repeats + 1):
        t_plain, expected = _timed(plain)
        turn = {"plain": t_plain}
        for system, run in systems.items():
            turn[system], weights = _timed(run)
            for name, value in expected.items():
                if not np.array_equal(value, weights[name]):
                    raise SystemExit(f"{system}'s {name} differs from the plain loop's")
        if i:
            for system, t in turn.items():
                times[system].append(t)
    return times


def report(times: dict[str, list[float]], per: float) -> None:
    """Print each system's microseconds per client and round, and its ratio to the plain loop."""
    for name, ts in times.items():
        shown = ", ".join(f"{t * per:.1f}" for t in ts)
        print(f"{name:7} us per client-round: {shown} (median {statistics.median(ts) * per:.1f})")
    mid_p = statistics.median(times["plain"])
    for name, ts in times.items():
        if name == "plain":
            continue
        ratios = [c / p for c, p in zip(ts, times["plain"], strict=True)]
        print(
            f"{name}/plain: median of run pairs {statistics.median(ratios):.3f}, "
            f"of medians {statistics.median(ts) / mid_p:.3f}, "
            f"of minima {min(ts) / min(times['plain']):.3f}; "
            f"{name} - plain {(statistics.median(ts) - mid_p) * per:.1f} us"
        )


if __name__ == "__main__":
    main()
