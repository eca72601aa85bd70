"""How ``deploy_vs_flower.py`` launches a system's processes, waits on them and stops them.

A :class:`Run` starts every process of one system in one process group (and
records each one's role for the memory sampler), runs set-up tools outside
the measurement, and stops the group and every descendant at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _proctree as pt
from _deploy_measure import DeploySampler
from _machine import RUNNER_ENV

__all__ = [
    "COVEY_BIN",
    "HERE",
    "QUIET_ENV",
    "Run",
    "Spec",
    "bench_env",
    "free_ports",
    "read_times",
    "wait_for",
    "watch",
]

HERE = Path(__file__).resolve().parent
COVEY_BIN = Path(sys.executable).parent
QUIET_ENV = RUNNER_ENV


@dataclass
class Spec:
    """One run: a part (digits, big, huge), a system, N clients, R rounds."""

    part: str  # digits | big | huge
    system: str
    n: int
    rounds: int
    elements: int = 0

    @property
    def tag(self) -> str:
        """The run's name in file and folder names."""
        return f"{self.part}-n{self.n}-{self.system}"


@dataclass
class Run:
    """The processes of one run: launched into one process group, stopped together."""

    spec: Spec
    args: argparse.Namespace
    log_dir: Path
    work: Path
    procs: list[tuple[str, str, subprocess.Popen[bytes]]] = field(default_factory=list)
    roles: dict[int, str] = field(default_factory=dict)
    pgid: int = 0
    logs: list[Any] = field(default_factory=list)

    def launch(
        self, name: str, role: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start one process of this system, in the system's own process group."""
        log = (self.log_dir / f"{name}.log").open("wb")
        self.logs.append(log)
        proc = subprocess.Popen(
            cmd,
            cwd=cwd or self.work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=self.pgid,  # 0 for the first: a new group led by it
        )
        if not self.pgid:
            self.pgid = proc.pid
        self.roles[proc.pid] = role
        self.procs.append((name, role, proc))
        return proc

    def run_tool(self, cmd: list[str], env: dict[str, str], timeout: float = 120.0) -> None:
        """A set-up command (certificates), outside the measured processes."""
        out = subprocess.run(
            cmd,
            cwd=self.work,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(cmd)} failed ({out.returncode}): {out.stderr.decode()[-500:]}"
            )

    def stop_all(self) -> list[str]:
        """SIGTERM the process group and every descendant, SIGKILL what remains."""
        if self.pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGTERM)
        names = pt.kill_tree(None, grace=5.0)
        if self.pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
        for _, _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        pt.reap_zombies()
        for log in self.logs:
            log.close()
        return names


def free_ports(count: int) -> list[int]:
    """``count`` free TCP ports on 127.0.0.1."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(cond: Any, timeout: float, alive: Any = None, step: float = 0.1) -> bool:
    """Poll ``cond`` until true, ``timeout`` passes or ``alive()`` is false; return ``cond``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if alive is not None and not alive():
            return False
        time.sleep(step)
    return bool(cond())


def read_times(path: Path) -> dict[str, Any]:
    """The JSON a run's app wrote (evaluation time stamps, ...), or {} if none yet."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def bench_env(spec: Spec, times: Path) -> dict[str, str]:
    """The environment of a run's processes: quiet, the bench folder importable, the workload."""
    return {
        **os.environ,
        **QUIET_ENV,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        "COVEY_BENCH_WORKLOAD": "digits" if spec.part == "digits" else "big",
        "COVEY_BENCH_N": str(spec.n),
        "COVEY_BENCH_ROUNDS": str(spec.rounds),
        "COVEY_BENCH_ELEMENTS": str(spec.elements),
        "COVEY_BENCH_TIMES": str(times),
        "COVEY_BENCH_INPLACE": "1" if spec.system == "covey-inplace" else "",
    }


def watch(run: Run, sampler: DeploySampler, deadline: float, done: Any, alive: Any) -> str:
    """Wait until ``done()``; return "ok", "timeout", "memory" or "died".

    ``done`` is polled every 0.1 s, ``alive`` (which may list processes) every 1 s.
    """
    next_alive = time.monotonic() + 1.0
    while True:
        if done():
            return "ok"
        if sampler.memory_alarm:
            return "memory"
        if time.monotonic() >= next_alive:
            next_alive = time.monotonic() + 1.0
            if not alive():
                time.sleep(0.5)  # a last write may be on its way
                return "ok" if done() else "died"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.1)
