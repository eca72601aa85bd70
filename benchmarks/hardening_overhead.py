"""What the hardening checks cost on the transfer path: one exchange of a large model.

A gRPC server transport and one client (a thread of this process, insecure, on
127.0.0.1) exchange a fit task whose model is ``--mb`` MB of float32; the client
returns the weights it got. The script prints the median seconds per exchange
and the process's peak RSS. Run it against two source trees to compare them:

    .venv/bin/python benchmarks/hardening_overhead.py --mb 200 --repeat 5
    PYTHONPATH=/tmp/base/src .venv/bin/python benchmarks/hardening_overhead.py --mb 200
"""

from __future__ import annotations

import argparse
import resource
import statistics
import threading
import time
from typing import Any

import numpy as np

import covey
from covey.core._messages import Task
from covey.transport.grpc._client import connect
from covey.transport.grpc._server import GrpcServerTransport


class Echo(covey.Client):
    """Returns the weights it was sent."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights=dict(weights), num_examples=1)


def main() -> None:
    """Run the exchanges and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="model size in MB")
    parser.add_argument("--repeat", type=int, default=5, help="exchanges to time")
    args = parser.parse_args()
    weights = {"w": np.ones(args.mb * 1024 * 1024 // 4, dtype=np.float32)}
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    client = threading.Thread(
        target=connect,
        args=(Echo(), f"127.0.0.1:{transport.port}"),
        kwargs={"insecure": True, "name": "echo"},
        daemon=True,
    )
    client.start()
    assert transport.wait_for_clients(1, 30)
    times = []
    for rnd in range(1, args.repeat + 2):
        start = time.perf_counter()
        (reply,) = list(transport.exchange({0: Task("fit", rnd, {}, weights)}, timeout=300))
        assert reply.ok, reply.error
        if rnd > 1:  # the first exchange warms up both sides
            times.append(time.perf_counter() - start)
        del reply
    transport.close()
    client.join(30)
    median = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"covey {covey.__version__} from {covey.__file__}\n"
        f"{args.mb} MB model: median {median:.3f} s per exchange over {len(times)} "
        f"({2 * args.mb / median:.0f} MB/s both ways), peak RSS {peak:.0f} MiB"
    )


if __name__ == "__main__":
    main()
