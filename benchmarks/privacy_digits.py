"""Benchmark: the digits demo under central DP at epsilon 1, 3, 8 and without DP.

For each target epsilon, ``covey.privacy.calibrate`` picks the noise multiplier
that spends it over the run (Poisson sampling at the demo's rate, RDP), and
the demo federation (label-skewed digits, NumPy logistic regression) trains with
``covey.privacy.central`` around FedAvg. Reported: final test accuracy (mean
and spread over seeds), the epsilon the run recorded, and the wall time per
round against the same run without DP.

    .venv/bin/python benchmarks/privacy_digits.py            # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/privacy_digits.py --seeds 1  # quicker
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

import covey
from covey import privacy
from covey.aggregate import Contribution, chain, run_round, weighted_mean
from covey.core import Weights
from covey.data import dirichlet, load_digits
from covey.models import LogisticClient, logistic_evaluate, logistic_init
from covey.privacy._step import Mechanism, Shared, dp_step


def run(
    target: float | None, seed: int, args: argparse.Namespace, z: float | None
) -> dict[str, Any]:
    """One simulated run; returns accuracy, epsilon spent and seconds per round."""
    data = load_digits(seed=0)
    parts = dirichlet(data.y_train, args.clients, 0.5, seed=0, min_size=2)

    def client_fn(cid: int) -> LogisticClient:
        x, y = data.client(parts[cid])
        return LogisticClient(cid, x, y, x[:1], y[:1], lr=0.5, epochs=5, batch_size=16, seed=seed)

    def evaluate(rnd: int, weights: Weights) -> tuple[float, dict[str, Any]]:
        loss, accuracy = logistic_evaluate(weights, data.x_test, data.y_test)
        return loss, {"accuracy": accuracy}

    strategy = covey.FedAvg(fraction_fit=args.fraction, min_fit_clients=0, fraction_evaluate=0.0)
    if target is not None:
        assert z is not None
        strategy = privacy.central(
            strategy, noise_multiplier=z, clip=args.clip, delta=args.delta, adaptive=args.adaptive
        )
    else:
        # The same Poisson draw of clients as the DP runs, so that the time per
        # round differs only by what DP adds (clipping, noise, accounting).
        strategy = covey.FedAvg(
            fraction_fit=args.fraction,
            min_fit_clients=0,
            fraction_evaluate=0.0,
            selector=privacy.poisson_selector(args.fraction, Shared(seed=seed)),
        )
    start = time.perf_counter()
    result = covey.simulate(
        client_fn,
        args.clients,
        args.rounds,
        strategy,
        logistic_init(data.num_features, data.num_classes),
        evaluate,
        seed=seed,
    )
    seconds = time.perf_counter() - start
    last = result.history.rounds[-1]
    in_rounds = [r.durations["total"] for r in result.history.rounds[1:]]
    return {
        "accuracy": last.central_metrics["accuracy"],
        "epsilon": None if last.privacy is None else last.privacy["epsilon"],
        "per_round": float(np.mean(in_rounds)),
        # Outside the rounds: set-up, round 0, and the run hooks (the accountant).
        "outside": seconds - float(np.sum(in_rounds)),
    }


def aggregation_cost(size: int, clients: int, repeat: int = 5) -> tuple[int, float, float]:
    """Seconds to aggregate one round of ``clients`` updates, FedAvg vs DP (clip + noise)."""
    rng = np.random.default_rng(0)
    params = {"w": np.zeros(size, dtype=np.float32)}
    updates = [
        Contribution(k, 10, delta={"w": rng.normal(size=size).astype(np.float32)})
        for k in range(clients)
    ]
    plain = chain(weighted_mean())
    mech = Mechanism(
        name="bench",
        noise_multiplier=1.0,
        clip=1.0,
        delta=1e-5,
        sampling_rate=0.3,
        expected_clients=float(clients),
    )
    dp = dp_step(chain(weighted_mean()), mech, Shared(seed=0))
    times = {}
    for name, step in (("plain", plain), ("dp", dp)):
        best = math.inf
        for _ in range(repeat):
            start = time.perf_counter()
            run_round(step, step.init(params), 1, params, updates)
            best = min(best, time.perf_counter() - start)
        times[name] = best
    return size, times["plain"], times["dp"]


def main() -> None:
    """Run every setting and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--adaptive", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epsilons", default="8,3,1")
    parser.add_argument("--clients-per-round-micro", type=int, default=30)
    args = parser.parse_args()
    targets: list[float | None] = [None, *(float(e) for e in args.epsilons.split(","))]
    rows = []
    base_time = base_outside = None
    zs = {
        t: None if t is None else privacy.calibrate(t, args.delta, args.fraction, args.rounds)
        for t in targets
    }
    run(None, 0, args, None)  # warm-up: imports, caches, the first allocation of everything
    results: dict[float | None, list[dict[str, Any]]] = {t: [] for t in targets}
    for seed in range(args.seeds):  # interleaved, so that load on the machine hits all alike
        for target in targets:
            results[target].append(run(target, seed, args, zs[target]))
    for target in targets:
        z, runs = zs[target], results[target]
        acc = np.array([r["accuracy"] for r in runs])
        per_round = float(np.mean([r["per_round"] for r in runs]))
        outside = float(np.mean([r["outside"] for r in runs]))
        if target is None:
            base_time, base_outside = per_round, outside
        assert base_time is not None
        assert base_outside is not None
        spent = runs[0]["epsilon"]
        rows.append(
            f"| {'no DP' if target is None else f'{target:g}'} "
            f"| {'-' if z is None else f'{z:.3f}'} "
            f"| {'-' if spent is None else f'{spent:.3f}'} "
            f"| {acc.mean():.3f} ± {acc.std():.3f} "
            f"| {per_round * 1e3:.1f} | {(per_round - base_time) * 1e3:+.2f} "
            f"| {outside - base_outside:+.2f} |"
        )
    micro = [aggregation_cost(size, args.clients_per_round_micro) for size in (650, 1_000_000)]
    print()
    print(
        f"clients={args.clients} rounds={args.rounds} q={args.fraction} clip={args.clip} "
        f"delta={args.delta} adaptive={args.adaptive} seeds={args.seeds}"
    )
    print(
        "| target epsilon | z (calibrate) | epsilon recorded | accuracy "
        "| ms per round | DP adds ms per round | accounting s per run |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("| parameters | clients | FedAvg aggregation ms | DP aggregation ms | DP adds ms |")
    print("|---|---|---|---|---|")
    for size, plain, dp in micro:
        print(
            f"| {size:,} | {args.clients_per_round_micro} | {plain * 1e3:.2f} | {dp * 1e3:.2f} "
            f"| {(dp - plain) * 1e3:+.2f} |"
        )


if __name__ == "__main__":
    main()
