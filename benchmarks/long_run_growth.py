"""What grows, per round, over a long ``covey.simulate`` run: memory, descriptors, files, time.

A tiny model (100 float32 weights) and clients that add to it, so that what is
measured is covey's own bookkeeping, not training. Every tenth of the run the
driver records: its RSS, its open file descriptors (``/proc/self/fd``), its
threads, the shared-memory segments it owns in ``/dev/shm``, the files it
left in its temporary folder, the size of the run folder (``--run-dir``) and
the seconds so far; at the end, the same after the backend has stopped (what
it left behind) and the pickled size of the history. Growth per round is the
slope between the first tenth and the last sample taken during the run: a
leak shows as descriptors, threads, segments or files that grow with the
rounds, a quadratic cost as a round time that grows. The temporary folder is
shared with other programs: give the run a ``TMPDIR`` of its own to count
only its files.

Example::

    .venv/bin/python benchmarks/long_run_growth.py --backend inline --rounds 2000 --clients 20
    .venv/bin/python benchmarks/long_run_growth.py --backend process --run-dir /tmp/run-a
    .venv/bin/python benchmarks/long_run_growth.py --rounds 10000 --clients 2 \
        --run-dir /tmp/run-b --resume 3

``--resume N`` then resumes the run in ``--run-dir`` for N more rounds and prints
the seconds that took (reading the run back, its rounds, its end).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import covey
from covey.sim import SimulationResult

SHM = Path("/dev/shm")  # noqa: S108 - only listed: the segments the process backend made


class Adder(covey.Client):
    """Adds a little to every weight; evaluates to a constant loss."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 0.001 for k, v in weights.items()}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=0.1, num_examples=1)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _count(folder: str | Path, prefix: str = "") -> int:
    return sum(1 for name in os.listdir(folder) if name.startswith(prefix))


def _size(folder: Path | None) -> int:
    if folder is None or not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inline", choices=["inline", "process"])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fraction-evaluate", type=float, default=0.0)
    parser.add_argument("--run-dir", type=Path, default=None, help="a folder that must not exist")
    parser.add_argument(
        "--resume", type=int, default=0, metavar="N", help="then resume it for N more rounds"
    )
    args = parser.parse_args()

    shm = f"covey-{os.getpid()}-"  # the segments this driver's process backend names
    tmp = tempfile.gettempdir()
    tmp_before = _count(tmp)
    samples: list[dict[str, Any]] = []
    start = time.perf_counter()

    def sample(r: int) -> dict[str, Any]:
        return {
            "round": r,
            "seconds": round(time.perf_counter() - start, 2),
            "rss_mb": round(_rss_mb(), 1),
            "fds": _count("/proc/self/fd"),
            "threads": threading.active_count(),
            "shm": _count(SHM, shm) if os.path.isdir(SHM) else 0,
            "tmp_files": _count(tmp) - tmp_before,
            "run_dir_kb": _size(args.run_dir) // 1024,
        }

    step = max(1, args.rounds // 10)

    def on_round(record: covey.core.RoundRecord) -> None:
        if record.round % step == 0:
            samples.append(sample(record.round))
            print(json.dumps(samples[-1]), flush=True)

    def run(rounds: int, **more: Any) -> SimulationResult:
        return covey.simulate(
            lambda cid: Adder(),
            args.clients,
            rounds,
            covey.FedAvg(fraction_fit=1.0, fraction_evaluate=args.fraction_evaluate),
            {"w": np.zeros(100, np.float32)},
            backend=args.backend,
            num_workers=args.workers if args.backend == "process" else None,
            run_dir=args.run_dir,
            **more,
        )

    result = run(args.rounds, on_round=on_round)
    end = sample(args.rounds)
    print("after the run:", json.dumps(end))
    first = next((s for s in samples if s["round"] >= step), samples[0])
    last = samples[-1]  # the last one taken during the run, the backend still up
    rounds = max(1, last["round"] - first["round"])
    per_round = {
        key: (last[key] - first[key]) / rounds
        for key in ("rss_mb", "fds", "threads", "shm", "tmp_files", "run_dir_kb")
    }
    per_round["rss_kb"] = per_round.pop("rss_mb") * 1024
    halves = [s["seconds"] for s in samples]
    print("growth per round:", json.dumps({k: round(v, 4) for k, v in per_round.items()}))
    if len(halves) >= 3:
        early = (halves[1] - halves[0]) / step
        late = (halves[-1] - halves[-2]) / step
        print(f"seconds per round: {early * 1e3:.2f} ms early, {late * 1e3:.2f} ms late")
    print(f"history: {len(result.history.rounds)} rounds, {len(pickle.dumps(result.history))} B")
    if args.resume and args.run_dir is not None:
        began = time.perf_counter()
        resumed = run(args.rounds + args.resume, resume=True)
        seconds = time.perf_counter() - began
        print(f"resumed for {args.resume} rounds: {seconds:.2f} s", end=" ")
        print(f"({len(resumed.history.rounds)} rounds in its history)")


if __name__ == "__main__":
    main()
