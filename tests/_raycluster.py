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

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ports() -> list[str]:
    lo = free_port()
    # A block of worker ports near a free one; Ray checks them as it uses them.
    lo = max(20000, min(lo, 60000))
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
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
        self.address = f"127.0.0.1:{self.port}"
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

    def _start(self, args: list[str], env: dict[str, str]) -> None:
        common = [
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            *_ports(),
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
                    f"--ray-client-server-port={free_port()}",
                    "--include-dashboard=false",
                    f"--dashboard-port={free_port()}",
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
        """Every live process of this cluster: those naming its temp dir, and descendants."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                cmdline = proc.info["cmdline"] or []
                if any(self.temp_dir in part for part in cmdline):
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
