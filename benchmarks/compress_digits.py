"""Update compression on the digits workload: final accuracy and bytes per round per scheme.

Runs the benchmark's digits workload (``_workload.py``: logistic regression,
FedAvg, every client every round) through ``covey.simulate`` once per
compression scheme and prints a markdown table: test accuracy after the last
round, its difference from the uncompressed run, and the array bytes the
server sent and received per round (from ``History``).

With ``--deployed`` the same federation is served instead: ``covey.serve`` on
127.0.0.1 (no TLS) and one ``covey.connect`` client per site, all threads of
this process, so every task and encoded update crosses real gRPC.

Example::

    .venv/bin/python benchmarks/compress_digits.py --n 10 --rounds 10
    .venv/bin/python benchmarks/compress_digits.py --deployed --n 10 --rounds 10
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
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
    ("float16", "float16"),
    ("bfloat16", "bfloat16"),
    ("8-bit stochastic", "q8"),
    ("4-bit stochastic", "q4"),
    ("top-k 10% + error feedback", TopK(0.1)),
    ("top-k 1% + error feedback", TopK(0.01)),
]


def evaluate(rnd: int, w: Mapping[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """Central evaluation on the held-out digits."""
    loss, acc = wl.evaluate(w["W"], w["b"])
    return loss, {"accuracy": acc}


def served(n: int, rounds: int, compression: Any) -> covey.History:
    """Serve the federation on 127.0.0.1 with ``n`` connected client threads; its history."""
    port: list[int] = []
    listening = threading.Event()
    out: list[covey.History] = []

    def on_listen(p: int) -> None:
        port.append(p)
        listening.set()

    def server() -> None:
        strategy = covey.FedAvg(
            fraction_fit=1.0, min_fit_clients=n, fraction_evaluate=0.0, min_available_clients=n
        )
        result = covey.serve(
            strategy,
            rounds,
            wl.initial_weights(),
            "127.0.0.1:0",
            evaluate_fn=evaluate,
            insecure=True,
            compression=compression,
            on_listen=on_listen,
            wait_timeout=120,
            plot=False,
        )
        out.append(result.history)

    threads = [threading.Thread(target=server)]
    threads[0].start()
    if not listening.wait(60):
        raise RuntimeError("the server did not start")
    for k in range(n):
        client = DigitsClient(k, n_clients=n)
        address = f"127.0.0.1:{port[0]}"
        kwargs = {"insecure": True, "name": f"site-{k:03d}"}
        threads.append(
            threading.Thread(target=covey.connect, args=(client, address), kwargs=kwargs)
        )
        threads[-1].start()
    for t in threads:
        t.join()
    return out[0]


def run(
    n: int, rounds: int, compression: Any, deployed: bool = False
) -> tuple[float, int, int, float]:
    """``(accuracy, bytes sent per round, bytes received per round, seconds)``."""
    t0 = time.perf_counter()
    if deployed:
        history = served(n, rounds, compression)
    else:
        history = covey.simulate(
            functools.partial(DigitsClient, n_clients=n),
            n,
            rounds,
            covey.FedAvg(fraction_fit=1.0, min_fit_clients=n, fraction_evaluate=0.0),
            wl.initial_weights(),
            evaluate,
            seed=0,
            compression=compression,
        ).history
    seconds = time.perf_counter() - t0
    last = history.rounds[-1]
    sent = [r.bytes_sent or 0 for r in history.rounds[1:]]
    received = [r.bytes_received or 0 for r in history.rounds[1:]]
    accuracy = float(last.central_metrics["accuracy"])
    return accuracy, sum(sent) // len(sent), sum(received) // len(received), seconds


def main() -> None:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, nargs="+", default=[10, 100])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--deployed", action="store_true", help="serve over gRPC on 127.0.0.1")
    args = p.parse_args()
    wl.load_data()
    for n in args.n:
        table(n, args.rounds, args.deployed)


def table(n: int, rounds: int, deployed: bool) -> None:
    """Print one markdown table: every scheme at ``n`` clients for ``rounds`` rounds."""
    where = "served over gRPC on 127.0.0.1" if deployed else "simulated"
    print(f"\nN = {n}, R = {rounds}, {where}\n")
    print(
        "| scheme | final acc | vs uncompressed | sent B/round | received B/round "
        f"| received / raw | {'serve' if deployed else 'simulate'} s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    base_acc = raw = None
    for label, scheme in SCHEMES:  # every run counts its bytes, uncompressed ones too
        acc, sent, received, seconds = run(n, rounds, scheme, deployed)
        base_acc = acc if base_acc is None else base_acc
        raw = received if raw is None else raw
        ratio = f"{received / raw:.3f}" if raw else "-"
        print(
            f"| {label} | {acc:.4f} | {acc - base_acc:+.4f} | {sent:,} | {received:,} "
            f"| {ratio} | {seconds:.2f} |"
        )


if __name__ == "__main__":
    main()
