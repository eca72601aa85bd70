"""Server memory and honest clients' time under hostile peers: a real ``covey server`` attacked.

Starts ``covey server --insecure`` on 127.0.0.1 with a float32 model of
``--mb`` MB (FedAvg, every client sampled, ``--round-timeout 6``), then the
attacks named on the command line, each in its own process speaking the wire
by hand with grpcio, then two honest ``connect`` clients; it samples the
server's resident memory every 0.2 s and prints the peak, with how long the
honest clients took and how many tasks they did.

Attacks:
    park: 1000 streams that never send Hello, each reopened when the server ends it.
    stall: 40 clients that take a task, declare the largest reply allowed, send
        one 2 MiB chunk, then only heartbeats.
    empty: 4 clients that take a task, declare the largest reply, then send
        empty chunk frames as fast as they can.

    .venv/bin/python benchmarks/hostile_peers.py park stall empty
    PYTHONPATH=/tmp/base/src .venv/bin/python benchmarks/hostile_peers.py stall empty
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

import covey
from covey.transport.grpc._client import connect
from covey.transport.grpc._frames import CHUNK_TAG, PROTOCOL, control, is_chunk, server_message
from covey.transport.grpc._options import METHOD
from covey.transport.grpc.proto import covey_pb2 as pb

APP = """
import os
import numpy as np
import covey
from covey.deploy import ServerApp

def server_app():
    size = int(float(os.environ["HOSTILE_MB"]) * 2**20) // 4
    return ServerApp(
        strategy=covey.FedAvg(fraction_fit=1.0, min_fit_clients=2,
                              min_available_clients=int(os.environ["HOSTILE_CLIENTS"]),
                              fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(size, dtype=np.float32)},
        rounds=int(os.environ["HOSTILE_ROUNDS"]),
    )
"""
FIT = b'{"type":"fit","form":"weights","num_examples":1,"metrics":{}}'
HOLD = 60.0  # seconds each attack goes on
SIZES = {"stall": 40, "empty": 4}


class Plus(covey.Client):
    """Adds one to every weight."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


class Raw:
    """A hand-driven client stream: frames out through a queue, control messages in."""

    def __init__(self, port: int, name: str) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.out: queue.Queue[bytes | None] = queue.Queue()
        hello = pb.Hello(version=covey.__version__, name=name, kinds=["fit"], protocol=PROTOCOL)
        self.send(hello=hello)
        self.call = self.channel.stream_stream(METHOD)(self._requests())

    def _requests(self) -> Iterator[bytes]:
        while (frame := self.out.get()) is not None:
            yield frame

    def send(self, **body: Any) -> None:
        self.out.put(control(pb.ClientMessage(**body)))

    def task(self) -> pb.TaskHeader | None:
        try:
            for frame in self.call:
                if not is_chunk(frame) and server_message(frame).WhichOneof("body") == "task":
                    return server_message(frame).task
        except grpc.RpcError:
            pass
        return None


def _hoard(port: int, name: str, mode: str) -> None:
    """One hostile client: take a task, declare the largest reply, then stall or send nothing."""
    raw = Raw(port, name)
    got = threading.Event()

    def beat() -> None:
        while not got.is_set():
            raw.send(heartbeat=pb.Heartbeat())
            time.sleep(0.3)

    threading.Thread(target=beat, daemon=True).start()
    task = raw.task()
    got.set()
    if task is None:
        return
    threading.Thread(target=lambda: [None for _ in raw.call], daemon=True).start()
    size = 2 * task.weights_size + 1024 * 1024  # the server's limit for one reply
    raw.send(reply=pb.ReplyHeader(task_id=task.task_id, kind="fit", result=FIT, weights_size=size))
    end = time.monotonic() + HOLD
    if mode == "stall":
        raw.out.put(CHUNK_TAG + bytes(2 * 1024 * 1024))
        while time.monotonic() < end:
            raw.send(heartbeat=pb.Heartbeat())
            time.sleep(0.3)
    else:
        while time.monotonic() < end:
            for _ in range(1000):
                raw.out.put(CHUNK_TAG)
            time.sleep(0.01)


def _park(port: int) -> None:
    """1000 streams that never send a frame, each reopened when the server ends it."""
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(10)]
    stop = threading.Event()

    def nothing() -> Iterator[bytes]:
        stop.wait()
        yield from ()

    def keep(k: int) -> None:
        while not stop.is_set():
            call = channels[k % 10].stream_stream(METHOD)(nothing())
            try:
                for _ in call:
                    pass
            except grpc.RpcError:
                pass

    for k in range(1000):
        threading.Thread(target=keep, args=(k,), daemon=True).start()
    time.sleep(HOLD)
    stop.set()


