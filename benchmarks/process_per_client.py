"""The process backend's cost per client and round, with many cheap clients (digits).

Runs ``covey.simulate`` on the digits workload (``run_covey.py``'s client,
FedAvg over all ``--n`` clients) and reports, per client and round over rounds
2 to ``--rounds`` (round 1 builds the clients: it is left out), the wall time,
the CPU time of this process and the CPU time of the worker processes (user
and system, read from ``/proc`` at each round's end, 10 ms ticks), and a hash
of the final weights (equal across backends and trees when the bits are).

Example::

    .venv/bin/python benchmarks/process_per_client.py --n 1000 --rounds 6
    .venv/bin/python benchmarks/process_per_client.py --n 1000 --rounds 6 --backend inline
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _workload as wl
from run_covey import DigitsClient

import covey

TICK = os.sysconf("SC_CLK_TCK")


def workers_cpu() -> tuple[float, float]:
    """User and system CPU seconds of this process's children (the workers) so far."""
    user = system = 0
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(path) as f:
            pids = f.read().split()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            user += int(fields[11])
            system += int(fields[12])
    return user / TICK, system / TICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="clients, all sampled each round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (at least 2)")
    parser.add_argument("--backend", default="process", choices=["process", "inline"])
    args = parser.parse_args()
    marks: list[tuple[int, float, float, tuple[float, float]]] = []

    def evaluate_fn(rnd: int, weights: Mapping[str, np.ndarray]) -> None:
        marks.append((rnd, time.perf_counter(), time.process_time(), workers_cpu()))

    result = covey.simulate(
        client_fn=functools.partial(DigitsClient, n_clients=args.n),
        num_clients=args.n,
        rounds=args.rounds,
        strategy=covey.FedAvg(fraction_fit=1.0, min_fit_clients=args.n, fraction_evaluate=0.0),
        initial_weights=wl.initial_weights(),
        evaluate_fn=evaluate_fn,
        backend=args.backend,
        seed=0,
    )
    weights = result.weights
    digest = hashlib.sha256(b"".join(weights[k].tobytes() for k in sorted(weights)))
    first = next(m for m in marks if m[0] == 1)
    last = marks[-1]
    per = 1e6 / ((last[0] - first[0]) * args.n)
    print(
        f"{args.backend} n={args.n} rounds {first[0] + 1}-{last[0]}, per client and round: "
        f"wall {(last[1] - first[1]) * per:.0f} us, "
        f"this process CPU {(last[2] - first[2]) * per:.0f} us, "
        f"workers CPU {(last[3][0] - first[3][0]) * per:.0f} us user + "
        f"{(last[3][1] - first[3][1]) * per:.0f} us system; "
        f"weights {digest.hexdigest()[:16]}"
    )


if __name__ == "__main__":
    main()
