"""Soak: 20 client processes, 120 rounds, clients killed and restarted at random (seeded).

Every round completes or is recorded as failed with a reason, the server's
memory stays flat, and every process the test started has exited at the end.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from covey.server._store import RunStore

APPS = Path(__file__).parent / "apps"
CLIENTS = 20
ROUNDS = 120
KILLS = 25
SEED = 8

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _round(run_dir: Path) -> int:
    db = run_dir / "run.sqlite"
    if not db.exists():
        return -1
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT MAX(round) FROM rounds").fetchone()
    except sqlite3.Error:
        return -1
    return -1 if row is None or row[0] is None else int(row[0])


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(APPS), self.env.get("PYTHONPATH", "")])
        self.env["COVEY_TINY_CLIENTS"] = str(CLIENTS // 2)
        self.env["COVEY_TINY_DELAY"] = "0.02"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clients: dict[int, subprocess.Popen[bytes]] = {}
        self.port = 0

    def spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "covey", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
            )
        self.procs.append(proc)
        return proc

    def server(self) -> subprocess.Popen[bytes]:
        port_file = self.tmp / "port"
        proc = self.spawn(
            [
                *("server", "--app", "tiny_app:server_app", "--insecure"),
                *("--address", "127.0.0.1:0", "--port-file", str(port_file)),
                *("--rounds", str(ROUNDS), "--heartbeat", "0.5", "--round-timeout", "10"),
                *("--wait-timeout", "120", "--run-dir", str(self.tmp / "run")),
            ],
            "server.log",
        )
        deadline = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_file.exists(), (self.tmp / "server.log").read_text()
        self.port = int(port_file.read_text())
        return proc

    def client(self, k: int) -> None:
        self.clients[k] = self.spawn(
            [
                *("client", "--app", "tiny_app:client_fn", "--cid", str(k), "--insecure"),
                # The server listens all run long: only a client restarted as the run
                # ends must retry, and it exits after these bounded retries.
                *("--name", f"c{k}", "--server", f"127.0.0.1:{self.port}", "--retry-for", "5"),
            ],
            f"client-{k}.log",
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def test_soak_with_random_kills_and_restarts(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    fleet = Fleet(tmp_path)
    try:
        server = fleet.server()
        watch = psutil.Process(server.pid)
        for k in range(CLIENTS):
            fleet.client(k)
        rss: list[tuple[int, int]] = []  # (round, server RSS)
        kills = 0
        next_kill = time.monotonic() + rng.uniform(0.3, 1.2)
        while server.poll() is None:
            time.sleep(0.1)
            with contextlib.suppress(psutil.NoSuchProcess):
                rss.append((_round(tmp_path / "run"), watch.memory_info().rss))
            if kills < KILLS and time.monotonic() >= next_kill:
                k = rng.randrange(CLIENTS)
                fleet.clients[k].send_signal(signal.SIGKILL)
                fleet.clients[k].wait(10)
                time.sleep(rng.uniform(0.0, 0.5))
                fleet.client(k)
                kills += 1
                next_kill = time.monotonic() + rng.uniform(0.3, 1.2)
        assert server.wait(10) == 0, (tmp_path / "server.log").read_text()[-4000:]
        # Every client exits by itself: with the goodbye, or after its bounded retries.
        for k, proc in fleet.clients.items():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"client {k} was left behind") from None
    finally:
        fleet.close()
    with RunStore.open(tmp_path / "run") as store:
        history = store.history()
        status = store.status
    assert status == "finished"
    assert [r.round for r in history.rounds] == list(range(ROUNDS + 1))
    for record in history.rounds[1:]:
        assert record.aggregated or record.aggregate_info.get("error"), record.round
        for failure in record.fit_failures:
            assert failure.error, record.round
    early = [m for r, m in rss if 20 <= r <= 60]
    late = [m for r, m in rss if r >= ROUNDS - 40]
    growth = (sorted(late)[len(late) // 2] - sorted(early)[len(early) // 2]) / 2**20
    print(
        f"server RSS: median {sorted(early)[len(early) // 2] / 2**20:.1f} MiB at rounds 20-60, "
        f"growth {growth:+.1f} MiB by rounds {ROUNDS - 40}-{ROUNDS}; {kills} kills"
    )
    assert growth < 20, f"the server's memory grew by {growth:.1f} MiB"
    assert kills >= 5, f"only {kills} kills before the run ended"
    assert not [p for p in fleet.procs if p.poll() is None]
