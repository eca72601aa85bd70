"""Reference runner: the workload as a plain NumPy for-loop (no framework).

For each round, for each client ``k`` in order: train, accumulate
``n_k * W_k``; then divide by the total number of examples.
Started by ``vs_flower.py``; see ``_runner_common.parse_args`` for the flags.
"""

from __future__ import annotations

import time

T_START = time.time()

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _runner_common as common  # noqa: E402
import _workload as wl  # noqa: E402
import numpy as np  # noqa: E402


def run_digits(n_clients: int, rounds: int, rec: common.Recorder) -> dict[str, np.ndarray]:
    parts = [wl.client_data(k, n_clients) for k in range(n_clients)]
    weights = wl.initial_weights()
    rec.evaluate(0, weights)
    for rnd in range(1, rounds + 1):
        acc = {k: np.zeros_like(v) for k, v in weights.items()}
        total = 0
        for k, (x, y) in enumerate(parts):
            w_k, b_k = wl.local_train(weights["W"], weights["b"], x, y, k, rnd)
            n_k = x.shape[0]
            acc["W"] += n_k * w_k
            acc["b"] += n_k * b_k
            total += n_k
        weights = {k: v / total for k, v in acc.items()}
        rec.evaluate(rnd, weights)
    return weights


def run_large(n_clients: int, rounds: int, rec: common.Recorder) -> dict[str, np.ndarray]:
    w = wl.large_initial()[wl.LARGE_KEY]
    rec.evaluate(0, {wl.LARGE_KEY: w})
    for rnd in range(1, rounds + 1):
        acc = np.zeros_like(w)
        total = 0
        for k in range(n_clients):
            n_k = 1  # every client reports one example in this case
            update = wl.large_update(w, k, rnd)
            update *= n_k
            acc += update
            total += n_k
        w = acc / total
        rec.evaluate(rnd, {wl.LARGE_KEY: w})
    return {wl.LARGE_KEY: w}


def main() -> None:
    args = common.parse_args(__doc__ or "")
    t_imported = time.time()
    rec = common.Recorder(args.workload)
    if args.workload == "digits":
        wl.load_data()
    pss_start = common.own_pss_kb()
    t_sim_start = time.time()
    if args.workload == "digits":
        weights = run_digits(args.n, args.rounds, rec)
    else:
        weights = run_large(args.n, args.rounds, rec)
    t_sim_end = time.time()
    common.write_report(
        args,
        system="plain",
        t_start=T_START,
        t_imported=t_imported,
        t_sim_start=t_sim_start,
        pss_at_sim_start_kb=pss_start,
        t_sim_end=t_sim_end,
        recorder=rec,
        weights=weights,
        versions={},
    )


if __name__ == "__main__":
    main()
