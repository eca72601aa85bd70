"""Per-array cost: a model of many small arrays against one array of the same size.

A ResNet's ``state_dict`` has 100-300 tensors, a transformer's 200 and more;
whatever covey does once per array is paid that many times per reply. This
script runs ``covey.simulate`` with FedAvg over ``--clients`` NumPy clients
(each returns the global weights plus a constant: next to no training) on two
models of ``--values`` float32 values: ``--arrays`` arrays and one array. It
reports the CPU time per client and round (this process's and its finished
children's, so the process backend's workers count; the best of ``--repeats``
runs of ``--rounds`` rounds, after one warm-up run: CPU time, unlike wall
time, hardly moves with a busy machine's other load), and the difference per array,
``(many - one) / (arrays - 1)``, for each case: plain FedAvg on the inline and
process backends, q8 and top-k compression, and secure aggregation.

Example::

    .venv/bin/python benchmarks/many_arrays.py
    .venv/bin/python benchmarks/many_arrays.py --cases inline process --arrays 300
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

import covey

CASES = ("inline", "process", "q8", "topk", "secagg")


class Shift(covey.Client):
    """Returns the weights it gets plus ``0.01 * (cid + 1)``: the round's cost is covey's."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        step = np.float32(0.01 * (self.cid + 1))
        return covey.FitResult(weights={k: v + step for k, v in weights.items()}, num_examples=10)

    def evaluate(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        return covey.EvaluateResult(loss=0.0, num_examples=1)


def model(arrays: int, values: int) -> dict[str, np.ndarray]:
    """``arrays`` float32 arrays of ``values // arrays`` values each."""
    rng = np.random.default_rng(0)
    size = values // arrays
    return {f"layer{i:03d}.weight": rng.standard_normal(size, np.float32) for i in range(arrays)}


def _options(case: str, clients: int) -> dict[str, Any]:
    fedavg = covey.FedAvg(fraction_fit=1.0, min_fit_clients=clients, fraction_evaluate=0.0)
    if case == "secagg":
        from covey.secagg import secure

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unsigned keys: the warning is not measured
            return {"strategy": secure(fedavg, clip_range=1.0, bits=16)}
    options: dict[str, Any] = {"strategy": fedavg}
    if case == "process":
        options["backend"] = "process"
        options["num_workers"] = 2
    elif case in ("q8", "topk"):
        options["compression"] = {"q8": "q8", "topk": "topk:0.1"}[case]
    return options


def cpu_seconds() -> float:
    """CPU seconds (user and system) of this process and of its children waited for."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def per_client_round(case: str, weights: Callable[[], dict[str, np.ndarray]], args: Any) -> float:
    """Best CPU seconds per client and round of ``--repeats`` runs (after a warm-up run)."""
    best = float("inf")
    for run in range(args.repeats + 1):
        options = _options(case, args.clients)
        rounds = 1 if run == 0 else args.rounds
        start = cpu_seconds()
        covey.simulate(Shift, args.clients, rounds, initial_weights=weights(), seed=0, **options)
        took = (cpu_seconds() - start) / (args.clients * rounds)
        if run:
            best = min(best, took)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arrays", type=int, default=300)
    parser.add_argument("--values", type=int, default=300_000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    args = parser.parse_args()
    print(
        f"| case | 1 x {args.values} (ms) | {args.arrays} x {args.values // args.arrays} (ms) "
        "| ratio | per array (us) |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for case in args.cases:
        one = per_client_round(case, lambda: model(1, args.values), args)
        many = per_client_round(case, lambda: model(args.arrays, args.values), args)
        per_array = (many - one) / (args.arrays - 1) * 1e6
        print(
            f"| {case} | {one * 1e3:.2f} | {many * 1e3:.2f} | {many / one:.1f} | {per_array:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
