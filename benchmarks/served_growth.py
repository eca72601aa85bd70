"""The memory of a deployed ``covey server`` over a long run of short rounds.

Starts ``covey server`` (insecure, on 127.0.0.1) and ``--clients`` ``covey
client`` processes on a small model (64×10 and 10 float32, clients that add to
it), for ``--rounds`` rounds. Every ``--every`` rounds the server's central
evaluation (this file's ``evaluate``) appends the server process's VmRSS and
RssAnon, its open descriptors and the objects the garbage collector tracks to
a JSON-lines file; at the end the growth per round is printed for the first
tenth and for the rest. The run's ``history.json`` records stay in memory
(about 1.3 kB a round here): what grows beyond that is a leak. Every process
started is stopped by its id when the run ends or ``--timeout`` passes.

Example::

    .venv/bin/python benchmarks/served_growth.py --rounds 8000 --clients 4
    .venv/bin/python benchmarks/served_growth.py --rounds 5000 --plot  # plot.png every 10 s
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import covey

HERE = Path(__file__).resolve().parent


class Adder(covey.Client):
    """Adds a little to every weight."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 0.001 for k, v in weights.items()}, num_examples=1)


def client_fn(cid: int) -> covey.Client:
    """What ``covey client --app served_growth:client_fn`` runs."""
    return Adder()


def _status() -> dict[str, int]:
    kept = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            kept[key] = int(value.split()[0])
    return kept


def evaluate(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
    """The server's central evaluation: a sample every ``GROWTH_EVERY`` rounds."""
    if rnd % int(os.environ["GROWTH_EVERY"]) == 0:
        sample = {"round": rnd, **_status(), "fds": len(os.listdir("/proc/self/fd"))}
        sample["gc_objects"] = len(gc.get_objects())
        with open(os.environ["GROWTH_OUT"], "a") as out:
            out.write(json.dumps(sample) + "\n")
    return 0.1, {}


def server_app() -> Any:
    """What ``covey server --app served_growth:server_app`` runs."""
    from covey.deploy import ServerApp

    n = int(os.environ["GROWTH_CLIENTS"])
    return ServerApp(
        strategy=covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n),
        initial_weights={"W": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float32)},
        rounds=int(os.environ["GROWTH_ROUNDS"]),
        evaluate_fn=evaluate,
    )


def _run(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    out, port = folder / "samples.jsonl", folder / "port"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "GROWTH_EVERY": str(args.every),
        "GROWTH_OUT": str(out),
        "GROWTH_CLIENTS": str(args.clients),
        "GROWTH_ROUNDS": str(args.rounds),
    }
    covey_cmd = [sys.executable, "-m", "covey"]
    server_cmd = [*covey_cmd, "server", "--app", "served_growth:server_app", "--insecure"]
    server_cmd += ["--address", "127.0.0.1:0", "--port-file", str(port)]
    server_cmd += ["--run-dir", str(folder / "run"), "--plot" if args.plot else "--no-plot"]
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed below
    procs = [subprocess.Popen(server_cmd, env=env, stdout=log, stderr=subprocess.STDOUT)]
    deadline = time.monotonic() + args.timeout
    try:
        while not port.exists() or not port.read_text().strip():
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {folder / 'server.log'}")
            time.sleep(0.1)
        address = f"127.0.0.1:{port.read_text().strip()}"
        for cid in range(args.clients):
            cmd = [*covey_cmd, "client", "--app", "served_growth:client_fn", "--cid", str(cid)]
            cmd += ["--server", address, "--insecure"]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
        procs[0].wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        log.close()
    if procs[0].returncode != 0:
        raise SystemExit(f"the server ended with {procs[0].returncode}; see {folder}/server.log")
    return [json.loads(line) for line in out.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--every", type=int, default=100, help="rounds between two samples")
    parser.add_argument("--plot", action="store_true", help="draw plot.png as the CLI does")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the run")
    args = parser.parse_args()
    if args.rounds < 10 * args.every or args.clients < 1 or args.every < 1:
        parser.error("give --clients 1 or more and --rounds of at least ten --every")
    with tempfile.TemporaryDirectory(prefix="served-growth-") as tmp:
        samples = _run(args, Path(tmp))
    for s in samples:
        print(json.dumps(s))
    tenth = next(s for s in samples if s["round"] >= args.rounds // 10)
    for label, a, b in (("first tenth", samples[0], tenth), ("after it", tenth, samples[-1])):
        rounds = max(1, b["round"] - a["round"])
        per = (b["VmRSS"] - a["VmRSS"]) / rounds
        objects = (b["gc_objects"] - a["gc_objects"]) / rounds
        print(f"{label}: VmRSS {per:.2f} kB a round, {objects:.1f} tracked objects a round")


if __name__ == "__main__":
    main()
