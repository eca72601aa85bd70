"""Secure aggregation cost: covey's SecAgg+/SecAgg vs plain FedAvg vs Flower 1.42's SecAgg+.

Every client sends the same kind of update (a random float32 vector of P
parameters, each in [-1, 1], trained on 50-500 examples). For covey, one
process runs the server and every client through the in-memory transport; a
timing wrapper splits CPU time into client work (inside the task handlers) and
server work (the rest), and counts the bytes the gRPC transport would carry
(JSON headers plus raw arrays, both directions). Dropouts vanish after sharing
keys (they never send a masked input). Rounds after the first are reported.

Flower runs in its own venv (``--flower-python``, see the Makefile's
``.venv-flower``) through ``benchmarks/_secagg_flower.py``: its real
``SecAggPlusWorkflow`` and ``secaggplus_mod`` driven in one process by a stub
grid, the same vectors and dropouts.

Example::

    .venv/bin/python benchmarks/secagg_vs_flower.py --cases small
    .venv/bin/python benchmarks/secagg_vs_flower.py --flower-python .venv-flower/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import covey
from covey.clients._client import run_task
from covey.core._messages import Reply, Task
from covey.secagg import ThreatModel, secure
from covey.server import RoundLoop
from covey.transport._memory import MemoryTransport
from covey.transport.grpc._wire import dumps, result_to_wire

HERE = Path(__file__).resolve().parent
CASES = {
    # name: (clients, parameters, dropout, graph)
    "n10": (10, 100_000, 0.0, "auto"),
    "n50": (50, 100_000, 0.0, "auto"),
    "n100": (100, 100_000, 0.0, "auto"),
    "n100-1m-drop10": (100, 1_000_000, 0.1, "auto"),
    "n100-complete": (100, 100_000, 0.0, "complete"),
}


class Update(covey.Client):
    """Returns a fixed random delta in [-1, 1] and 50-500 examples."""

    def __init__(self, cid: int, size: int) -> None:
        rng = np.random.default_rng(cid)
        self.delta = {"w": rng.uniform(-1, 1, size).astype(np.float32)}
        self.n = int(rng.integers(50, 501))

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(delta=self.delta, num_examples=self.n)


class Meter:
    """An in-memory transport that times client handlers and counts the bytes on the wire."""

    def __init__(self, clients: Mapping[int, Update], drop: set[int]) -> None:
        self.clients_ = clients
        self.drop = drop
        self.inner = MemoryTransport(sorted(clients), self._handle)
        self.client_cpu = 0.0
        self.bytes_down = 0
        self.bytes_up = 0

    def _handle(self, cid: int, task: Task) -> Reply:
        t0 = time.process_time()
        reply = run_task(self.clients_[cid], cid, task)
        self.client_cpu += time.process_time() - t0
        return reply

    def clients(self) -> list[int]:
        return sorted(self.clients_)

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        for task in tasks.values():
            payload = b"" if task.kind == "fit" else dumps(task.payload)
            model = sum(a.nbytes for a in (task.weights or {}).values())
            self.bytes_down += len(payload) + len(dumps(dict(task.config))) + model
        for reply in self.inner.exchange(tasks, timeout=timeout):
            if reply.cid in self.drop and reply.kind in ("secagg.mask", "secagg.unmask"):
                continue
            head, arrays = result_to_wire(reply.result)
            self.bytes_up += len(head) + sum(a.nbytes for a in (arrays or {}).values())
            yield reply

    def close(self) -> None:
        pass


def run_covey(
    clients: int, size: int, dropout: float, graph: str, rounds: int, mode: str
) -> dict[str, Any]:
    """Time ``rounds`` rounds of plain or secure FedAvg; report the rounds after the first."""
    population = {c: Update(c, size) for c in range(clients)}
    drop = set(range(0, clients, round(1 / dropout))) if dropout else set()
    strategy = covey.FedAvg(
        fraction_evaluate=0.0, min_fit_clients=clients - len(drop), min_available_clients=clients
    )
    if mode == "secure":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            strategy = secure(
                strategy,
                clip_range=1.0,
                bits=16,
                max_examples=500,
                threat=ThreatModel(0.05, max(dropout, 0.05)),
                complete=True if graph == "complete" else None,
            )
    elif drop:
        population = {c: u for c, u in population.items() if c not in drop}
        strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=len(population))
    meter = Meter(population, drop if mode == "secure" else set())
    loop = RoundLoop(strategy, meter, {"w": np.zeros(size, np.float32)})
    rows = []
    for rnd in range(1, rounds + 1):
        meter.client_cpu, meter.bytes_up, meter.bytes_down = 0.0, 0, 0
        w0, c0 = time.perf_counter(), time.process_time()
        record = loop.run_round(rnd)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        rows.append(
            {
                "wall": wall,
                "client_cpu": meter.client_cpu,
                "server_cpu": cpu - meter.client_cpu,
                "bytes_up": meter.bytes_up,
                "bytes_down": meter.bytes_down,
                "participants": len(record.fit_participants),
                "info": {k: v for k, v in record.aggregate_info.items() if k.startswith("secagg")},
            }
        )
    later = rows[1:] or rows
    out = {
        k: float(np.mean([r[k] for r in later]))
        for k in ("wall", "client_cpu", "server_cpu", "bytes_up", "bytes_down")
    }
    out["participants"] = later[-1]["participants"]
    out["info"] = later[-1]["info"]
    out["weights_dtype"] = str(loop.weights["w"].dtype)
    return out


def run_grpc(clients: int, size: int, rounds: int, mode: str) -> dict[str, Any]:
    """Plain or secure FedAvg over the real gRPC transport (loopback, no TLS, client threads)."""
    from covey.deploy import connect, serve

    strategy = covey.FedAvg(
        fraction_evaluate=0.0, min_fit_clients=clients, min_available_clients=clients
    )
    if mode == "secure":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            strategy = secure(strategy, clip_range=1.0, bits=16, max_examples=500)
    port: list[int] = []
    listening = threading.Event()
    result: list[Any] = []

    def server() -> None:
        result.append(
            serve(
                strategy,
                rounds,
                {"w": np.zeros(size, np.float32)},
                "127.0.0.1:0",
                insecure=True,
                wait_timeout=120,
                round_timeout=600,
                on_listen=lambda p: (port.append(p), listening.set()),
            )
        )

    threads = [threading.Thread(target=server)]
    threads[0].start()
    if not listening.wait(60):
        raise RuntimeError("the server did not start")
    for k in range(clients):
        t = threading.Thread(
            target=connect,
            args=(Update(k, size), f"127.0.0.1:{port[0]}"),
            kwargs={"insecure": True, "name": f"site-{k:03d}"},
        )
        t.start()
        threads.append(t)
    for t in threads:
        t.join(1800)
    fits = [r.durations["fit"] for r in result[0].history.rounds[1:]]
    later = fits[1:] or fits
    return {"fit_wall": float(np.mean(later)), "rounds": len(fits)}


def run_flower(
    python: str, clients: int, size: int, dropout: float, graph: str, rounds: int
) -> dict[str, Any] | None:
    """Run Flower's SecAgg+ workflow in its own interpreter; None if it failed."""
    cmd = [
        python,
        str(HERE / "_secagg_flower.py"),
        "--clients",
        str(clients),
        "--size",
        str(size),
        "--dropout",
        str(dropout),
        "--graph",
        graph,
        "--rounds",
        str(rounds),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Run the chosen cases and print one JSON line per (case, system)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), help=f"of {list(CASES)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flower-python", default=None)
    parser.add_argument(
        "--flower-rounds", type=int, default=None, help="rounds for Flower (default --rounds)"
    )
    parser.add_argument("--out", default=str(HERE / "results" / "secagg.jsonl"))
    parser.add_argument(
        "--grpc", type=int, default=0, help="also time N clients over gRPC (plain and secure)"
    )
    args = parser.parse_args()
    if args.grpc:
        for mode in ("plain", "secure"):
            row = {
                "case": f"grpc-n{args.grpc}",
                "system": f"covey-{mode}-grpc",
                "clients": args.grpc,
                "params": 100_000,
                "result": run_grpc(args.grpc, 100_000, args.rounds, mode),
            }
            print(json.dumps(row), flush=True)
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    systems = ["covey-plain", "covey-secure"] + (
        ["flower-secaggplus"] if args.flower_python else []
    )
    with open(args.out, "a") as out:
        for name in args.cases:
            clients, size, dropout, graph = CASES[name]
            for system in systems:  # each row is flushed as soon as it is measured
                if system == "flower-secaggplus":
                    result = run_flower(
                        args.flower_python,
                        clients,
                        size,
                        dropout,
                        graph,
                        args.flower_rounds or args.rounds,
                    )
                else:
                    mode = system.removeprefix("covey-")
                    result = run_covey(clients, size, dropout, graph, args.rounds, mode)
                row = {
                    "case": name,
                    "system": system,
                    "clients": clients,
                    "params": size,
                    "dropout": dropout,
                    "graph": graph,
                    "result": result,
                }
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