def _role(role: str, port: int) -> None:
    if role == "park":
        _park(port)
        return
    threads = [
        threading.Thread(target=_hoard, args=(port, f"{role}-{k}", role), daemon=True)
        for k in range(SIZES[role])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HOLD + 30)


def _honest(port: int, name: str, out: dict[str, Any]) -> None:
    start = time.monotonic()
    result = connect(Plus(), f"127.0.0.1:{port}", insecure=True, name=name, retry_for=300)
    out[name] = (time.monotonic() - start, result.tasks, result.sessions, result.reason)


def _listening(server: subprocess.Popen[bytes], port_file: Path, log: Path) -> int:
    """The server's port, once it listens; exit naming its log if it ends first."""
    end = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        if server.poll() is not None or time.monotonic() > end:
            if server.poll() is None:
                server.kill()
                server.wait()
            sys.exit(
                f"the server exited (status {server.returncode}) before it listened; log: {log}"
            )
        time.sleep(0.1)
    return int(port_file.read_text())


def _wait_honest(threads: list[threading.Thread], server: subprocess.Popen[bytes]) -> None:
    """Wait for the honest clients: at most 600 s, and 30 s once the server has ended."""
    end = time.monotonic() + 600
    while any(t.is_alive() for t in threads) and time.monotonic() < end:
        if server.poll() is not None:
            end = min(end, time.monotonic() + 30)  # they retry for minutes otherwise
        time.sleep(0.2)


def _rss(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process has just ended
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags; unknown attacks, no rounds and no model are refused, naming the flag."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attacks", nargs="*", help="park, stall and/or empty (none: a baseline)")
    parser.add_argument("--mb", type=float, default=7.0, help="model size in MB")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        return args
    unknown = set(args.attacks) - {"park", "stall", "empty"}
    if unknown:
        parser.error(f"unknown attacks {sorted(unknown)}; choose from park, stall, empty")
    if not 0 < args.mb < float("inf"):  # also refuses nan
        parser.error(f"--mb must be a size greater than 0, got {args.mb}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def main() -> None:
    """Run a server, the attacks and two honest clients; print the figures."""
    args = parse_args()
    if args.role:
        _role(args.role, args.port)
        return
    work = Path(tempfile.mkdtemp(prefix="covey-hostile-"))
    (work / "hostile_app.py").write_text(APP)
    clients = 2 + sum(SIZES.get(a, 0) for a in args.attacks)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]),
        "HOSTILE_MB": str(args.mb),
        "HOSTILE_CLIENTS": str(clients),
        "HOSTILE_ROUNDS": str(args.rounds),
    }
    covey_bin = str(Path(sys.executable).with_name("covey"))
    command = [covey_bin, "server", "--app", "hostile_app:server_app", "--insecure"]
    port_file = work / "port"
    command += ["--address", "127.0.0.1:0", "--port-file", str(port_file)]
    command += ["--round-timeout", "6", "--heartbeat", "1"]
    command += ["--run-dir", str(work / "run")]
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    peak = [0]

    def watch() -> None:
        while server.poll() is None:
            peak[0] = max(peak[0], _rss(server.pid))
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    port = _listening(server, port_file, work / "server.log")
    attackers = []
    for attack in sorted(args.attacks, key=lambda a: a == "park"):  # park last
        role = [sys.executable, __file__, "--role", attack, "--port", str(port)]
        attackers.append(subprocess.Popen(role, env=env, stderr=subprocess.DEVNULL))
        time.sleep(4)
    honest: dict[str, Any] = {}
    threads = [
        threading.Thread(target=_honest, args=(port, n, honest), daemon=True) for n in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    _wait_honest(threads, server)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        print("the server did not exit within 60 s of the run; killed")
        server.kill()
        server.wait()
    log.close()
    for attacker in attackers:
        attacker.kill()
        attacker.wait()
    print(
        f"attacks: {' '.join(args.attacks) or 'none'}; model {args.mb:g} MB; covey {covey.__file__}"
    )
    print(f"server peak RSS: {peak[0] / 2**20:.0f} MiB; exit status {server.returncode}")
    print(f"server log: {work / 'server.log'}")
    for name, (seconds, tasks, sessions, reason) in sorted(honest.items()):
        print(f"honest {name}: {tasks} tasks in {seconds:.1f} s, {sessions} session(s): {reason}")
    for name in sorted({"a", "b"} - set(honest)):
        print(f"honest {name}: did not finish (the server's exit status: {server.returncode})")


if __name__ == "__main__":
    main()
