"""Update compression on the digits workload: final accuracy and bytes per round per scheme.

Runs the benchmark's digits workload (``_workload.py``: logistic regression,
FedAvg, every client every round) through ``covey.simulate`` once per
compression scheme and prints a markdown table: test accuracy after the last
round, its difference from the uncompressed run, and the array bytes the
server sent and received per round (from ``History``).

Example::

    .venv/bin/python benchmarks/compress_digits.py --n 10 --rounds 10
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _workload as wl
import numpy as np
from run_covey import DigitsClient

import covey
from covey.compress import TopK

SCHEMES: list[tuple[str, Any]] = [
    ("uncompressed", None),
    ("none (counted)", "none"),
    ("float16", "float16"),
    ("bfloat16", "bfloat16"),
    ("8-bit stochastic", "q8"),
    ("4-bit stochastic", "q4"),
    ("top-k 10% + error feedback", TopK(0.1)),
    ("top-k 1% + error feedback", TopK(0.01)),
]


def run(n: int, rounds: int, compression: Any) -> tuple[float, int, int, float]:
    """``(accuracy, bytes sent per round, bytes received per round, seconds)``."""

    def evaluate(rnd: int, w: Mapping[str, np.ndarray]) -> tuple[float, dict[str, float]]:
        loss, acc = wl.evaluate(w["W"], w["b"])
        return loss, {"accuracy": acc}

    t0 = time.perf_counter()
    result = covey.simulate(
        functools.partial(DigitsClient, n_clients=n),
        n,
        rounds,
        covey.FedAvg(fraction_fit=1.0, min_fit_clients=n, fraction_evaluate=0.0),
        wl.initial_weights(),
        evaluate,
        seed=0,
        compression=compression,
    )
    seconds = time.perf_counter() - t0
    last = result.history.rounds[-1]
    sent = [r.bytes_sent or 0 for r in result.history.rounds[1:]]
    received = [r.bytes_received or 0 for r in result.history.rounds[1:]]
    accuracy = float(last.central_metrics["accuracy"])
    return accuracy, sum(sent) // len(sent), sum(received) // len(received), seconds


def main() -> None:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, nargs="+", default=[10, 100])
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    wl.load_data()
    for n in args.n:
        print(f"\nN = {n}, R = {args.rounds}\n")
        print(
            "| scheme | final acc | vs uncompressed | sent B/round | received B/round "
            "| received / raw | simulate s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        base_acc = raw = None
        for label, scheme in SCHEMES:
            acc, sent, received, seconds = run(n, args.rounds, scheme)
            base_acc = acc if base_acc is None else base_acc
            if scheme == "none":
                raw = received
            ratio = f"{received / raw:.3f}" if raw and scheme is not None else "-"
            shown = (f"{sent:,}", f"{received:,}") if scheme is not None else ("-", "-")
            print(
                f"| {label} | {acc:.4f} | {acc - base_acc:+.4f} | {shown[0]} | {shown[1]} "
                f"| {ratio} | {seconds:.2f} |"
            )


if __name__ == "__main__":
    main()
