"""A two-node Ray cluster on 127.0.0.1 for tests, started with ``ray start`` and stopped by PID.

``ray stop`` would stop every Ray process of this user (other runs included).
Nodes are started with ``--node-ip-address=127.0.0.1``; Ray itself registers a
multi-node cluster under this machine's own address, so all traffic stays on the host.
The cluster is stopped by killing exactly the process trees it started: every
process whose command line names this cluster's own temporary directory, and
their descendants (the Ray workers, whose titles no longer show it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil

from _ports import unused_port

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    """A port for one of Ray's servers, which ``ray start`` binds later (see :mod:`_ports`)."""
    return unused_port()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_block(taken: list[int], size: int = 200) -> int:
    """The first port of ``size`` ports below the kernel's ephemeral range, all free now.

    The other ports come from ``free_port()``, i.e. from below 20000 (:mod:`_ports`), so
    the two can never overlap (Ray refuses to start when they do).
    """
    top = _ephemeral_low() - size
    rng = secrets.SystemRandom()
    for _ in range(50):
        lo = rng.randrange(20000, max(20001, top))
        if any(abs(lo - other) <= size for other in taken):
            continue
        try:
            for port in range(lo, lo + size + 1, 25):
                with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        taken.append(lo)
        return lo
    raise RuntimeError("no free block of Ray worker ports below the ephemeral range")


def _ports(taken: list[int], singles: set[int]) -> list[str]:
    """Ray's per-node ports: six distinct single ports and one block for its workers."""
    mine: set[int] = set()
    while len(mine) < 6:
        port = free_port()
        if port not in singles:
            mine.add(port)
    singles |= mine
    lo = _worker_block(taken)
    names = [
        "node-manager",
        "object-manager",
        "runtime-env-agent",
        "dashboard-agent-grpc",
        "dashboard-agent-listen",
        "metrics-export",
    ]
    return [
        *(f"--{name}-port={port}" for name, port in zip(names, sorted(mine), strict=True)),
        f"--min-worker-port={lo}",
        f"--max-worker-port={lo + 200}",
    ]


class LocalRayCluster:
    """A Ray head and one worker node on 127.0.0.1, each its own ``ray start``.

    Args:
        head_cpus: Logical CPUs of the head node.
        worker_cpus: Logical CPUs of the worker node.
        worker_resources: Custom resources only the worker node has.
        timeout: Seconds each ``ray start`` may take.
    """

    def __init__(
        self,
        head_cpus: int = 1,
        worker_cpus: int = 1,
        worker_resources: dict[str, float] | None = None,
        timeout: float = 180.0,
    ) -> None:
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.worker_resources = worker_resources or {}
        self.timeout = timeout
        # Short: Ray's socket paths live under it and must stay below ~100 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="cvr", dir="/tmp")
        self.port = free_port()
        # Ports already handed out to this cluster, so no two of its components share one.
        self._singles: set[int] = {self.port}
        self._blocks: list[int] = []
        self.address = f"127.0.0.1:{self.port}"
        self.client_port = self._single()  # the head's Ray Client server (ray://)
        # Its own token: the default one in ~/.ray is shared with every Ray of this user.
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env = {
            **os.environ,
            **self.auth,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }

    def _single(self) -> int:
        while (port := free_port()) in self._singles:
            pass
        self._singles.add(port)
        return port

    def _start(self, args: list[str], env: dict[str, str]) -> None:
        common = [
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            *_ports(self._blocks, self._singles),
        ]
        out = subprocess.run(
            [RAY, "start", *args, *common],
            env=env,
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")

    def start(self) -> LocalRayCluster:
        """Start the head, then the worker node."""
        try:
            self._start(
                [
                    "--head",
                    f"--port={self.port}",
                    f"--ray-client-server-port={self.client_port}",
                    "--include-dashboard=false",
                    f"--dashboard-port={self._single()}",
                    f"--num-cpus={self.head_cpus}",
                    "--num-gpus=0",
                ],
                self.env,
            )
            self._start(
                [
                    f"--address={self.address}",
                    f"--num-cpus={self.worker_cpus}",
                    "--num-gpus=0",
                    f"--resources={json.dumps(self.worker_resources)}",
                ],
                self.env,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster (naming its temp dir or GCS port) and descendants."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                cmdline = proc.info["cmdline"] or []
                # The client-server proxy names neither: it names the head's GCS port.
                gcs = f":{self.port}"
                if any(
                    self.temp_dir in part or (part.startswith("--address=") and part.endswith(gcs))
                    for part in cmdline
                ):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        """Kill this cluster's processes (TERM, then KILL), then remove its temp dir."""
        procs = self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                try:
                    proc.send_signal(sig)
                except psutil.NoSuchProcess:
                    continue
            _, procs = psutil.wait_procs(procs, timeout=3)
            if not procs:
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        """Start the cluster; this process (a driver) gets its token until exit."""
        self._saved = {k: os.environ.get(k) for k in self.auth}
        os.environ.update(self.auth)
        try:
            return self.start()
        except BaseException:
            self._restore()
            raise

    def _restore(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if "ray._raylet" in sys.modules:
            # Ray keeps the token it read: a local Ray started later in this process
            # would be refused with this cluster's token (and leave its GCS running).
            from ray._private.authentication_test_utils import reset_auth_token_state

            reset_auth_token_state()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop()
        finally:
            self._restore()


def wait_gone(cluster: LocalRayCluster, seconds: float = 10.0) -> bool:
    """Whether all of ``cluster``'s processes are gone within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not cluster.processes():
            return True
        time.sleep(0.2)
    return False
