"""A real federation: a server and client processes over mTLS on 127.0.0.1.

Every test starts its own `covey server` and `covey client` processes on a
free port, and kills whatever it started when it ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import covey
from covey.deploy.certs import init_federation, issue_client
from covey.server._store import RunStore

APPS = Path(__file__).parent / "apps"
sys.path.insert(0, str(APPS))
import digits_app  # noqa: E402

from _childenv import child_pythonpath  # noqa: E402
from _procs import CoveyProcesses  # noqa: E402

pytestmark = pytest.mark.slow
N = digits_app.NUM_CLIENTS


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _saved_rounds(run_dir: Path) -> int:
    """The last round whose row is committed in ``run_dir`` (read-only; -1 before any)."""
    db = run_dir / "run.sqlite"
    if not db.exists():
        return -1
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT MAX(round) FROM rounds").fetchone()
    except sqlite3.Error:  # created but not yet initialised
        return -1
    return -1 if row is None or row[0] is None else int(row[0])


class Federation(CoveyProcesses):
    """Starts and tracks server and client processes; kills them all at the end."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.certs = tmp / "certs"
        init_federation(self.certs, hosts=("localhost", "127.0.0.1"))
        self.run_dir = tmp / "run"
        self.markers = tmp / "markers"
        self.markers.mkdir()
        environ = dict(os.environ)
        environ["PYTHONPATH"] = child_pythonpath(APPS)
        environ["COVEY_TEST_MARKERS"] = str(self.markers)
        environ.update(env)
        super().__init__(tmp, environ)
        self.port = 0
        self.clients: dict[int, subprocess.Popen[bytes]] = {}

    def server(self, *extra: str, resume: bool = False) -> subprocess.Popen[bytes]:
        port_file = self.tmp / "port"
        port_file.unlink(missing_ok=True)
        address = f"127.0.0.1:{self.port}"
        args = [
            "server",
            "--app",
            "digits_app:server_app",
            "--certs",
            str(self.certs),
            "--address",
            address,
            "--port-file",
            str(port_file),
            "--heartbeat",
            "1",
            "--wait-timeout",
            "90",
            "-v",
        ]
        args += ["--resume", str(self.run_dir)] if resume else ["--run-dir", str(self.run_dir)]
        proc = self._spawn([*args, *extra], "server.log")
        _wait_for(lambda: port_file.exists() or proc.poll() is not None, 60, "the server")
        assert proc.poll() is None, self.log("server.log")
        self.port = int(port_file.read_text())
        return proc

    def client(self, k: int, name: str | None = None) -> subprocess.Popen[bytes]:
        name = name or f"client-{k}"
        if not (self.certs / "clients" / f"{name}.pem").exists():
            issue_client(self.certs, name)
        proc = self._spawn(
            [
                "client",
                "--app",
                "digits_app:client_fn",
                "--cid",
                str(k),
                "--server",
                f"127.0.0.1:{self.port}",
                "--certs",
                str(self.certs),
                "--name",
                name,
                "-v",
            ],
            f"client-{k}.log",
        )
        self.clients[k] = proc
        return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout: float = 120) -> int:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process did not finish in {timeout} s\n" + self.log("server.log")[-4000:]
            ) from None

    def result(self) -> tuple[dict[str, Any], covey.History]:
        with RunStore.open(self.run_dir) as store:
            _, weights, _, _ = store.load_latest_valid()
            return dict(weights), store.history()


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Any]:
    made: list[Federation] = []

    def make(**env: str) -> Federation:
        fed = Federation(tmp_path, **env)
        made.append(fed)
        return fed

    yield make
    for fed in made:
        fed.close()


def _simulated(rounds: int) -> dict[str, Any]:
    result = covey.simulate(
        digits_app.client_fn,
        N,
        rounds,
        digits_app.strategy(),
        digits_app.initial(),
        backend="inline",
    )
    return result.weights


def _assert_close(a: dict[str, Any], b: dict[str, Any], tol: float = 1e-12) -> None:
    assert set(a) == set(b)
    for name in a:
        assert np.max(np.abs(np.asarray(a[name]) - np.asarray(b[name]))) <= tol, name


def test_mtls_federation_equals_simulation(federation: Any) -> None:
    fed = federation()
    server = fed.server()
    clients = [fed.client(k) for k in range(N)]
    assert fed.wait(server) == 0, fed.log("server.log")
    for k, proc in enumerate(clients):
        assert fed.wait(proc, 30) == 0, fed.log(f"client-{k}.log")
    weights, history = fed.result()
    assert [r.round for r in history.rounds] == [0, 1, 2, 3, 4, 5]
    assert all(len(r.fit_participants) == N for r in history.rounds[1:])
    _assert_close(weights, _simulated(5))
    assert history.rounds[-1].central_metrics["accuracy"] > 0.8


