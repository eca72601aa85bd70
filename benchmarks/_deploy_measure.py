"""What ``deploy_vs_flower.py`` measures: memory by process and role, round times, the machine.

:class:`DeploySampler` samples the PSS of every process of a system and keeps
each process's and each role's (server, client) peak; :func:`derive` and
:func:`memory_phases` turn the evaluation time stamps a run wrote into round
times, throughput, model copies and per-round memory; :func:`machine_info`
records what the runs ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _proctree as pt
from _machine import RUNNER_ENV, cpu_model

__all__ = [
    "MB",
    "DeploySampler",
    "ProcPeak",
    "derive",
    "machine_info",
    "mem_available_kb",
    "memory_phases",
    "start_kb",
    "wait_for_load",
]

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6


def _ppid(pid: int) -> int | None:
    """The parent pid of ``pid``, or None once it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def _cmdline(pid: int) -> str:
    """The command line of ``pid`` (program names without their folders)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(Path(a).name if i < 2 else a for i, a in enumerate(raw.decode().split("\0")))


def mem_available_kb() -> int:
    """The machine's MemAvailable, in kB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


@dataclass
class ProcPeak:
    """The peak PSS of one process and the role it plays."""

    role: str
    name: str
    cmd: str
    peak_kb: int = 0
    series: list[tuple[float, int]] = field(default_factory=list)  # (t, kB) at each tick


class DeploySampler(pt.TreeSampler):
    """:class:`_proctree.TreeSampler` that also keeps each process's and each role's peak.

    A process's role is that of the nearest launched ancestor (``roles``), else
    guessed from its command line, else "other" (looked up again on later ticks,
    since a process can be seen before its launch is recorded).
    A process's PSS at a tick is the tree sampler's exact read, or its estimate
    (last exact PSS plus the change in anonymous memory since).
    """

    def __init__(self, roles: dict[int, str], guard_kb: int, budget_kb: int, **kw: Any) -> None:
        """Sample with ``roles`` (pid -> role of launched processes) and the memory limits."""
        super().__init__(root_sid=None, **kw)
        self.roles = roles
        self.guard_kb = guard_kb
        self.budget_kb = budget_kb
        self.procs: dict[int, ProcPeak] = {}
        self.role_peak_kb: dict[str, int] = {}
        self.series: list[tuple[float, int, int]] = []  # (t, server kB, client kB)
        self.min_available_kb: int | None = None
        self.memory_alarm = ""

    def _role(self, pid: int) -> str:
        """The role of ``pid``: its nearest launched ancestor's, else a guess from its command."""
        cur: int | None = pid
        for _ in range(32):
            if cur is None or cur <= 1:
                break
            if cur in self.roles:
                return self.roles[cur]
            cur = _ppid(cur)
        cmd = _cmdline(pid)
        if any(k in cmd for k in ("superlink", "serverapp", "covey server", " send ")):
            return "server"
        if any(k in cmd for k in ("supernode", "clientapp", "covey client", " receive ")):
            return "client"
        return "other"

    def sample_once(self) -> pt.Sample:
        """One tick: the tree sample, plus per-process and per-role PSS and the memory alarms."""
        s = super().sample_once()
        sums: dict[str, int] = {}
        for pid in self._pids:
            entry = self._last_exact_kb.get(pid)
            statm = pt.statm_kb(pid)
            if entry is None or statm is None or statm[0] == 0:
                continue
            pss = max(0, entry[0] + statm[1] - entry[1])
            info = self.procs.get(pid)
            if info is None or info.role == "other":  # a launch may not be recorded yet
                cmd = _cmdline(pid)
                peak = info.peak_kb if info is not None else 0
                info = self.procs[pid] = ProcPeak(
                    self._role(pid),
                    cmd.split(" ")[1] if " " in cmd else cmd,
                    cmd[:200],
                    peak,
                    info.series if info is not None else [],
                )
            info.peak_kb = max(info.peak_kb, pss)
            info.series.append((s.t, pss))
            sums[info.role] = sums.get(info.role, 0) + pss
        for role, kb in sums.items():
            self.role_peak_kb[role] = max(self.role_peak_kb.get(role, 0), kb)
        self.series.append((s.t, sums.get("server", 0), sums.get("client", 0)))
        avail = mem_available_kb()
        if self.min_available_kb is None or avail < self.min_available_kb:
            self.min_available_kb = avail
        if avail < self.guard_kb:
            self.memory_alarm = f"MemAvailable fell below {self.guard_kb / 2**20:g} GiB"
        elif s.pss_kb > self.budget_kb:
            self.memory_alarm = f"its processes' PSS exceeded {self.budget_kb / 2**20:g} GiB"
        return s


def start_kb(series: list[tuple[float, int]], model_kb: float) -> int | None:
    """A process's PSS once started and before it held a model: the plateau before the jump.

    The highest sample before the first one more than a quarter of a model
    above the first sample (start-up imports grow by tens of MB; a model of
    hundreds arrives at once). None for a process that never held a model
    (or was first seen holding one): then nothing is said.
    """
    if not series or model_kb <= 0:
        return None
    first = series[0][1]
    plateau = first
    for _, kb in series:
        if kb > first + model_kb / 4:
            return plateau
        plateau = max(plateau, kb)
    return None


