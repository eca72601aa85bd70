"""Memory of the Ray backend's actors with a large model: clients per actor call.

Runs ``simulate(backend="ray")`` on a local Ray (2 CPUs, 4 actors of 0.5 CPU)
with a model of ``--mb`` MB, every client training in each round, and samples
the unique memory (USS) of every Ray actor and the simulating process's RSS.
``--chunk-bytes`` sets the most bytes of model an actor call carries
(``covey.sim._ray.CHUNK_BYTES``; 0: no bound, 16 clients a call as before it
existed), so both behaviours are measured by the same script.

Usage:
    python benchmarks/ray_big_model.py --mb 100 --clients 32
    python benchmarks/ray_big_model.py --mb 100 --clients 32 --chunk-bytes 0
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from typing import Any

import numpy as np
import psutil

import covey
from covey.sim import _ray


class Big(covey.Client):
    """Adds a constant to every weight: a full-size update, no training cost."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        step = np.float32(0.001 * (self.cid + 1))
        return covey.FitResult(
            weights={k: v + step for k, v in weights.items()}, num_examples=1 + self.cid
        )


def sample(peaks: dict[int, int], stop: threading.Event) -> None:
    """Keep the peak USS of each Ray actor process below this one until ``stop``."""
    me = psutil.Process()
    while not stop.is_set():
        for proc in me.children(recursive=True):
            try:
                if "ClientHost" in " ".join(proc.cmdline()):
                    uss = proc.memory_full_info().uss
                    peaks[proc.pid] = max(peaks.get(proc.pid, 0), uss)
            except psutil.Error:
                continue
        time.sleep(0.1)


def main() -> None:
    """Run once and print the peaks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="model size in MB")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunk-bytes", type=int, default=_ray.CHUNK_BYTES)
    args = parser.parse_args()
    _ray.CHUNK_BYTES = args.chunk_bytes or 2**62
    half = args.mb * 2**20 // 8  # two float32 arrays
    init = {"a": np.zeros(half, np.float32), "b": np.ones(half, np.float32)}
    peaks: dict[int, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(peaks, stop), daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        result = covey.simulate(
            Big,
            args.clients,
            args.rounds,
            covey.FedAvg(fraction_evaluate=0.0),
            init,
            backend="ray",
            client_resources={"num_cpus": 0.5},
        )
    finally:
        stop.set()
        sampler.join()
    seconds = time.perf_counter() - start
    assert all(len(r.fit_participants) == args.clients for r in result.history.rounds[1:])
    actors = sorted(peaks.values(), reverse=True)
    print(
        f"model {args.mb} MB, {args.clients} clients, chunk bytes "
        f"{args.chunk_bytes or 'unbounded'}: {seconds:.1f} s; actor peak USS MB "
        f"{[round(v / 2**20) for v in actors]}; simulating process max RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB"
    )


if __name__ == "__main__":
    main()
