"""A fleet of many small clients on one ``covey.deploy.serve`` over gRPC on 127.0.0.1.

What a deployment of hundreds of phone-like clients costs the server: CPU and
memory per idle connected client, how long a storm of clients takes to be
connected, the time of a round with a sampled fraction of the fleet, the run
folder's growth per round and the log lines per round at INFO.

The server runs in a child process (this script again with ``--child server``,
logging at INFO to a file), the clients in ``--procs`` child processes, each
running its share of the ``--clients`` as ``covey.deploy.connect`` threads
(insecure, a 650-weight model, a ``fit`` that adds to the weights). Two phases:

1. idle: the server waits for one client more than there are; once all have
   joined, its CPU time, resident memory and threads are read from ``/proc``
   over ``--idle`` seconds;
2. rounds: a new server runs ``--rounds`` rounds of FedAvg sampling
   ``--fraction`` of the fleet; the run folder and the log are measured after.

Every child is killed by its pid when the phase ends or at ``--deadline``.

Example::

    .venv/bin/python benchmarks/fleet_scale.py --clients 300 --procs 2 --idle 30 --rounds 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def serve_child(args: argparse.Namespace) -> None:
    import logging

    import numpy as np

    import covey
    from covey.deploy import serve

    logging.basicConfig(level=logging.INFO, filename=args.log, format="%(asctime)s %(message)s")
    idle = args.rounds == 0
    needed = args.clients + 1 if idle else args.clients
    # The server refuses at start to wait for more clients than it admits: the idle
    # phase's one client more may pass the default cap of 1000 (``--clients 1000``).
    strategy = covey.FedAvg(
        fraction_fit=args.fraction,
        min_fit_clients=max(1, int(args.fraction * args.clients)),
        min_available_clients=needed,
        fraction_evaluate=0.0,
    )
    # The idle phase ends by being killed (or at its deadline); the rounds must finish.
    ends = contextlib.suppress(covey.FederationError) if idle else contextlib.nullcontext()
    with ends:
        serve(
            strategy,
            max(1, args.rounds),
            {"W": np.zeros((64, 10)), "b": np.zeros(10)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=args.run_dir,
            on_listen=lambda port: Path(args.port_file).write_text(str(port)),
            wait_timeout=args.deadline,
            max_clients=max(1000, needed),
            round_timeout=30.0,
            heartbeat=args.heartbeat,
            plot=False,
        )


def clients_child(args: argparse.Namespace) -> None:
    import threading

    import covey
    from covey.deploy import connect

    port = Path(args.port_file).read_text()

    class Adder(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(
                weights={k: v + 0.01 for k, v in weights.items()}, num_examples=1
            )

    def run(cid: int) -> None:
        with contextlib.suppress(Exception):  # the server of the idle phase is killed
            connect(Adder(), f"127.0.0.1:{port}", insecure=True, name=f"c{cid}", retry_for=60.0)

    threads = [
        threading.Thread(target=run, args=(args.first + i,), daemon=True) for i in range(args.count)
    ]
    for t in threads:
        t.start()
    end = time.monotonic() + args.deadline
    for t in threads:
        t.join(max(0.1, end - time.monotonic()))


def proc_stats(pid: int) -> tuple[float, int, int]:
    """CPU seconds, resident KiB and threads of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    # A process that has exited but is not reaped yet has no VmRSS line: 0.
    rss = next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
    threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
    return cpu, rss, threads


