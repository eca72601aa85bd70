"""Plumbing shared by the three runners (stdlib and NumPy only).

Every runner is started by ``vs_flower.py`` in a fresh interpreter, runs one
workload once, and writes a JSON report (timestamps, evaluation history,
versions) and an ``.npz`` of its final weights. Timestamps are wall-clock
(``time.time()``) so that the parent can line them up with its memory samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import _workload as wl
import numpy as np


def parse_args(description: str, *, backend: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workload", choices=["digits", "large"], default="digits")
    parser.add_argument("--n", type=int, default=10, help="number of clients")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True, help="JSON report path")
    parser.add_argument("--weights", type=Path, required=True, help="final weights (.npz)")
    if backend:
        parser.add_argument("--backend", default="inline")
        parser.add_argument(
            "--large-client", choices=["standard", "inplace", "fresh"], default="standard"
        )
    args = parser.parse_args()
    for flag, value in (("--n", args.n), ("--rounds", args.rounds)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    return args


class Recorder:
    """Records the time of every central evaluation (round 0 and after each round)."""

    def __init__(self, workload: str) -> None:
        self.workload = workload
        self.eval_times: list[float] = []
        self.history: list[dict[str, float]] = []

    def evaluate(self, rnd: int, weights: Mapping[str, np.ndarray]) -> tuple[float, float]:
        """Evaluate (digits) or just time-stamp (large); returns ``(loss, accuracy)``."""
        if self.workload == "digits":
            loss, acc = wl.evaluate(np.asarray(weights["W"]), np.asarray(weights["b"]))
        else:
            loss, acc = 0.0, 0.0
        self.eval_times.append(time.time())
        self.history.append({"round": rnd, "loss": loss, "accuracy": acc})
        return loss, acc


def blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - sklearn brings it
        return []
    keep = ("internal_api", "version", "architecture", "num_threads", "filepath")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()]


def own_pss_kb() -> int | None:
    """This process's PSS in kB (``/proc/self/smaps_rollup``), or None where there is none.

    Read by each runner just before its simulation starts: the baseline that the
    memory above it is counted from, taken at that moment and exactly (the
    orchestrator's sampler reads every 50 ms or more, and in a short start-up its
    last sample may fall in the middle of the imports).
    """
    try:
        with open("/proc/self/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def write_report(
    args: argparse.Namespace,
    *,
    system: str,
    t_start: float,
    t_imported: float,
    t_sim_start: float,
    t_sim_end: float,
    recorder: Recorder,
    weights: Mapping[str, np.ndarray],
    versions: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
    pss_at_sim_start_kb: int | None = None,
) -> None:
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    np.savez(args.weights, **arrays)
    final = recorder.history[-1] if recorder.history else {}
    report: dict[str, Any] = {
        "system": system,
        "workload": args.workload,
        "n_clients": args.n,
        "rounds": args.rounds,
        "pid": os.getpid(),
        "t_start": t_start,
        "t_imported": t_imported,
        "t_sim_start": t_sim_start,
        "t_sim_end": t_sim_end,
        "sim_seconds": t_sim_end - t_sim_start,
        "pss_at_sim_start_kb": pss_at_sim_start_kb,
        "eval_times": recorder.eval_times,
        "round_seconds": list(np.diff(recorder.eval_times).tolist()),
        "history": recorder.history,
        "final_accuracy": final.get("accuracy"),
        "final_loss": final.get("loss"),
        "weights_path": str(args.weights),
        "weights_shapes": {k: list(v.shape) for k, v in arrays.items()},
        "weights_dtypes": {k: str(v.dtype) for k, v in arrays.items()},
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "numpy": np.__version__,
        "versions": dict(versions),
        "blas": blas_info(),
        "env": {
            k: os.environ.get(k)
            for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")
        },
    }
    if extra:
        report.update(extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
