"""Kill a real `covey server` at chosen moments, resume it, and compare with a run never killed.

A :class:`Federation` starts one server process and its client processes (the
``resume_app`` app, without TLS, on 127.0.0.1), tracks them, and kills only
what it started. :func:`outcome` reads a finished run's final weights and the
parts of its history that must not depend on interruptions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from _childenv import child_pythonpath
from _procs import CoveyProcesses
from covey.server._store import RunStore

APPS = Path(__file__).parent / "apps"


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true, or fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _query(run_dir: Path, sql: str) -> list[Any]:
    db = run_dir / "run.sqlite"
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:  # created but not yet initialised
        return []


def saved_round(run_dir: Path) -> int:
    """The last round committed in ``run_dir`` (-1 before any)."""
    rows = _query(run_dir, "SELECT MAX(round) FROM rounds")
    return -1 if not rows or rows[0][0] is None else int(rows[0][0])


def registered(run_dir: Path) -> int:
    """How many client names the run has given an id."""
    rows = _query(run_dir, "SELECT COUNT(*) FROM clients")
    return int(rows[0][0]) if rows else 0


class Federation(CoveyProcesses):
    """One run folder, its server process (one at a time) and its client processes."""

    def __init__(self, tmp: Path, strategy: str, env: dict[str, str] | None = None) -> None:
        env = env or {}
        clients = int(env.get("COVEY_RM_CLIENTS", "4"))
        tmp.mkdir(parents=True, exist_ok=True)
        self.run_dir = tmp / "run"
        self.markers = tmp / "markers"
        self.markers.mkdir(exist_ok=True)
        self.n = clients
        environ = dict(os.environ)
        environ["PYTHONPATH"] = child_pythonpath(APPS)
        environ.update(
            {
                "COVEY_RM_STRATEGY": strategy,
                "COVEY_RM_CLIENTS": str(clients),
                "COVEY_RM_MARKERS": str(self.markers),
                **env,
            }
        )
        super().__init__(tmp, environ)
        self.clients: dict[int, subprocess.Popen[bytes]] = {}
        self.server: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start_server(self, *, resume: bool = False, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start (or resume) the server; wait until it listens unless ``wait`` is False."""
        port_file = self.tmp / "port"
        port_file.unlink(missing_ok=True)
        args = ["server", "--app", "resume_app:server_app", "--insecure"]
        args += ["--address", f"127.0.0.1:{self.port}", "--port-file", str(port_file)]
        args += ["--heartbeat", "1", "--wait-timeout", "60", "--round-timeout", "60"]
        args += ["--resume" if resume else "--run-dir", str(self.run_dir)]
        proc = self._spawn(args, "server.log")
        self.server = proc
        if wait:
            wait_for(lambda: port_file.exists() or proc.poll() is not None, 60, "the server")
            assert proc.poll() is None, self.log("server.log")[-3000:]
            self.port = int(port_file.read_text())
        return proc

    def start_client(self, k: int) -> subprocess.Popen[bytes]:
        """Start client ``k`` (named ``site-k``)."""
        args = ["client", "--app", "resume_app:client_fn", "--cid", str(k), "--insecure"]
        args += ["--server", f"127.0.0.1:{self.port}", "--name", f"site-{k}"]
        proc = self._spawn(args, f"client-{k}.log")
        self.clients[k] = proc
        return proc

    def start_clients(self) -> None:
        """Start every client, each once the one before it has an id (ids in a fixed order)."""
        for k in range(self.n):
            self.start_client(k)
            if registered(self.run_dir) <= k:
                wait_for(lambda k=k: registered(self.run_dir) > k, 60, f"site-{k} to join")

    def kill_server(self) -> None:
        """SIGKILL the server and reap it."""
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait(10)

    def marker(self, name: str) -> bool:
        """Whether a marker file ``name`` was dropped."""
        return (self.markers / name).exists()

    def finish(self, timeout: float = 60) -> None:
        """Wait for the server and every client to exit with status 0."""
        assert self.server is not None
        for proc, log in [(self.server, "server.log")] + [
            (p, f"client-{k}.log") for k, p in self.clients.items()
        ]:
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{log}: still running after {timeout} s\n{self.log('server.log')[-3000:]}"
                ) from None
            assert code == 0, f"{log} exited {code}\n{self.log(log)[-3000:]}"


_KEPT = (
    "round",
    "fit_participants",
    "fit_examples",
    "fit_metrics",
    "evaluate_participants",
    "evaluate_examples",
    "evaluate_loss",
    "evaluate_metrics",
    "central_loss",
    "central_metrics",
    "privacy",
    "bytes_sent",
    "bytes_received",
)


def outcome(run_dir: Path) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """A finished run's final weights and, per round, what must not depend on a kill."""
    with RunStore.open(run_dir) as store:
        assert store.status == "finished", store.status
        _, weights, _, _ = store.load_latest_valid()
        rounds = store.history().to_dict()["rounds"]
    kept = []
    for record in rounds:
        row = {key: record.get(key) for key in _KEPT}
        info = dict(record.get("aggregate_info") or {})
        row["aggregate_info"] = info
        row["failures"] = len(record.get("fit_failures") or [])
        kept.append(row)
    return dict(weights), kept


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Whether two models are equal bit for bit (names, dtypes, shapes, values)."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a
    )


def federations_in(tmp: Path, rounds: int) -> Iterator[Callable[..., Federation]]:
    """For a fixture: a maker of :class:`Federation` s of ``rounds`` rounds, all closed after.

    ``make(strategy, **env)`` starts nothing; it sets the folder and the app's environment.
    """
    made: list[Federation] = []

    def make(strategy: str, **env: str) -> Federation:
        fed = Federation(tmp / strategy, strategy, {"COVEY_RM_ROUNDS": str(rounds), **env})
        made.append(fed)
        return fed

    yield make
    for fed in made:
        fed.close()