def memory_phases(out: dict[str, Any], series: list[tuple[float, int, int]]) -> None:
    """Server- and client-side PSS before round 1 and at their peak within each round.

    Keeps the series itself, thinned to at most 1500 points, in the JSON.
    """
    t = [e["t"] for e in out.get("evaluations", [])]
    mb = 1024 / MB
    if t:
        before = [p for p in series if p[0] <= t[0]]
        out["server_mb_at_round0"] = before[-1][1] * mb if before else None
    out["round_peak_server_mb"] = []
    out["round_peak_client_mb"] = []
    for a, b in itertools.pairwise(t):
        inside = [p for p in series if a <= p[0] <= b]
        for key, i in (("round_peak_server_mb", 1), ("round_peak_client_mb", 2)):
            out[key].append(max(p[i] for p in inside) * mb if inside else None)
    step = max(1, len(series) // 1500)
    t0 = out.get("t0", series[0][0] if series else 0.0)
    out["memory_series"] = [
        [round(p[0] - t0, 3), round(p[1] * mb), round(p[2] * mb)] for p in series[::step]
    ]


def derive(out: dict[str, Any], data: dict[str, Any], t_stop: float) -> None:
    """Round times, throughput and model copies from the evaluation time stamps."""
    evals = data.get("evaluations") or []
    t = [e["t"] for e in evals]
    out["evaluations"] = evals
    out["rounds_done"] = max(0, len(evals) - 1)
    out["round_seconds"] = [b - a for a, b in itertools.pairwise(t)]
    rs = out["round_seconds"]
    out["round1_seconds"] = rs[0] if rs else None
    steady = rs[1:] if len(rs) > 1 else rs
    out["round_median_seconds"] = statistics.median(steady) if steady else None
    durations = out.get("durations") or []
    totals = [d.get("total") for d in durations if d.get("total") is not None]
    fits = [d.get("fit") for d in durations if d.get("fit") is not None]
    out["history_total_seconds"] = totals
    out["history_fit_seconds"] = fits
    steady_h = totals[1:] if len(totals) > 1 else totals
    out["history_median_seconds"] = statistics.median(steady_h) if steady_h else None
    if "t0" in out:
        end = out.get("t_end", t_stop)
        out["wall_seconds"] = end - out["t0"]
        out["to_first_round_end_seconds"] = t[1] - out["t0"] if len(t) > 1 else None
    last = evals[-1] if evals else {}
    out["final_accuracy"] = last.get("accuracy") if out["rounds_done"] else None
    out["final_max_error"] = last.get("max_error") if out["rounds_done"] else None
    if out["part"] in ("big", "huge"):
        model = out["elements"] * 4
        moved = 2 * out["n"] * model
        out["model_bytes"] = model
        out["bytes_per_round"] = moved
        out["gbps_per_round"] = [moved / s / 1e9 for s in rs if s > 0]
        out["gbps_fit_per_round"] = [moved / s / 1e9 for s in fits if s > 0]
        out["copies"] = {
            r: v["pss_mb"] * MB / model for r, v in out.get("max_process_pss_mb", {}).items()
        }
        # What a process adds past its start-up plateau (see start_kb) is the model's.
        out["copies_above_start"] = {
            r: (v["pss_mb"] - v["before_round1_mb"]) * MB / model
            for r, v in out.get("max_process_pss_mb", {}).items()
            if v.get("before_round1_mb") is not None
        }


def source_digest() -> dict[str, Any]:
    """SHA-256 over covey's source files and the newest modification time (no git here)."""
    import hashlib

    files = sorted((ROOT / "src" / "covey").rglob("*.py"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(ROOT).as_posix().encode())
        digest.update(f.read_bytes())
    newest = max((f.stat().st_mtime for f in files), default=0.0)
    return {
        "sha256": digest.hexdigest()[:16],
        "files": len(files),
        "newest_mtime": dt.datetime.fromtimestamp(newest).isoformat(timespec="seconds"),
    }


def first_touch() -> dict[str, float]:
    """GB/s of writing 1 GB of new memory: after 5 s idle, and again at once.

    On a VM that hands freed guest memory back to the host (free page
    reporting), touching it again is much slower than touching resident memory;
    every system here allocates model-sized buffers, so this sets a floor.
    """
    import numpy as np

    out: dict[str, float] = {}
    time.sleep(5)
    for label in ("after_idle_gbps", "again_gbps"):
        t0 = time.perf_counter()
        a = np.ones(1 << 28, dtype=np.float32)
        out[label] = a.nbytes / (time.perf_counter() - t0) / 1e9
        del a
    return out


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    """The machine, the package versions and covey's source, for the report."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "mem_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    from importlib.metadata import version

    for pkg in ("covey", "grpcio", "numpy", "protobuf"):
        with contextlib.suppress(Exception):
            info[pkg] = version(pkg)
    info["covey_source"] = source_digest()
    info["memory_first_touch"] = first_touch()
    fpy = args.flower_bin / "python"
    if fpy.exists():
        with contextlib.suppress(Exception):
            info["flwr"] = subprocess.run(
                [str(fpy), "-c", "import flwr; print(flwr.__version__)"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, **RUNNER_ENV},
                check=False,
            ).stdout.strip()
    return info


def wait_for_load(below: float, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until the 1-minute load average is below ``below``."""
    t0 = time.monotonic()
    while os.getloadavg()[0] >= below and time.monotonic() - t0 < max_wait:
        time.sleep(10)
    return os.getloadavg()[0]
