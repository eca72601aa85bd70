"""The machine under a benchmark: how busy its CPUs are, its CPU model, a quiet environment.

Shared by ``vs_flower.py`` and ``deploy_vs_flower.py``. The machine may be
shared with other work, so before each run the scripts wait until it is idle
and afterwards report the share of the CPUs other work used meanwhile.
"""

from __future__ import annotations

import compileall
import importlib.util
import platform
import sys
import time
from pathlib import Path

__all__ = [
    "RUNNER_ENV",
    "compile_sources",
    "cpu_model",
    "cpu_times",
    "machine_busy",
    "wait_until_idle",
]

RUNNER_ENV = {
    # Nothing is sent off this machine: no telemetry, update checks or usage stats.
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs that was busy over the next ``seconds`` (0..1)."""
    b0, t0 = cpu_times()
    time.sleep(seconds)
    b1, t1 = cpu_times()
    return (b1 - b0) / max(1, t1 - t0)


def wait_until_idle(threshold: float, max_wait: float) -> tuple[float, float]:
    """Wait (up to ``max_wait`` s) until the machine is busy below ``threshold``.

    Returns:
        ``(busy share last measured, seconds waited)``.
    """
    t0 = time.monotonic()
    busy = machine_busy()
    while busy >= threshold and time.monotonic() - t0 < max_wait:
        busy = machine_busy(2.0)
    return busy, time.monotonic() - t0


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what the platform module knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def compile_sources() -> str:
    """Compile covey's package and the benchmark scripts to bytecode now; say what was done.

    covey is installed editable (``pip install -e``), so its modules are
    compiled on first import and cached in ``__pycache__``; an installed
    wheel (Flower's here) was compiled when pip installed it. Where
    ``PYTHONDONTWRITEBYTECODE`` is set nothing is cached, and every runner
    process would compile covey's source again while being timed (0.1-0.2 s
    of a simulation's start). Compiling up front gives every system cached
    bytecode, as a regular install has.
    """
    spec = importlib.util.find_spec("covey")
    dirs = [Path(__file__).resolve().parent]
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) for p in spec.submodule_search_locations]
    ok = all(compileall.compile_dir(str(d), quiet=1, workers=1) for d in dirs)
    flag = "set" if sys.flags.dont_write_bytecode else "unset"
    return f"compiled up front{'' if ok else ' (with errors)'}; PYTHONDONTWRITEBYTECODE {flag}"
