"""A live federation on 127.0.0.1 under hostile and unlucky clients (server in this process)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest

import covey
from covey.core import _codec
from covey.core._messages import Task
from covey.deploy._client import tls_from_certs
from covey.deploy.certs import init_federation, issue_client, revoke
from covey.server._store import RunStore
from covey.transport.grpc import _service
from covey.transport.grpc._client import ClientTLS
from covey.transport.grpc._frames import PROTOCOL
from covey.transport.grpc._refusal import Refused
from covey.transport.grpc._server import GrpcServerTransport
from covey.transport.grpc.proto import covey_pb2 as pb

sys.path.insert(0, str(Path(__file__).parent))
from _live import Fit, Joined, Raw, Served
from _ports import unused_port

pytestmark = pytest.mark.timeout(120)

HOSTILE = b'{"type":"value","value":{"__array__":[0,0],"dtype":"U40000000"}}'


def _events(run_dir: Path) -> list[tuple[str, str, str]]:
    with RunStore.open(run_dir) as store:
        return [(client, event, detail) for _, client, event, detail in store.events()]


# -- 1. the hostile-dtype message against a live server ------------------------------------


def _task_or_goodbye(raw: Raw) -> pb.TaskHeader | None:
    """The next task the server sends ``raw``; None once it says goodbye.

    A stream still open after the goodbye holds the server's end for its drain (5 s).
    """
    for message in raw.messages():
        if message.WhichOneof("body") == "goodbye":
            return None
        if message.WhichOneof("body") == "task":
            return message.task
    raise AssertionError("the stream ended before a task came")


def test_hostile_dtype_replies_leave_the_server_up_and_the_run_completes(tmp_path: Path) -> None:
    strategy = covey.FedAvg(min_available_clients=3, min_fit_clients=2, fraction_evaluate=0.0)
    served = Served(strategy, 3, run_dir=tmp_path / "run", round_timeout=20)
    rss = psutil.Process().memory_info().rss
    good = [Joined(served.port, name=f"good-{k}") for k in range(2)]
    sent = 0

    def hostile() -> None:
        nonlocal sent
        while served.thread.is_alive() and sent < 6:
            raw = Raw(
                served.port, pb.Hello(version=covey.__version__, name="evil", protocol=PROTOCOL)
            )
            try:
                task = _task_or_goodbye(raw)
                if task is None:  # the run is over: it hangs up, as a client does
                    break
                raw.send(reply=pb.ReplyHeader(task_id=task.task_id, kind="fit", result=HOSTILE))
                sent += 1
                raw.ended()
            except (grpc.RpcError, AssertionError):
                time.sleep(0.2)
            finally:
                raw.close()

    attacker = threading.Thread(target=hostile, daemon=True)
    attacker.start()
    result = served.join(90)
    attacker.join(30)
    for client in good:
        client.join()
    assert sent >= 1
    assert [r.round for r in result.history.rounds] == [0, 1, 2, 3]
    assert np.array_equal(result.weights["w"], np.full(8, 3.0))
    grown = psutil.Process().memory_info().rss - rss
    assert grown < 150 * 1024**2, f"the server grew by {grown / 1024**2:.0f} MB"
    refused = [e for e in _events(tmp_path / "run") if e[0] == "evil" and e[1] == "protocol-error"]
    assert refused
    assert "not allowed" in refused[0][2]
    assert "peer" in refused[0][2]


# -- 2. uploads checked against the pending task and capped ---------------------------------


class _SpyUpload(_service.Upload):
    made: list[int] = []  # noqa: RUF012 - a record for the test

    def __init__(self, weights_size: int, extras_size: int, *, spill: bool) -> None:
        _SpyUpload.made.append(weights_size + extras_size)
        super().__init__(weights_size, extras_size, spill=spill)


def test_uploads_nobody_asked_for_allocate_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_service, "Upload", _SpyUpload)
    _SpyUpload.made.clear()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=0.5, max_inflight=100_000)
    raw = Raw(transport.port)
    try:
        assert transport.wait_for_clients(1, 10)
        # A reply to a task that was never sent: its bytes are skipped, not buffered.
        # (Under the reply limit of a small model, so only the missing task matters.)
        size = 512 * 1024
        raw.send(reply=pb.ReplyHeader(task_id=777, kind="fit", weights_size=size))
        for _ in range(4):
            raw.send_chunk(bytes(128 * 1024))
        weights = {"w": np.zeros(8)}
        replies: list[Any] = []
        exchange = threading.Thread(
            target=lambda: replies.extend(
                transport.exchange({0: Task("fit", 1, {}, weights)}, timeout=20)
            ),
            daemon=True,
        )
        exchange.start()
        task = raw.next_task()
        assert _SpyUpload.made == []
        assert transport.clients() == [0]  # skipping is not a protocol error
        # An asked-for reply larger than the server's total budget: refused, client dropped.
        raw.send(reply=pb.ReplyHeader(task_id=task.task_id, kind="fit", weights_size=200_000))
        exchange.join(20)
        assert _SpyUpload.made == []
        assert replies[0].error is not None
        assert transport._service.budget.used == 0
    finally:
        raw.close()
        transport.close()


def test_a_reply_larger_than_a_model_is_refused_before_allocating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_service, "Upload", _SpyUpload)
    _SpyUpload.made.clear()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=0.5)
    raw = Raw(transport.port)
    try:
        assert transport.wait_for_clients(1, 10)
        exchange = threading.Thread(
            target=lambda: list(
                transport.exchange({0: Task("fit", 1, {}, {"w": np.zeros(8)})}, timeout=20)
            ),
            daemon=True,
        )
        exchange.start()
        task = raw.next_task()
        raw.send(reply=pb.ReplyHeader(task_id=task.task_id, kind="fit", weights_size=1 << 40))
        raw.ended()  # the server ends the stream (bounded wait)
        exchange.join(20)
        assert _SpyUpload.made == []
    finally:
        raw.close()
        transport.close()


# -- 5. the version handshake --------------------------------------------------------------


def test_an_incompatible_client_is_refused_naming_both_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=0.5)
    try:
        raw = Raw(transport.port, pb.Hello(version="99.0.0", name="future"))
        with pytest.raises(grpc.RpcError) as info:
            next(raw.messages())
        raw.close()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "99.0.0" in info.value.details()
        assert covey.__version__ in info.value.details()
        monkeypatch.setattr("covey.transport.grpc._client.covey_version", lambda: "99.0.0")
        client = Joined(transport.port, name="future")
        client.join(30)
        assert isinstance(client.error, Refused)
        assert "99.0.0" in str(client.error)
        assert covey.__version__ in str(client.error)
    finally:
        transport.close()


# -- 8. connect(stop=..., properties=...) ----------------------------------------------------


def test_stop_ends_a_session_in_progress() -> None:
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    stop = threading.Event()
    try:
        client = Joined(transport.port, name="leaver", stop=stop)
        assert transport.wait_for_clients(1, 10)
        stop.set()
        client.join(10)  # well before the 5 s heartbeat and any server goodbye
        assert client.error is None
        assert client.result is not None
        assert client.result.reason == "stopped"
    finally:
        transport.close()


def test_properties_given_to_connect_are_what_the_server_selects_on() -> None:
    strategy = covey.FedAvg(
        where=lambda p: p.get("site") == "a",
        min_available_clients=2,
        min_fit_clients=1,
        fraction_evaluate=0.0,
    )
    served = Served(strategy, 1)
    a = Joined(served.port, name="a", properties={"site": "a"})
    b = Joined(served.port, name="b", properties={"site": "b"})
    history = served.join().history
    a.join()
    b.join()
    assert a.result is not None
    assert history[1].fit_participants == [a.result.cid]


# -- 9, 10. where a server listens ---------------------------------------------------------


def test_a_resumed_run_listens_on_its_stored_address(tmp_path: Path) -> None:
    port = unused_port()  # fixed by design; one no outgoing connection takes in between
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    first = Served(strategy, 1, address=f"127.0.0.1:{port}", run_dir=tmp_path / "run")
    clients = [Joined(port, name=f"c{k}") for k in range(2)]
    first.join()
    for c in clients:
        c.join()
    again = Served(strategy, 2, run_dir=tmp_path / "run", resume=True)
    assert again.port == port
    clients = [Joined(port, name=f"c{k}") for k in range(2)]
    result = again.join()
    assert [r.round for r in result.history.rounds] == [0, 1, 2]
    assert np.array_equal(result.weights["w"], np.full(8, 2.0))


def test_a_busy_port_leaves_no_run_folder(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            covey.serve(
                covey.FedAvg(),
                1,
                {"w": np.zeros(2)},
                f"127.0.0.1:{port}",
                insecure=True,
                run_dir=tmp_path / "run",
            )
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="between 0 and 65535"):
        covey.serve(covey.FedAvg(), 1, {"w": np.zeros(2)}, "127.0.0.1:99999", insecure=True)


# -- 4. an asynchronous run resumes -----------------------------------------------------------


def test_a_fedbuff_run_resumes_from_its_safetensors_state(tmp_path: Path) -> None:
    strategy = covey.FedBuff(buffer_size=2, min_available_clients=2, fraction_evaluate=0.0)
    first = Served(strategy, 2, run_dir=tmp_path / "run", round_timeout=20)
    clients = [Joined(first.port, name=f"c{k}") for k in range(2)]
    first.join()
    for c in clients:
        c.join()
    again = Served(strategy, 4, run_dir=tmp_path / "run", resume=True, round_timeout=20)
    clients = [Joined(again.port, name=f"c{k}") for k in range(2)]
    result = again.join()
    assert [r.round for r in result.history.rounds] == [0, 1, 2, 3, 4]
    with RunStore.open(tmp_path / "run") as store:
        _, _, _, blob = store.load_latest_valid()
    assert blob is not None
    assert not blob.startswith(b"\x80")  # safetensors, not a pickle


# -- 3, 11, 12. certificates: foreign, revoked at join, revoked mid-run ----------------------


def test_refusals_end_clients_at_once_and_are_recorded(tmp_path: Path) -> None:
    fed, other = tmp_path / "fed", tmp_path / "other"
    init_federation(fed)
    init_federation(other)
    for name in ("c0", "c1", "gone"):
        issue_client(fed, name)
    issue_client(other, "stranger")
    revoke(fed, "gone")
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 40, certs=fed, run_dir=tmp_path / "run", round_timeout=20)
    c0 = Joined(served.port, Fit(0.05), tls=tls_from_certs(fed, "c0"))
    c1 = Joined(served.port, Fit(0.05), tls=tls_from_certs(fed, "c1"))
    stranger_cert = tls_from_certs(other, "stranger")
    foreign = ClientTLS(
        ca=(fed / "ca.pem").read_bytes(), cert=stranger_cert.cert, key=stranger_cert.key
    )
    refused = [
        Joined(served.port, tls=tls_from_certs(fed, "gone")),
        Joined(served.port, tls=foreign),
        Joined(served.port, tls=stranger_cert),
    ]
    for client in refused:
        client.join(30)
        assert isinstance(client.error, Refused), client.error
    assert "revoked" in str(refused[0].error)
    assert "certificate not trusted" in str(refused[1].error)
    assert "certificate not trusted" in str(refused[2].error)
    # c1's certificate is revoked mid-run: it is dropped and refused, the run goes on.
    revoke(fed, "c1")
    c1.join(30)
    assert isinstance(c1.error, Refused)
    assert "revoked" in str(c1.error)
    result = served.join(120)
    c0.join()
    assert len(result.history.rounds) == 41
    events = _events(tmp_path / "run")
    assert any(c == "gone" and e == "refused" and "peer" in d for c, e, d in events)
    assert any(c == "c1" and e == "refused" and "revoked" in d for c, e, d in events)


def test_a_codec_error_in_a_reply_is_a_failed_client(tmp_path: Path) -> None:
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 1, run_dir=tmp_path / "run", round_timeout=20)
    good = Joined(served.port, name="good")
    raw = Raw(served.port, pb.Hello(version=covey.__version__, name="liar", protocol=PROTOCOL))
    try:
        task = raw.next_task()
        junk = bytes(_codec.encode({"w": np.zeros(8)}))
        junk = junk[:40] + b"\xff" * 8 + junk[48:]
        raw.send(
            reply=pb.ReplyHeader(
                task_id=task.task_id,
                kind="fit",
                result=b'{"type":"fit","form":"weights","num_examples":1,"metrics":{}}',
                weights_size=len(junk),
            )
        )
        raw.send_chunk(junk)
        raw.ended()  # the server ends the stream (bounded wait)
    finally:
        raw.close()
    history = served.join().history
    good.join()
    assert [f.error for f in history[1].fit_failures if "malformed" in f.error]