def test_mtls_federation_with_a_data_port_equals_simulation(federation: Any) -> None:
    fed = federation()
    server = fed.server("--data-port", "0")
    clients = [fed.client(k) for k in range(N)]
    assert fed.wait(server) == 0, fed.log("server.log")
    for k, proc in enumerate(clients):
        assert fed.wait(proc, 30) == 0, fed.log(f"client-{k}.log")
        assert "opened data connections to 127.0.0.1:" in fed.log(f"client-{k}.log")
    weights, history = fed.result()
    assert [r.round for r in history.rounds] == [0, 1, 2, 3, 4, 5]
    _assert_close(weights, _simulated(5))


def test_clients_killed_mid_round_are_survived(federation: Any) -> None:
    fed = federation(
        COVEY_TEST_SLOW_ROUND="3",
        COVEY_TEST_MIN_FIT="4",
        COVEY_TEST_MIN_AVAILABLE="6",
        COVEY_TEST_ROUNDS="4",
    )
    server = fed.server("--round-timeout", "60")
    for k in range(N):
        fed.client(k)
    # Clients join at their own pace; kill two of those training in round 3.
    _wait_for(lambda: len(list(fed.markers.glob("fit-r3-k*"))) >= 4, 90, "round 3")
    victims = sorted(int(p.name.rsplit("k", 1)[1]) for p in fed.markers.glob("fit-r3-k*"))[:2]
    for k in victims:
        fed.clients[k].send_signal(signal.SIGKILL)
    assert fed.wait(server) == 0, fed.log("server.log")
    weights, history = fed.result()
    round3 = history[3]
    failed = {f.cid for f in round3.fit_failures}
    with RunStore.open(fed.run_dir) as store:
        ids = store.clients()
    assert failed == {ids[f"client-{k}"] for k in victims}
    assert {f.name for f in round3.fit_failures} == {f"client-{k}" for k in victims}
    assert covey.History.load(fed.run_dir).clients == {cid: name for name, cid in ids.items()}
    assert round3.aggregated
    assert len(round3.fit_participants) >= 2
    assert all("disconnected" in f.error for f in round3.fit_failures)
    assert history[4].aggregated
    assert not failed & set(history[4].fit_participants)
    assert all(np.isfinite(w).all() for w in weights.values())


def test_clients_without_a_valid_certificate_are_refused(federation: Any, tmp_path: Path) -> None:
    fed = federation(COVEY_TEST_MIN_FIT="2", COVEY_TEST_MIN_AVAILABLE="2", COVEY_TEST_ROUNDS="2")
    server = fed.server()
    # A client with no certificate at all, and one whose certificate another CA issued.
    other = init_federation(tmp_path / "other", hosts=("127.0.0.1",))
    intruder = issue_client(tmp_path / "other", "intruder")
    stray = [
        fed._spawn(
            [
                "client",
                "--app",
                "digits_app:client_fn",
                "--cid",
                "7",
                "--server",
                f"127.0.0.1:{fed.port}",
                "--ca",
                str(fed.certs / "ca.pem"),
                "--max-attempts",
                "2",
            ],
            "nocert.log",
        ),
        fed._spawn(
            [
                "client",
                "--app",
                "digits_app:client_fn",
                "--cid",
                "6",
                "--server",
                f"127.0.0.1:{fed.port}",
                "--ca",
                str(fed.certs / "ca.pem"),
                "--cert",
                str(intruder.cert),
                "--key",
                str(intruder.key),
                "--max-attempts",
                "2",
            ],
            "othercert.log",
        ),
    ]
    del other
    assert fed.wait(stray[0], 60) == 1  # refused by the server, attempts spent
    # Another CA's certificate is refused by the client itself, before dialling (the
    # server's refusal of one is in test_handshake_events.py).
    assert fed.wait(stray[1], 60) == 2, fed.log("othercert.log")
    assert "was not issued by the CA in" in fed.log("othercert.log")
    good = [fed.client(k) for k in range(2)]
    assert fed.wait(server) == 0, fed.log("server.log")
    for proc in good:
        assert fed.wait(proc, 30) == 0
    assert not list(fed.markers.glob("fit-*-k6"))
    assert not list(fed.markers.glob("fit-*-k7"))
    _, history = fed.result()
    assert all(len(r.fit_participants) == 2 for r in history.rounds[1:])
    with RunStore.open(fed.run_dir) as store:
        assert set(store.clients()) == {"client-0", "client-1"}


