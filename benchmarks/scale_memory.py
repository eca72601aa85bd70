"""Peak memory of ``covey.simulate`` at N = 1,000 vs N = 100,000 clients, 1% sampled per round.

Each configuration runs in a fresh interpreter (this script started again with
``--child``): the digits workload's logistic model, clients built from their id
(their rows of the digits training set, the partition computed per client, not
for all N at once), ``client_cache=0`` so only sampled clients exist, FedAvg with
``fraction_fit=0.01``. Reported per run: wall time, median round time, and peak
memory: the child's peak RSS (``ru_maxrss``) for inline, and the peak PSS of the
whole process tree (driver, Ray daemons and actors) for Ray.

Example::

    .venv/bin/python benchmarks/scale_memory.py --n 1000 100000 --backends inline ray
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def client_rows(k: int, n: int) -> Any:
    """The training rows of client ``k`` of ``n``: what ``np.array_split`` would give it."""
    import _workload as wl
    import numpy as np

    size, extra = divmod(wl.NUM_TRAIN, n)
    start = k * size + min(k, extra)
    return np.arange(start, start + size + (k < extra))


def child(args: argparse.Namespace) -> None:
    import _workload as wl
    import numpy as np

    import covey

    class Client(covey.Client):
        def __init__(self, k: int) -> None:
            x_train, y_train, _, _ = wl.load_data()
            rows = client_rows(k, args.n)
            self.k, self.x, self.y = k, x_train[rows], y_train[rows]

        def fit(self, weights: Any, config: Any) -> Any:
            w, b = wl.local_train(
                weights["W"], weights["b"], self.x, self.y, self.k, int(config["round"])
            )
            return covey.FitResult(weights={"W": w, "b": b}, num_examples=max(1, len(self.y)))

    times: list[float] = []
    t0 = time.time()
    result = covey.simulate(
        Client,
        args.n,
        args.rounds,
        covey.FedAvg(fraction_fit=args.fraction, fraction_evaluate=0.0),
        wl.initial_weights(),
        backend=args.backend,
        client_cache=0,
        on_round=lambda record: times.append(record.durations.get("total", 0.0)),
    )
    out = {
        "n": args.n,
        "backend": args.backend,
        "seconds": time.time() - t0,
        "round_seconds": times[1:],
        "sampled": [len(r.fit_participants) for r in result.history.rounds[1:]],
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "weights_sum": float(np.sum(result.weights["W"])),
    }
    print("RESULT " + json.dumps(out), flush=True)


def run(n: int, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    import _proctree as pt

    cmd = [sys.executable, __file__, "--child", "--n", str(n), "--backend", backend]
    cmd += ["--rounds", str(args.rounds), "--fraction", str(args.fraction)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    sampler = pt.TreeSampler(root_sid=proc.pid, interval=0.1, max_duty=0.1)
    sampler.start()
    out, _ = proc.communicate(timeout=args.timeout)
    deadline = time.time() + 15
    while pt.tree(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    sampler.stop()
    pt.kill_tree(proc.pid)
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"n": n, "backend": backend, "error": f"exit {proc.returncode}"}
    row: dict[str, Any] = json.loads(line[len("RESULT ") :])
    row["tree_peak_pss_mb"] = sampler.peak_kb / 1024
    row["max_processes"] = sampler.max_nprocs
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 100_000])
    p.add_argument("--backends", nargs="+", default=["inline", "ray"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--timeout", type=float, default=1200.0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="inline", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.n = args.n[0]
        child(args)
        return
    rows = [run(n, backend, args) for backend in args.backends for n in args.n]
    print(
        "| backend | N | sampled per round | wall s | round s (median) | peak RSS MB "
        "(driver) | peak PSS MB (process tree) | processes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['backend']} | {r['n']} | FAILED: {r['error']} ||||||")
            continue
        print(
            f"| {r['backend']} | {r['n']:,} | {r['sampled'][0]:,} | {r['seconds']:.1f} "
            f"| {statistics.median(r['round_seconds']):.3f} | {r['maxrss_mb']:.0f} "
            f"| {r['tree_peak_pss_mb']:.0f} | {r['max_processes']} |"
        )


if __name__ == "__main__":
    main()
