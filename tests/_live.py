"""Helpers for tests of a live federation in this process: a served run and connected clients."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np

import covey
from covey.deploy._server import ServeResult, serve
from covey.transport.grpc._client import ConnectResult, connect
from covey.transport.grpc._frames import (
    CHUNK_TAG,
    PROTOCOL,
    control,
    is_chunk,
    server_message,
)
from covey.transport.grpc._options import METHOD, SERVICE
from covey.transport.grpc.proto import covey_pb2 as pb


def stand_in(join: Any, workers: int = 2) -> tuple[grpc.Server, int]:
    """A started gRPC server on 127.0.0.1 whose ``Federation.Join`` is ``join``; its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Join": grpc.stream_stream_rpc_method_handler(join)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def served_to(sites: Any, strategy: Any, model: Any, **kwargs: Any) -> ServeResult:
    """One round served on 127.0.0.1 to ``sites``, ``(name, client)`` pairs joining as it listens.

    Each site is ``covey.deploy.connect`` on a thread of its own, joined before returning;
    ``kwargs`` go to ``serve``.
    """
    from covey.deploy import connect as join

    threads: list[threading.Thread] = []

    def start(port: int) -> None:
        for name, client in sites:
            site = threading.Thread(
                target=join,
                args=(client, f"127.0.0.1:{port}"),
                kwargs={"insecure": True, "name": name},
                daemon=True,
            )
            site.start()
            threads.append(site)

    try:
        return serve(
            strategy,
            1,
            model,
            "127.0.0.1:0",
            insecure=True,
            on_listen=start,
            wait_timeout=30.0,
            plot=False,
            **kwargs,
        )
    finally:
        for site in threads:
            site.join(timeout=30)


def next_reply(transport: Any, within: float = 60.0) -> Any:
    """The transport's next reply to a submitted task, polled for up to ``within`` s."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        reply = transport.next_reply(timeout=1.0)
        if reply is not None:
            return reply
    raise AssertionError("no reply came")


def cap_reply(transport: Any, task_id: int, most: int) -> None:
    """Set the most bytes a reply to pending task ``task_id`` may declare, as a test's own cap."""
    for conn in list(transport._registry.fleet.values()):
        with conn.lock:
            if task_id in conn.limits:
                conn.limits[task_id] = (most, conn.limits[task_id][1])


class Fit(covey.Client):
    """Adds one to every weight, after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        time.sleep(self.delay)
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def initial() -> dict[str, Any]:
    return {"w": np.zeros(8)}


class Served:
    """``serve(...)`` on a thread; ``port`` once it listens, ``result`` or ``error`` at the end."""

    def __init__(self, strategy: covey.Strategy, rounds: int, **kwargs: Any) -> None:
        self.listening = threading.Event()
        self.port = 0
        self.result: ServeResult | None = None
        self.error: BaseException | None = None
        kwargs.setdefault("insecure", "certs" not in kwargs)
        kwargs.setdefault("heartbeat", 0.5)
        if not kwargs.get("resume"):
            kwargs.setdefault("address", "127.0.0.1:0")  # a free port: runs may overlap
        kwargs.setdefault("wait_timeout", 30.0)
        weights = kwargs.pop("initial_weights", None if kwargs.get("resume") else initial())

        def listening(port: int) -> None:
            self.port = port
            self.listening.set()

        def run() -> None:
            try:
                self.result = serve(strategy, rounds, weights, on_listen=listening, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                self.error = exc
            finally:
                self.listening.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.listening.wait(30), "the server did not start"

    def join(self, timeout: float = 60) -> ServeResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not finish in time"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class WaitRunOut:
    """Runs a served run's wait for clients out when the test says so, not after its seconds.

    A test of what a run short of clients says waited out the whole ``wait_timeout``
    once the connections it needed refused were made. The waits read a clock that
    :meth:`now` moves an hour ahead; they look at it at least every 0.05 s. The
    timeout itself can then be long, as a loaded machine needs.
    """

    def __init__(self, monkeypatch: Any) -> None:
        from covey.server import _passing
        from covey.transport.grpc import _registry

        self.ahead = 0.0
        clock = SimpleNamespace(
            monotonic=lambda: time.monotonic() + self.ahead,
            perf_counter=lambda: time.perf_counter() + self.ahead,
            sleep=time.sleep,
        )
        monkeypatch.setattr(_registry, "time", clock)
        monkeypatch.setattr(_registry, "LONGEST_WAIT", 0.05)
        monkeypatch.setattr(_passing, "time", clock)

    def now(self) -> None:
        """The wait under way runs out within 0.05 s."""
        self.ahead += 3600.0


class Events:
    """The fleet events a transport reports (its ``on_event``), collected for a test."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, name: str, event: str, detail: str) -> None:
        with self.lock:
            self.items.append((name, event, detail))

    def of(self, event: str) -> list[tuple[str, str]]:
        with self.lock:
            return [(n, d) for n, e, d in self.items if e == event]


