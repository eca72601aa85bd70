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

Examples::

    .venv/bin/python benchmarks/sim_inprocess.py --n 1000 --rounds 5 --repeats 5
    .venv/bin/python benchmarks/sim_inprocess.py --n 1000 --rounds 10 --framework
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--framework", action="store_true", help="fixed replies, no training")
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

    def timed(f: Callable[[], Weights]) -> tuple[float, Weights]:
        t0 = time.perf_counter()
        out = f()
        return time.perf_counter() - t0, out

    times: dict[str, list[float]] = {"covey": [], "plain": []}
    for i in range(args.repeats + 1):  # the first pair warms up and is not counted
        t_plain, expected = timed(lambda: plain_loop(n, rounds, fit))
        t_covey, got = timed(run_covey_once)
        for name, value in expected.items():
            if not np.array_equal(value, got[name]):
                raise SystemExit(f"covey's {name} differs from the plain loop's")
        if i:
            times["plain"].append(t_plain)
            times["covey"].append(t_covey)
    per = 1e6 / (n * rounds)
    for name, ts in times.items():
        shown = ", ".join(f"{t * per:.1f}" for t in ts)
        print(f"{name:6} us per client-round: {shown} (median {statistics.median(ts) * per:.1f})")
    ratios = [c / p for c, p in zip(times["covey"], times["plain"], strict=True)]
    mid_c, mid_p = statistics.median(times["covey"]), statistics.median(times["plain"])
    print(
        f"covey/plain: median of run pairs {statistics.median(ratios):.3f}, "
        f"of medians {mid_c / mid_p:.3f}, "
        f"of minima {min(times['covey']) / min(times['plain']):.3f}; "
        f"covey - plain {(mid_c - mid_p) * per:.1f} us"
    )


if __name__ == "__main__":
    main()