def record_bytes(db: Path, rounds: int) -> float:
    """Mean bytes of a round's record in ``run.sqlite`` (the JSON of its participants...)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        (total,) = con.execute("SELECT sum(length(record)) FROM rounds WHERE round > 0").fetchone()
    return float(total or 0) / rounds


def joined(log: Path) -> int:
    return log.read_text().count(" joined as ") if log.exists() else 0


def finished(
    server: subprocess.Popen[bytes], run_dir: Path, rounds: int, deadline: float, log: Path
) -> None:
    """Exit naming what went wrong unless the server ran all its rounds and ended well."""
    if server.poll() is None:
        raise SystemExit(f"rounds phase: not over within --deadline {deadline:g} s; log: {log}")
    if server.returncode != 0:
        raise SystemExit(f"rounds phase: the server failed (exit status {server.returncode})")
    done = 0
    if (run_dir / "run.sqlite").exists():
        with contextlib.closing(sqlite3.connect(run_dir / "run.sqlite")) as con:
            (done,) = con.execute("SELECT count(*) FROM rounds WHERE round > 0").fetchone()
    if done != rounds:
        raise SystemExit(f"rounds phase: the server ran {done} of {rounds} rounds; log: {log}")


def listening(
    server: subprocess.Popen[bytes], port_file: Path, log: Path, end: float, name: str
) -> None:
    """Return once the server has written its port; exit naming why if it ends first."""
    while not (port_file.exists() and port_file.read_text().strip()):
        if server.poll() is not None:  # its error (a setting serve() refuses) is above
            raise SystemExit(
                f"{name} phase: the server exited (exit status {server.returncode}) "
                f"before it listened; server log: {log}"
            )
        if time.monotonic() > end:
            raise SystemExit(f"{name} phase: the server did not listen before --deadline")
        time.sleep(0.05)


def phase(args: argparse.Namespace, folder: Path, rounds: int) -> dict[str, Any]:
    """Start the server and the client processes; measure; kill every child by its pid."""
    log, port_file, run_dir = folder / "server.log", folder / "port", folder / "run"
    me = [sys.executable, __file__, "--clients", str(args.clients), "--port-file", str(port_file)]
    me += ["--deadline", str(args.deadline), "--heartbeat", str(args.heartbeat)]
    server = subprocess.Popen(
        [
            *me,
            "--child",
            "server",
            "--rounds",
            str(rounds),
            "--fraction",
            str(args.fraction),
            "--log",
            str(log),
            "--run-dir",
            str(run_dir),
        ]
    )
    children = [server]
    out: dict[str, Any] = {}
    try:
        end = time.monotonic() + args.deadline
        listening(server, port_file, log, end, "idle" if rounds == 0 else "rounds")
        start = time.monotonic()
        share = -(-args.clients // args.procs)
        for k in range(args.procs):
            count = min(share, args.clients - k * share)
            child = [*me, "--child", "clients", "--first", str(k * share), "--count", str(count)]
            children.append(subprocess.Popen(child))
        while joined(log) < args.clients and time.monotonic() < end and server.poll() is None:
            time.sleep(0.05)
        out["connect_s"] = time.monotonic() - start
        out["joined"] = joined(log)
        if rounds == 0 and out["joined"] < args.clients:
            raise SystemExit(
                f"idle phase: {out['joined']} of {args.clients} clients joined"
                + (" before --deadline" if server.poll() is None else "; the server exited")
                + f"; server log: {log}"
            )
        if rounds == 0:
            time.sleep(2.0)  # the last joins settle
            cpu0, _, _ = proc_stats(server.pid)
            clients0 = sum(proc_stats(c.pid)[0] for c in children[1:])
            time.sleep(args.idle)
            cpu1, rss1, threads = proc_stats(server.pid)
            clients1 = sum(proc_stats(c.pid)[0] for c in children[1:])
            out |= {
                "server_cpu_pct": 100 * (cpu1 - cpu0) / args.idle,
                "server_cpu_ms_per_client_s": 1000 * (cpu1 - cpu0) / args.idle / args.clients,
                "clients_cpu_ms_per_client_s": 1000
                * (clients1 - clients0)
                / args.idle
                / args.clients,
                "server_rss_mib": rss1 / 1024,
                "server_threads": threads,
            }
        else:
            peak = 0
            while server.poll() is None and time.monotonic() < end:
                with contextlib.suppress(OSError):  # it ended between the two calls
                    peak = max(peak, proc_stats(server.pid)[1])
                time.sleep(0.2)
            finished(server, run_dir, rounds, args.deadline, log)
            lines = log.read_text().splitlines()
            out |= {
                "rounds_s": time.monotonic() - start - out["connect_s"],
                "server_peak_rss_mib": peak / 1024,
                "record_bytes_per_round": record_bytes(run_dir / "run.sqlite", rounds),
                "history_kib": (run_dir / "history.json").stat().st_size / 1024,
                "log_lines": len(lines),
                "log_lines_not_join_leave": sum(
                    " joined as " not in x and ") left: " not in x for x in lines
                ),
            }
    finally:
        for child in reversed(children):  # each by its own pid, the clients first
            if child.poll() is None:
                child.kill()
            child.wait()
    return out


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags of a run (not a child), or None."""
    if not 1 <= args.clients <= 1000:
        return f"--clients must be 1 to 1000, got {args.clients}"
    if not 1 <= args.procs <= args.clients:
        return f"--procs must be 1 to --clients ({args.clients}), got {args.procs}"
    if args.rounds < 1:
        return f"--rounds must be at least 1, got {args.rounds}"
    if not 0 < args.fraction <= 1:  # also refuses nan
        return (
            f"--fraction is a share of the fleet, greater than 0 and at most 1; got {args.fraction}"
        )
    for flag, value in (
        ("--idle", args.idle),
        ("--heartbeat", args.heartbeat),
        ("--deadline", args.deadline),
    ):
        if not 0 < value < float("inf"):
            return f"{flag} must be a number of seconds greater than 0, got {value}"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags; a run's are refused, naming the flag, when they measure nothing."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=300)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--idle", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--heartbeat", type=float, default=5.0)
    p.add_argument("--deadline", type=float, default=300.0, help="Seconds a phase may take.")
    p.add_argument("--child", choices=["server", "clients"])
    p.add_argument("--port-file", default="")
    p.add_argument("--log", default="")
    p.add_argument("--run-dir", default="")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=0)
    args = p.parse_args(argv)
    if args.child is None and (problem := check_args(args)) is not None:
        p.error(problem)
    return args


def main() -> None:
    args = parse_args()
    if args.child == "server":
        serve_child(args)
        return
    if args.child == "clients":
        clients_child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "idle").mkdir()
        (Path(tmp) / "rounds").mkdir()
        idle = phase(args, Path(tmp) / "idle", 0)
        rounds = phase(args, Path(tmp) / "rounds", args.rounds)
    rounds["per_round_ms"] = 1000 * rounds["rounds_s"] / args.rounds
    rounds["log_lines_per_round"] = rounds["log_lines_not_join_leave"] / args.rounds
    print(
        json.dumps(
            {
                "clients": args.clients,
                "procs": args.procs,
                "idle": idle,
                "rounds": rounds,
                "fraction": args.fraction,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
