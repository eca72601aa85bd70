"""Federated k-means on scikit-learn's digits: task kinds of one's own, not training.

Three sites hold label-skewed parts of the 1797 digits (64 pixels of 0 to 16).
The server never sees a pixel. It sends tasks of two kinds this file registers:

* ``"kmeans.stats"``: each site returns its per-pixel sums and sums of squares
  and its count, from which the server draws the first centroids;
* ``"kmeans.assign"``: the server sends the centroids; each site assigns its
  points to the nearest and returns, per centroid, the sum of its points and
  their count (and its inertia); the server moves every centroid to the mean.

It then compares the inertia of the result on the pooled data with scikit-learn's
``KMeans`` trained on that pooled data. Run it simulated (a few seconds) with
``python examples/federated_kmeans.py``.

The same runs deployed: the server is ``covey server`` loading :func:`server`, a
``ServerApp`` whose ``main`` runs :func:`kmeans` over the listening server's
transport, and each site is ``covey client`` loading ``client_fn`` from this file,
which registers both kinds when it is imported. From ``examples/``, each in a
terminal (``python federated_kmeans.py --serve 127.0.0.1:9093`` serves the same
from Python)::

    covey server --app federated_kmeans:server --insecure --address 127.0.0.1:9093
    covey client --app federated_kmeans:client_fn --cid 0 --server 127.0.0.1:9093 --insecure
    covey client --app federated_kmeans:client_fn --cid 1 --server 127.0.0.1:9093 --insecure
    covey client --app federated_kmeans:client_fn --cid 2 --server 127.0.0.1:9093 --insecure

The pixels are integers, so the sums are exact in any order: the deployed run
gives the same centroids as the simulated one, bit for bit.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_digits

import covey
from covey.clients import register_task
from covey.core import Task
from covey.data import dirichlet
from covey.deploy import ServerApp

NUM_CLIENTS = 3
K = 10
ROUNDS = 50  # at most: the rounds stop once no centroid moves
SEED = 1  # the random start; k-means finds a local minimum near it

_digits = load_digits()
X: np.ndarray = _digits.data  # float64 pixels, each an integer from 0 to 16
PARTS = dirichlet(_digits.target, num_clients=NUM_CLIENTS, alpha=0.5, seed=0)


class KMeansSite(covey.Client):
    """A site holding its part of the digits; it answers the k-means tasks below."""

    def __init__(self, cid: int) -> None:
        self.x = X[PARTS[cid]]


def client_fn(cid: int) -> KMeansSite:
    """Site ``cid`` (``covey client --app federated_kmeans:client_fn --cid N``)."""
    return KMeansSite(cid)


def stats(client: KMeansSite, task: Task) -> dict[str, Any]:
    """``"kmeans.stats"``: the site's count and its per-pixel sums and sums of squares."""
    x = client.x
    return {"n": len(x), "sum": x.sum(axis=0), "sumsq": (x * x).sum(axis=0)}


def assign(client: KMeansSite, task: Task) -> dict[str, Any]:
    """``"kmeans.assign"``: per centroid of ``task.payload``, the sum and count of its points."""
    centroids = np.asarray(task.payload["centroids"], dtype=np.float64)
    x = client.x
    distances = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    nearest = distances.argmin(axis=1)
    sums = np.zeros_like(centroids)
    np.add.at(sums, nearest, x)
    return {
        "sums": sums,
        "counts": np.bincount(nearest, minlength=len(centroids)),
        "inertia": float(distances[np.arange(len(x)), nearest].sum()),
    }


# At import: `covey client --app federated_kmeans:client_fn` and the process backend's
# workers import this module, and so learn both kinds.
register_task("kmeans.stats", stats)
register_task("kmeans.assign", assign)


@dataclass
class KMeansResult:
    """The centroids the federation found, and its inertia (summed over sites) per round."""

    centroids: np.ndarray
    inertia: list[float]


def _ask(transport: Any, kind: str, round: int, payload: Any, timeout: float | None) -> list[Any]:
    """Send a ``kind`` task to every connected client; their results, in client-id order."""
    tasks = {cid: Task(kind, round, payload=payload) for cid in transport.clients()}
    if not tasks:
        raise RuntimeError(f"round {round}: no client is connected")
    replies = {reply.cid: reply for reply in transport.exchange(tasks, timeout=timeout)}
    for cid in tasks:
        reply = replies.get(cid)
        if reply is None:
            raise RuntimeError(f"round {round}: client {cid} did not answer in {timeout} s")
        if reply.error is not None:
            raise RuntimeError(
                f"round {round}: client {cid} failed its {kind} task:\n{reply.error}"
            )
    return [replies[cid].result for cid in sorted(tasks)]