def test_failed_handshakes_leave_no_grpc_log_lines(federation: Any, tmp_path: Path) -> None:
    """A refused handshake is told by covey's own dated line, not also by gRPC's ``I1207 ...``."""
    fed = federation(COVEY_TEST_MIN_FIT="1", COVEY_TEST_MIN_AVAILABLE="1", COVEY_TEST_ROUNDS="1")
    fed.env.pop("GRPC_VERBOSITY", None)
    server = fed.server()
    init_federation(tmp_path / "other", hosts=("127.0.0.1",))
    intruder = issue_client(tmp_path / "other", "intruder")
    common = ["client", "--app", "digits_app:client_fn", "--cid", "6", "--retry-for", "20"]
    common += ["--server", f"127.0.0.1:{fed.port}"]
    ca, cert, key = str(fed.certs / "ca.pem"), str(intruder.cert), str(intruder.key)
    strays = {  # the client refuses the server's certificate; then its own, another CA's
        "foreign-ca.log": ["--certs", str(tmp_path / "other"), "--name", "intruder"],
        "foreign-cert.log": ["--ca", ca, "--cert", cert, "--key", key],
    }
    for log, args in strays.items():
        assert fed.wait(fed._spawn([*common, *args], log), 60) == 2, fed.log(log)
    assert fed.wait(fed.client(0)) == 0
    assert fed.wait(server) == 0, fed.log("server.log")
    grpc_line = re.compile(r"(?m)^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]")
    for log in ("server.log", *strays):
        assert "certificate" in fed.log(log), fed.log(log)
        assert not grpc_line.search(fed.log(log)), fed.log(log)


