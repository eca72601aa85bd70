"""Memory a simulation holds per client it has built, with and without ``client_cache``.

Each configuration runs ``covey.simulate`` for 5 rounds at ``fraction_fit=0.05``
(so about a fifth of the clients are built at least once) and reports the peak
of Python allocations in the simulating process (``tracemalloc``), the clients
built, and that peak divided by them. Two clients: ``tiny`` (an object holding
its id, a 4-float model) and ``topk`` (the same with ``compression="topk:0.1"``
on a 1,000-float model, so each client object also carries its top-k residual).
The process backend's figure is the parent's alone: its workers hold the clients.

Example::

    .venv/bin/python benchmarks/client_state_memory.py --n 5000 20000
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any

import numpy as np

import covey
from covey import FitResult


class Tiny(covey.Client):
    """A client built from its id alone: a seeded random delta per round."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        return FitResult(delta={"w": rng.normal(size=weights["w"].shape)}, num_examples=1)


def measure(n: int, backend: str, cache: int | None, compression: str | None) -> dict[str, Any]:
    """One run's peak allocations, clients built and seconds."""
    size = 4 if compression is None else 1000
    kw: dict[str, Any] = {} if backend == "process" else {"client_cache": cache}
    tracemalloc.start()
    start = time.perf_counter()
    result = covey.simulate(
        Tiny,
        n,
        5,
        covey.FedAvg(fraction_fit=0.05, fraction_evaluate=0.0),
        {"w": np.zeros(size)},
        backend=backend,  # type: ignore[arg-type]
        seed=1,
        compression=compression,
        **kw,
    )
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    built = len({c for r in result.history.rounds for c in r.fit_participants})
    return {"peak": peak, "built": built, "seconds": seconds}


def main() -> None:
    """Print one Markdown table row per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000])
    args = parser.parse_args()
    measure(1000, "inline", None, None)  # imports and caches
    print("| client | backend | client_cache | N | built | peak MB | bytes per built client | s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for n in args.n:
        for client, backend, cache in (
            ("tiny", "inline", None),
            ("tiny", "inline", 0),
            ("tiny", "process", None),
            ("topk", "inline", None),
            ("topk", "inline", 0),
        ):
            m = measure(n, backend, cache, "topk:0.1" if client == "topk" else None)
            print(
                f"| {client} | {backend} | {cache} | {n:,} | {m['built']:,} | "
                f"{m['peak'] / 1e6:.2f} | {m['peak'] / m['built']:,.0f} | {m['seconds']:.1f} |"
            )


if __name__ == "__main__":
    main()
