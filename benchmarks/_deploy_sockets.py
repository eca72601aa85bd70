"""Raw loopback TCP baseline of the deployed benchmark: the big model out and back, no framework.

``python _deploy_sockets.py send --clients K --elements E --rounds R --port-file F
--times T`` is the "server": it builds the big model (``_deploy_model.py``),
listens on 127.0.0.1 (a free port, written to F) and waits for K receivers. Each
round it sends, on one thread per receiver, an 8-byte length and then the
model's bytes straight from the array (``sendall`` of a memoryview, no copy),
and reads back the same number of bytes into a 4 MiB scratch buffer (the bytes
are counted, not kept: it measures the wire, not an aggregation).

``python _deploy_sockets.py receive --server HOST:PORT`` is a "client": it
receives the whole message into one preallocated buffer (``recv_into``), then
sends it back whole, like a client that needs the full model before it can
reply. Round times go to T in the format of ``_deploy_covey_app.py``.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _deploy_model as dm

SCRATCH = 4 << 20
LENGTH = struct.Struct("<Q")


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed the connection")
        view = view[n:]


def drain(sock: socket.socket, size: int, scratch: memoryview) -> None:
    while size:
        n = sock.recv_into(scratch[: min(size, len(scratch))])
        if n == 0:
            raise ConnectionError("peer closed the connection")
        size -= n


def send(args: argparse.Namespace) -> None:
    model = dm.initial(args.elements)
    payload = memoryview(model).cast("B")
    listener = socket.create_server(("127.0.0.1", 0), backlog=args.clients)
    tmp = args.port_file.with_name(args.port_file.name + ".tmp")
    tmp.write_text(str(listener.getsockname()[1]))
    tmp.replace(args.port_file)
    conns = [listener.accept()[0] for _ in range(args.clients)]
    records = [{"round": 0, "t": time.time()}]

    def exchange(conn: socket.socket, errors: list[BaseException]) -> None:
        try:
            conn.sendall(LENGTH.pack(len(payload)))
            conn.sendall(payload)
            drain(conn, len(payload), memoryview(bytearray(SCRATCH)))
        except BaseException as exc:  # noqa: BLE001 - a thread's error is raised after join
            errors.append(exc)

    for rnd in range(1, args.rounds + 1):
        errors: list[BaseException] = []
        threads = [threading.Thread(target=exchange, args=(c, errors)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        records.append({"round": rnd, "t": time.time()})
        args.times.write_text(json.dumps({"evaluations": records}))
    for conn in conns:
        conn.sendall(LENGTH.pack(0))
        conn.close()
    args.times.write_text(json.dumps({"evaluations": records, "finished": True}))


def receive(args: argparse.Namespace) -> None:
    host, _, port = args.server.rpartition(":")
    sock = socket.create_connection((host, int(port)))
    buffer: bytearray | None = None
    head = bytearray(LENGTH.size)
    while True:
        recv_exact(sock, memoryview(head))
        (size,) = LENGTH.unpack(head)
        if size == 0:
            break
        if buffer is None or len(buffer) != size:
            buffer = bytearray(size)
        recv_exact(sock, memoryview(buffer))
        sock.sendall(buffer)
    sock.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("send")
    s.add_argument("--clients", type=int, required=True)
    s.add_argument("--elements", type=int, required=True)
    s.add_argument("--rounds", type=int, default=1)
    s.add_argument("--port-file", type=Path, required=True)
    s.add_argument("--times", type=Path, required=True)
    r = sub.add_parser("receive")
    r.add_argument("--server", required=True)
    args = p.parse_args()
    if args.role == "send":
        send(args)
    else:
        receive(args)


if __name__ == "__main__":
    main()
