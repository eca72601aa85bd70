"""The data port's raw path alone, with and without mutual TLS: no gRPC, no strategy, no model.

``python benchmarks/tls_data_port.py --mb 400 --clients 4 --rounds 3`` issues a
throwaway federation's certificates (``covey.deploy.certs``), starts
``--clients`` receiver processes and, each round, sends them ``--mb`` MB of
float32 from one array with covey's own data-connection code
(``_lane.send``: pieces of ``_lane.PIECE`` bytes) on one thread per client;
each receiver reads the whole message into one buffer (``_lane.receive``,
``recv_into`` piece by piece), then sends it back, read by the server into one
buffer per client. The same under TLS (``_lane.server_context`` /
``client_context``, as ``covey server --data-port`` sets them up) and without.

Printed per mode: the negotiated protocol and cipher, each round's seconds and
GB/s (both directions, all clients), and the CPU seconds of the sending side
and of the receivers, per GB moved: what TLS adds on top of the copies.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from covey.core import _codec
from covey.deploy.certs import init_federation, issue_client
from covey.transport.grpc import _lane


def _contexts(folder: Path, clients: int) -> tuple[Any, list[Any]]:
    init_federation(folder, hosts=("127.0.0.1",))
    ca = (folder / "ca.pem").read_bytes()
    server = _lane.server_context(
        ca, (folder / "server.pem").read_bytes(), (folder / "server.key").read_bytes()
    )
    pems = []
    for k in range(clients):
        issue_client(folder, f"c{k}")
        pems.append(
            (
                ca,
                (folder / "clients" / f"c{k}.pem").read_bytes(),
                (folder / "clients" / f"c{k}.key").read_bytes(),
            )
        )
    return server, pems


def _client(port: int, pems: Any, size: int, rounds: int, out: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    if pems is not None:
        sock = _lane.client_context(*pems).wrap_socket(sock, server_hostname="127.0.0.1")
    buffer = np.empty(size, dtype=np.uint8)
    buffer[::4096] = 1  # mapped before the clock starts, as a reused receive buffer is
    view = memoryview(buffer).cast("B")
    start = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(rounds):
        for at in range(0, size, _lane.PIECE):
            _lane.receive(sock, view[at : at + _lane.PIECE])
        for at in range(0, size, _lane.PIECE):  # as _lane.send writes a reply's segments
            sock.sendall(view[at : at + _lane.PIECE])
    end = resource.getrusage(resource.RUSAGE_SELF)
    _lane.receive(sock, memoryview(bytearray(1)))
    out.put(end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime)
    sock.close()


def _serve_one(sock: socket.socket, blob: _codec.Encoded, back: memoryview) -> None:
    _lane.send(sock, blob)
    for at in range(0, len(back), _lane.PIECE):
        _lane.receive(sock, back[at : at + _lane.PIECE])


def run(mb: int, clients: int, rounds: int, tls: bool, folder: Path) -> dict[str, Any]:
    """One mode: its cipher, round times and CPU seconds (sender side, receivers)."""
    context, pems = _contexts(folder, clients) if tls else (None, [None] * clients)
    model = np.ones(mb * 10**6 // 4, dtype=np.float32)
    blob = _codec.Encoded({"w": model})
    size = len(blob)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    spawn = mp.get_context("spawn")
    out = spawn.Queue()
    procs = [
        spawn.Process(target=_client, args=(port, pems[k], size, rounds, out))
        for k in range(clients)
    ]
    for proc in procs:
        proc.start()
    socks = []
    for _ in range(clients):
        sock, _ = listener.accept()
        socks.append(sock if context is None else context.wrap_socket(sock, server_side=True))
    listener.close()
    cipher = socks[0].cipher() if tls else None  # type: ignore[attr-defined]
    backs = [np.empty(size, dtype=np.uint8) for _ in range(clients)]
    for back in backs:
        back[::4096] = 1
    views = [memoryview(back).cast("B") for back in backs]
    seconds = []
    start = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(rounds):
        began = time.perf_counter()
        threads = [
            threading.Thread(target=_serve_one, args=(sock, blob, view))
            for sock, view in zip(socks, views, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds.append(time.perf_counter() - began)
    end = resource.getrusage(resource.RUSAGE_SELF)
    for sock in socks:
        sock.sendall(b"\x00")
    received = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(60)
    for sock in socks:
        _lane.cut(sock)
    moved = 2 * clients * size * rounds / 1e9
    return {
        "cipher": cipher,
        "seconds": seconds,
        "gbps": [2 * clients * size / 1e9 / s for s in seconds],
        "server_cpu_per_gb": (end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime)
        / moved,
        "clients_cpu_per_gb": sum(received) / moved,
    }


def main(argv: list[str] | None = None) -> int:
    """Run both modes (or one) and print a line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=400, help="message size (10**6 bytes)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="plain,tls", help="comma-separated: plain, tls")
    args = parser.parse_args(argv)
    if args.mb < 1 or args.clients < 1 or args.rounds < 1:
        parser.error("--mb, --clients and --rounds must be at least 1")
    for mode in args.modes.split(","):
        if mode not in ("plain", "tls"):
            parser.error(f"unknown mode {mode!r} (plain, tls)")
        with tempfile.TemporaryDirectory(prefix="covey-tlsbench-") as folder:
            result = run(args.mb, args.clients, args.rounds, mode == "tls", Path(folder) / "fed")
        rounds = ", ".join(f"{s:.2f}" for s in result["seconds"])
        rates = ", ".join(f"{g:.2f}" for g in result["gbps"])
        print(
            f"{mode}: cipher {result['cipher']}; round s {rounds}; GB/s {rates}; "
            f"CPU s per GB moved: sender side {result['server_cpu_per_gb']:.3f}, "
            f"receivers {result['clients_cpu_per_gb']:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
