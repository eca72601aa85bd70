"""A network partition: server and clients in two network namespaces joined by a veth pair.

The test creates both namespaces and the link (root only), takes the link down
in the middle of a round and brings it back: the round ends at its deadline with
the missing replies recorded, the clients reconnect, and the run finishes. The
link is private to the two namespaces; nothing leaves this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _killmatrix import saved_round, wait_for
from covey.server._store import RunStore

APPS = Path(__file__).parent / "apps"
SERVER_IP, CLIENT_IP = "10.231.77.1", "10.231.77.2"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def _namespaces() -> tuple[str, str, str]:
    """Create the two namespaces and the veth pair; skip with the reason if that fails."""
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    tag = str(os.getpid())
    server, client, veth = f"covey-s{tag}", f"covey-c{tag}", f"cv{tag}"
    made = _ip("netns", "add", server)
    if made.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {made.stderr.strip()}")
    steps = [
        ("netns", "add", client),
        ("link", "add", f"{veth}s", "type", "veth", "peer", "name", f"{veth}c"),
        ("link", "set", f"{veth}s", "netns", server),
        ("link", "set", f"{veth}c", "netns", client),
        ("-n", server, "addr", "add", f"{SERVER_IP}/30", "dev", f"{veth}s"),
        ("-n", client, "addr", "add", f"{CLIENT_IP}/30", "dev", f"{veth}c"),
        ("-n", server, "link", "set", f"{veth}s", "up"),
        ("-n", client, "link", "set", f"{veth}c", "up"),
        ("-n", server, "link", "set", "lo", "up"),
        ("-n", client, "link", "set", "lo", "up"),
    ]
    for step in steps:
        done = _ip(*step)
        if done.returncode != 0:
            _ip("netns", "del", server)
            _ip("netns", "del", client)
            pytest.skip(f"cannot set up the veth link ({' '.join(step)}): {done.stderr.strip()}")
    return server, client, veth


def test_a_partition_mid_round_times_out_and_the_run_finishes(tmp_path: Path) -> None:
    server_ns, client_ns, veth = _namespaces()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), env.get("PYTHONPATH", "")])
    env["COVEY_TINY_CLIENTS"] = "3"
    env["COVEY_TINY_DELAY"] = "1.0"
    procs: list[subprocess.Popen[bytes]] = []
    run_dir = tmp_path / "run"

    def spawn(ns: str, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "covey", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        procs.append(proc)
        return proc

    try:
        port_file = tmp_path / "port"
        server = spawn(
            server_ns,
            [
                *("server", "--app", "tiny_app:server_app", "--insecure", "--rounds", "6"),
                *("--address", f"{SERVER_IP}:0", "--port-file", str(port_file)),
                *("--heartbeat", "0.5", "--round-timeout", "4", "--wait-timeout", "90"),
                *("--run-dir", str(run_dir)),
            ],
            "server.log",
        )
        wait_for(lambda: port_file.exists() or server.poll() is not None, 60, "the server")
        port = int(port_file.read_text())
        # Two clients across the link, one next to the server: the round cut by the
        # partition still has a reply to aggregate.
        clients = [
            spawn(
                client_ns if k < 2 else server_ns,
                [
                    *("client", "--app", "tiny_app:client_fn", "--cid", str(k), "--insecure"),
                    *("--name", f"c{k}", "--server", f"{SERVER_IP}:{port}", "--retry-for", "90"),
                ],
                f"client-{k}.log",
            )
            for k in range(3)
        ]
        wait_for(lambda: saved_round(run_dir) >= 2, 90, "round 2")
        time.sleep(0.3)  # round 3 is under way: its clients are fitting
        assert _ip("-n", server_ns, "link", "set", f"{veth}s", "down").returncode == 0
        down = time.monotonic()

        def seen_on_both_sides() -> bool:
            """Round 3 is over without them, and both cut-off clients gave up on the server."""
            logs = [(tmp_path / f"client-{k}.log").read_text() for k in range(2)]
            cut = all("no word from the server" in log for log in logs)
            return saved_round(run_dir) >= 3 and cut

        # Up once the 3 s heartbeat silence has ended round 3 and both sessions; never
        # later than 6 s (past the round's 4 s deadline and the silence either way).
        wait_for(lambda: seen_on_both_sides() or time.monotonic() - down > 6.0, 30, "the cut")
        assert _ip("-n", server_ns, "link", "set", f"{veth}s", "up").returncode == 0
        assert server.wait(120) == 0, (tmp_path / "server.log").read_text()[-3000:]
        outputs = []
        for k, proc in enumerate(clients):
            assert proc.wait(60) == 0, (tmp_path / f"client-{k}.log").read_text()[-3000:]
            outputs.append((tmp_path / f"client-{k}.log").read_text())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        _ip("netns", "del", server_ns)
        _ip("netns", "del", client_ns)
    with RunStore.open(run_dir) as store:
        history = store.history()
    assert [r.round for r in history.rounds] == list(range(7))
    timed_out = [r.round for r in history.rounds if r.fit_failures]
    assert timed_out, "no round recorded the partition"
    assert history.rounds[-1].aggregated
    assert all("session(s)" in out for out in outputs)
    assert any(" 1 session(s)" not in out for out in outputs[:2])  # a client reconnected