def _tls_socket(fed: Federation, name: str) -> ssl.SSLSocket:
    paths = issue_client(fed.certs, name)
    ctx = ssl.create_default_context(cafile=str(fed.certs / "ca.pem"))
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", fed.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_garbage_on_the_server_port_is_survived(federation: Any) -> None:
    fed = federation(
        COVEY_TEST_MIN_FIT="2",
        COVEY_TEST_MIN_AVAILABLE="2",
        COVEY_TEST_ROUNDS="3",
        COVEY_TEST_SLOW_ROUND="2",
        COVEY_TEST_SLOW_SECONDS="2",
    )
    server = fed.server()
    clients = [fed.client(k) for k in range(2)]
    _wait_for(lambda: (fed.markers / "fit-r2-k0").exists(), 90, "round 2")
    # 1. random bytes on the raw TCP port
    rng = np.random.default_rng(0)
    with socket.create_connection(("127.0.0.1", fed.port), timeout=10) as sock:
        sock.sendall(rng.bytes(4096))
    # 2. a truncated HTTP/2 frame after a valid TLS handshake with a valid certificate
    with _tls_socket(fed, "prober") as tls:
        tls.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x10\x00\x04\x00\x00\x00\x00\x00\x00"
        )
    # 3. malformed protobuf and an oversized message through a real gRPC channel
    paths = issue_client(fed.certs, "fuzzer")
    creds = grpc.ssl_channel_credentials(
        (fed.certs / "ca.pem").read_bytes(), paths.key.read_bytes(), paths.cert.read_bytes()
    )
    with grpc.secure_channel(
        f"127.0.0.1:{fed.port}", creds, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        join = channel.stream_stream("/covey.v1.Federation/Join")
        for payload in (b"\xff\x13garbage", b"\x0a" + b"\x00" * (20 << 20)):
            with pytest.raises(grpc.RpcError):
                for _ in join(iter([payload]), timeout=10):
                    pass
    assert server.poll() is None
    assert fed.wait(server) == 0, fed.log("server.log")
    for proc in clients:
        assert fed.wait(proc, 30) == 0
    _, history = fed.result()
    assert [r.round for r in history.rounds] == [0, 1, 2, 3]
    assert all(r.fit_participants for r in history.rounds[1:])


def test_a_restarted_client_rejoins(federation: Any) -> None:
    fed = federation(
        COVEY_TEST_SLOW_ROUND="2",
        COVEY_TEST_MIN_FIT="3",
        COVEY_TEST_MIN_AVAILABLE="4",
        COVEY_TEST_ROUNDS="4",
    )
    server = fed.server("--round-timeout", "60")
    for k in range(4):
        fed.client(k)
    _wait_for(lambda: (fed.markers / "fit-r2-k3").exists(), 90, "round 2")
    fed.clients[3].send_signal(signal.SIGKILL)
    fed.clients[3].wait(10)
    fed.client(3)
    assert fed.wait(server) == 0, fed.log("server.log")
    _, history = fed.result()
    with RunStore.open(fed.run_dir) as store:
        cid = store.clients()["client-3"]
        events = [e[2] for e in store.events("client-3")]
    assert {f.cid for f in history[2].fit_failures} == {cid}
    assert cid in history[3].fit_participants
    assert cid in history[4].fit_participants
    assert events.count("join") + events.count("rejoin") >= 2


def test_server_killed_and_resumed_gives_the_same_weights(federation: Any) -> None:
    # Round 3 lingers, so the kill lands mid-run, after round 2 is saved.
    fed = federation(COVEY_TEST_SLOW_ROUND="3", COVEY_TEST_SLOW_SECONDS="2")
    server = fed.server()
    for k in range(N):
        fed.client(k)
    _wait_for(lambda: _saved_rounds(fed.run_dir) >= 2, 120, "round 2 to be saved")
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    with RunStore.open(fed.run_dir) as store:
        killed_after = store.last_round()
    assert killed_after is not None
    assert 2 <= killed_after < 5
    resumed = fed.server(resume=True)
    assert fed.wait(resumed) == 0, fed.log("server.log")
    for k, proc in fed.clients.items():
        assert fed.wait(proc, 60) == 0, fed.log(f"client-{k}.log")
    weights, history = fed.result()
    assert [r.round for r in history.rounds] == [0, 1, 2, 3, 4, 5]
    _assert_close(weights, _simulated(5))


def test_a_300_mb_model_travels_in_bounded_memory(federation: Any) -> None:
    fed = federation(COVEY_TEST_MB="300")
    fed_args = ["--app", "big_app:server_app"]
    server = fed.server(*fed_args)
    clients = [
        fed._spawn(
            [
                "client",
                "--app",
                "big_app:client_fn",
                "--cid",
                str(k),
                "--server",
                f"127.0.0.1:{fed.port}",
                "--certs",
                str(fed.certs),
                "--name",
                f"big-{k}",
            ],
            f"client-{k}.log",
        )
        for k in range(2)
        if issue_client(fed.certs, f"big-{k}")
    ]
    assert fed.wait(server, 300) == 0, fed.log("server.log")
    for proc in clients:
        assert fed.wait(proc, 60) == 0
    weights, history = fed.result()
    assert weights["w"].nbytes == 300 * 2**20
    assert np.all(weights["w"] == 2.0)
    assert history.rounds[-1].central_metrics["mean"] == 2.0
    model = 300 * 2**20
    peak = int((fed.markers / "server-peak").read_text())
    # The global model, its encoding, one upload buffer per client and the
    # accumulator: a fixed number of copies, whatever the model's size.
    assert peak < 7 * model, f"server peaked at {peak / model:.1f} model copies"


def test_settings_from_a_toml_file_and_insecure_mode(federation: Any, tmp_path: Path) -> None:
    import threading

    from covey.deploy import connect

    fed = federation(COVEY_TEST_MIN_FIT="2", COVEY_TEST_MIN_AVAILABLE="2")
    port_file = tmp_path / "toml-port"
    config = tmp_path / "server.toml"
    config.write_text(
        "[server]\n"
        'app = "digits_app:server_app"\n'
        'address = "127.0.0.1:0"\n'
        "insecure = true\n"
        "rounds = 2\n"
        f'run_dir = "{tmp_path / "toml-run"}"\n'
    )
    server = fed._spawn(
        ["server", "--config", str(config), "--port-file", str(port_file)], "toml.log"
    )
    _wait_for(lambda: port_file.exists() or server.poll() is not None, 60, "the server")
    port = int(port_file.read_text())
    threads = [
        threading.Thread(
            target=connect,
            args=(digits_app.client_fn(k), f"127.0.0.1:{port}"),
            kwargs={"insecure": True, "name": f"plain-{k}"},
        )
        for k in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert fed.wait(server) == 0, fed.log("toml.log")
    assert "WITHOUT TLS" in fed.log("toml.log")
    with RunStore.open(tmp_path / "toml-run") as store:
        assert store.last_round() == 2
        assert set(store.clients()) == {"plain-0", "plain-1"}


def test_serving_without_tls_or_insecure_is_refused() -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        covey.deploy.serve(covey.FedAvg(), 1, digits_app.initial(), "127.0.0.1:0")


def test_the_insecure_warning_names_no_port_0(caplog: pytest.LogCaptureFixture) -> None:
    # With port 0 the warning came before the port was chosen: "anyone who can
    # reach 127.0.0.1:0", an address nobody can reach.
    from covey.deploy._tls import server_tls

    with caplog.at_level("WARNING", logger="covey"):
        server_tls(None, None, True, "127.0.0.1:0")
        server_tls(None, None, True, "127.0.0.1:9092")
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == (
        "serving WITHOUT TLS: anyone who can reach 127.0.0.1 can join and see the model"
    )
    assert "127.0.0.1:9092 can join" in said[1]
