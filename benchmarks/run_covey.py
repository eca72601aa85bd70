"""covey runner: the workload through covey's public API (``covey.simulate``).

Client ``k`` is cid ``k``. ``--backend`` picks the simulation backend
("inline" by default, "process" as an extra row); ``--large-client inplace``
gives the large case a client that trains in place. Started by ``vs_flower.py``.
"""

from __future__ import annotations

import time

T_START = time.time()

import functools  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _runner_common as common  # noqa: E402
import _workload as wl  # noqa: E402
import numpy as np  # noqa: E402

import covey  # noqa: E402


class DigitsClient(covey.Client):
    """Client ``k`` of ``n_clients`` on the digits workload."""

    def __init__(self, k: int, n_clients: int) -> None:
        self.k = k
        self.x, self.y = wl.client_data(k, n_clients)

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        rnd = int(config["round"])
        w_k, b_k = wl.local_train(weights["W"], weights["b"], self.x, self.y, self.k, rnd)
        return covey.FitResult(weights={"W": w_k, "b": b_k}, num_examples=self.x.shape[0])

    def evaluate(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        loss, acc = wl.evaluate(weights["W"], weights["b"])
        return covey.EvaluateResult(loss=loss, num_examples=360, metrics={"accuracy": acc})


class LargeClient(covey.Client):
    """Client ``k`` of the large-model case: returns ``w`` plus seeded noise."""

    def __init__(self, k: int) -> None:
        self.k = k

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        new = wl.large_update(weights[wl.LARGE_KEY], self.k, int(config["round"]))
        return covey.FitResult(weights={wl.LARGE_KEY: new}, num_examples=1)


class FreshLargeClient(LargeClient):
    """The same update in a new array of its own, computed in that one array."""

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        new = wl.large_update_fresh(weights[wl.LARGE_KEY], self.k, int(config["round"]))
        return covey.FitResult(weights={wl.LARGE_KEY: new}, num_examples=1)


class InPlaceLargeClient(LargeClient):
    """The same update, written into the weights received (``writes_weights``), in chunks."""

    writes_weights = True

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        w = wl.large_update_in_place(weights[wl.LARGE_KEY], self.k, int(config["round"]))
        return covey.FitResult(weights={wl.LARGE_KEY: w}, num_examples=1)


def main() -> None:
    args = common.parse_args(__doc__ or "", backend=True)
    t_imported = time.time()
    rec = common.Recorder(args.workload)
    n = args.n

    def evaluate_fn(rnd: int, weights: Mapping[str, np.ndarray]) -> tuple[float, dict[str, float]]:
        loss, acc = rec.evaluate(rnd, weights)
        return loss, {"accuracy": acc}

    # Module-level classes and functools.partial: picklable for process backends.
    client_fn: Callable[[int], covey.Client]
    if args.workload == "digits":
        wl.load_data()
        initial = wl.initial_weights()
        client_fn = functools.partial(DigitsClient, n_clients=n)
    else:
        initial = wl.large_initial()
        client_fn = {"inplace": InPlaceLargeClient, "fresh": FreshLargeClient}.get(
            args.large_client, LargeClient
        )

    pss_start = common.own_pss_kb()
    t_sim_start = time.time()
    result = covey.simulate(
        client_fn=client_fn,
        num_clients=n,
        rounds=args.rounds,
        strategy=covey.FedAvg(fraction_fit=1.0, min_fit_clients=n, fraction_evaluate=0.0),
        initial_weights=initial,
        evaluate_fn=evaluate_fn,
        backend=args.backend,
        seed=0,
    )
    t_sim_end = time.time()
    common.write_report(
        args,
        system="covey" if args.backend == "inline" else f"covey-{args.backend}",
        t_start=T_START,
        t_imported=t_imported,
        t_sim_start=t_sim_start,
        pss_at_sim_start_kb=pss_start,
        t_sim_end=t_sim_end,
        recorder=rec,
        weights=dict(result.weights),
        versions={"covey": getattr(covey, "__version__", "unknown")},
        extra={"backend": args.backend, "large_client": args.large_client},
    )


if __name__ == "__main__":
    main()
