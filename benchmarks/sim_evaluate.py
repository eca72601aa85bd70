"""covey's own cost per client of federated evaluation on the inline backend.

Each client of the digits workload (N clients, label-skewed shares) evaluates
the model on its own rows: softmax, mean cross-entropy, accuracy. Three
systems run in turns in one process, after one warm-up turn:

* ``plain``: a NumPy loop calling every client's ``evaluate`` and weighing the
  losses by examples;
* ``covey-fit``: ``covey.simulate`` (inline) with a trivial ``fit`` (the weights
  back unchanged) and no federated evaluation;
* ``covey-eval``: the same with every client evaluating every round.

covey's cost per evaluated client is ``covey-eval - covey-fit``; against the
plain loop's per client it gives the overhead of the evaluation round::

    .venv/bin/python benchmarks/sim_evaluate.py --n 1000 --rounds 5 --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import _workload as wl
import numpy as np

import covey


class Evaluating(covey.Client):
    """Client ``k`` of ``n``: fit returns the weights as they came; evaluate on its rows."""

    def __init__(self, k: int, n: int) -> None:
        self.x, self.y = wl.client_data(k, n)

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        return covey.FitResult(weights=dict(weights), num_examples=self.x.shape[0])

    def evaluate(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        p = wl._softmax(self.x @ weights["W"] + weights["b"])
        loss = float(-np.mean(np.log(p[np.arange(self.y.size), self.y] + 1e-12)))
        accuracy = float(np.mean(np.argmax(p, axis=1) == self.y))
        return covey.EvaluateResult(
            loss=loss, num_examples=self.x.shape[0], metrics={"accuracy": accuracy}
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    logging.disable(logging.WARNING)
    wl.load_data()
    n, rounds = args.n, args.rounds
    clients = [Evaluating(k, n) for k in range(n)]

    def plain() -> None:
        weights = wl.initial_weights()
        for rnd in range(1, rounds + 1):
            examples, loss = 0, 0.0
            for client in clients:
                result = client.evaluate(weights, {"round": rnd})
                loss += result.num_examples * result.loss
                examples += result.num_examples

    def covey_run(fraction_evaluate: float) -> Callable[[], None]:
        def run() -> None:
            covey.simulate(
                client_fn=lambda k: clients[k],
                num_clients=n,
                rounds=rounds,
                strategy=covey.FedAvg(
                    fraction_fit=1.0,
                    min_fit_clients=n,
                    fraction_evaluate=fraction_evaluate,
                    min_evaluate_clients=1,
                ),
                initial_weights=wl.initial_weights(),
                seed=0,
            )

        return run

    systems = {"plain": plain, "covey-fit": covey_run(0.0), "covey-eval": covey_run(1.0)}
    times: dict[str, list[float]] = {name: [] for name in systems}
    for turn in range(args.repeats + 1):
        for name, run in systems.items():
            t0 = time.perf_counter()
            run()
            if turn:
                times[name].append((time.perf_counter() - t0) * 1e6 / (n * rounds))
    mid = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        shown = ", ".join(f"{t:.1f}" for t in ts)
        print(f"{name:10} us per client-round: {shown} (median {mid[name]:.1f})")
    own = mid["covey-eval"] - mid["covey-fit"]
    print(
        f"evaluation per client: covey {own:.1f} us, plain loop {mid['plain']:.1f} us; "
        f"covey - plain {own - mid['plain']:.1f} us, covey / plain {own / mid['plain']:.3f}"
    )


if __name__ == "__main__":
    main()