def _total(results: list[Any], key: str) -> np.ndarray:
    """The sum over sites of the arrays their results hold at ``key`` (exact: integer pixels)."""
    return np.sum([np.asarray(result[key]) for result in results], axis=0)


def kmeans(
    transport: Any,
    *,
    k: int = K,
    rounds: int = ROUNDS,
    seed: int = SEED,
    timeout: float | None = 60.0,
) -> KMeansResult:
    """Run federated k-means over the clients ``transport`` reaches (any covey transport)."""
    totals = _ask(transport, "kmeans.stats", 0, None, timeout)
    n = sum(t["n"] for t in totals)
    mean = _total(totals, "sum") / n
    var = _total(totals, "sumsq") / n - mean**2
    rng = np.random.default_rng(seed)
    centroids = mean + np.sqrt(np.maximum(var, 0.0)) * rng.standard_normal((k, len(mean)))
    inertia: list[float] = []
    for round in range(1, rounds + 1):
        results = _ask(transport, "kmeans.assign", round, {"centroids": centroids}, timeout)
        sums, counts = _total(results, "sums"), _total(results, "counts")
        inertia.append(sum(r["inertia"] for r in results))
        chosen = counts > 0  # a centroid no point chose stays where it is
        moved = centroids.copy()
        moved[chosen] = sums[chosen] / counts[chosen][:, None]
        if np.array_equal(moved, centroids):
            break
        centroids = moved
    return KMeansResult(centroids, inertia)


def pooled_inertia(centroids: np.ndarray, x: np.ndarray = X) -> float:
    """The inertia of ``centroids`` on ``x``: squared distances to the nearest, summed."""
    distances = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return float(distances.min(axis=1).sum())


def simulate(num_clients: int = NUM_CLIENTS, **kwargs: Any) -> KMeansResult:
    """:func:`kmeans` with every site in this process."""
    from covey.sim import inline_transport

    return kmeans(inline_transport(client_fn, num_clients), **kwargs)


def deployed(transport: Any, num_clients: int = NUM_CLIENTS, **kwargs: Any) -> KMeansResult:
    """:func:`kmeans` over a listening server's ``transport`` once ``num_clients`` sites joined."""
    if not transport.wait_for_clients(num_clients, timeout=600):
        raise RuntimeError(f"{num_clients} clients did not join within 600 s")
    return kmeans(transport, **kwargs)


def serve(address: str, num_clients: int = NUM_CLIENTS, **kwargs: Any) -> KMeansResult:
    """:func:`kmeans` served on ``address`` (without TLS) once ``num_clients`` sites joined."""
    from covey.transport.grpc import GrpcServerTransport

    transport = GrpcServerTransport(address)
    try:
        host = address.rsplit(":", 1)[0]
        print(f"listening on {host}:{transport.port}", flush=True)  # port 0: the one picked
        return deployed(transport, num_clients, **kwargs)
    finally:
        transport.close()


def main(transport: Any) -> KMeansResult:
    """The server's loop under ``covey server``: federated k-means, then its :func:`report`."""
    result = deployed(transport)
    report(result)
    return result


def server() -> ServerApp:  # `covey server --app federated_kmeans:server`
    """The server side for ``covey server``: no strategy, a loop of its own."""
    return ServerApp(main=main)


def report(result: KMeansResult) -> Mapping[str, float]:
    """Print and return the federated inertia and scikit-learn's on the pooled data."""
    from sklearn.cluster import KMeans

    central = KMeans(n_clusters=len(result.centroids), n_init=10, random_state=0).fit(X)
    federated = pooled_inertia(result.centroids)
    print(f"federated k-means inertia: {federated:.0f} ({len(result.inertia)} rounds)")
    print(f"sklearn KMeans inertia:    {central.inertia_:.0f} (pooled data)")
    return {"federated": federated, "sklearn": float(central.inertia_)}


if __name__ == "__main__":  # `covey client --app federated_kmeans:client_fn` imports this file
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="HOST:PORT", help="serve deployed clients")
    args = parser.parse_args()
    if args.serve:
        report(serve(args.serve))
    else:
        report(simulate())
