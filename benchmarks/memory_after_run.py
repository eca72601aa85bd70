"""What a finished simulation leaves in memory: a sweep of runs of a 40 MB model.

Runs ``covey.simulate`` ``--runs`` times in one process (10,000,000 float32, 6
clients, 2 rounds, FedAvg) and reports, after each run returns, this process's
anonymous memory (``/proc/self/smaps_rollup``, MB) as it is and after a full
``gc.collect()``, with the last run's result still held (as a loop of a sweep
holds it until the next run returns). A run that left its round loop in a
reference cycle keeps the loop's last model and the mean's sums until the
collector's next full pass: the two columns then differ by about two models.

Example::

    .venv/bin/python benchmarks/memory_after_run.py --backend inline process --runs 3
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import numpy as np

import covey

SIZE = 10_000_000


class Fresh(covey.Client):
    """Returns the global model plus seeded noise, in one new array."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        out = np.random.default_rng(self.cid + int(config["round"])).standard_normal(
            SIZE, dtype=np.float32
        )
        out *= 1e-3
        out += weights["w"]
        return covey.FitResult(weights={"w": out}, num_examples=1)


def anonymous_mb() -> float:
    """This process's anonymous memory in MB (Linux)."""
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", nargs="+", default=["inline", "process"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"model {SIZE * 4 / 2**20:.1f} MB; start-up {anonymous_mb():.0f} MB anonymous")
    print("| backend | run | MB after it returns | MB after gc.collect() |")
    print("|---|---:|---:|---:|")
    for backend in args.backend:
        extra = {"num_workers": 2} if backend == "process" else {}
        result = None
        for run in range(1, args.runs + 1):
            result = covey.simulate(
                Fresh,
                6,
                2,
                covey.FedAvg(fraction_evaluate=0.0),
                {"w": np.zeros(SIZE, np.float32)},
                backend=backend,
                **extra,
            )
            returned = anonymous_mb()
            gc.collect()
            print(f"| {backend} | {run} | {returned:.0f} | {anonymous_mb():.0f} |")
        del result
        gc.collect()


if __name__ == "__main__":
    main()