class Joined:
    """``connect(...)`` on a thread; ``result`` or ``error`` at the end."""

    def __init__(
        self, port: int, client: Any = None, host: str = "127.0.0.1", **kwargs: Any
    ) -> None:
        self.result: ConnectResult | None = None
        self.error: BaseException | None = None
        kwargs.setdefault("insecure", "tls" not in kwargs)
        kwargs.setdefault("backoff", 0.1)
        kwargs.setdefault("retry_for", 30.0)

        def run() -> None:
            try:
                self.result = connect(client or Fit(), f"{host}:{port}", **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 60) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the client did not finish in time"


class Raw:
    """A hand-driven client stream: send any frame, read what the server sends."""

    def __init__(self, port: int, hello: pb.Hello | None = None) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.out: queue.Queue[bytes | None] = queue.Queue()
        version = covey.__version__
        self.send(
            hello=hello or pb.Hello(version=version, name="raw", kinds=["fit"], protocol=PROTOCOL)
        )
        join = self.channel.stream_stream(METHOD)  # frames as bytes
        self.call = join(self._requests())

    def _requests(self) -> Iterator[bytes]:
        while True:
            frame = self.out.get()
            if frame is None:
                return
            yield frame

    def send(self, **body: Any) -> None:
        """Send a control message (a ``ClientMessage`` with ``body``)."""
        self.out.put(control(pb.ClientMessage(**body)))

    def send_chunk(self, data: bytes) -> None:
        """Send a chunk frame carrying ``data``."""
        self.out.put(CHUNK_TAG + data)

    def finish(self) -> None:
        """End the request stream (a half-close), leaving the call open."""
        self.out.put(None)

    def send_frame(self, frame: bytes) -> None:
        """Send ``frame`` as it is."""
        self.out.put(frame)

    def messages(self) -> Iterator[pb.ServerMessage]:
        """The server's control messages (chunk frames skipped)."""
        return (server_message(f) for f in self.call if not is_chunk(f))

    def next_task(self) -> pb.TaskHeader:
        for message in self.messages():
            if message.WhichOneof("body") == "task":
                return message.task
        raise AssertionError("the stream ended before a task came")

    def ended(self, timeout: float = 10) -> grpc.StatusCode | None:
        """Wait (bounded) for the server to end the stream; its status code."""
        box: list[Any] = []

        def drain() -> None:
            try:
                for _ in self.call:
                    pass
                box.append(None)
            except grpc.RpcError as exc:
                box.append(exc.code())

        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
        thread.join(timeout)
        assert box, "the server did not end the stream"
        return box[0]

    def close(self) -> None:
        self.out.put(None)
        self.call.cancel()
        self.channel.close()


def serve_interrupted(run_dir: Any, *, resume: bool = False) -> int:
    """A 2-round run in ``run_dir`` served and stopped by Ctrl-C as it listens; its port.

    Ctrl-C comes as the console says the server listens (``on_listen``).
    """
    ports: list[int] = []

    def interrupted(port: int) -> None:
        ports.append(port)
        raise KeyboardInterrupt

    try:
        serve(
            covey.FedAvg(fraction_evaluate=0.0),
            2,
            {"w": np.zeros(2)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
            resume=resume,
            on_listen=interrupted,
        )
    except KeyboardInterrupt:
        return ports[0]
    raise AssertionError("the server was not interrupted")
