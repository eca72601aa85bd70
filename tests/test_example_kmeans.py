"""examples/federated_kmeans.py: task kinds of one's own give the same centroids everywhere.

The example registers its kinds when it is imported; a deployed client (``covey
client --app federated_kmeans:client_fn``, as its docstring says) and a worker
process started afresh learn them so. Its sums are of integer pixels, exact in
any order, so every route gives the simulated centroids bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import covey.clients._client as client_module
from _live import Joined
from covey.sim import ProcessTransport
from covey.transport.grpc import GrpcServerTransport

pytestmark = [pytest.mark.timeout(240), pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def kmeans(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The example, imported as ``covey client`` imports it (its kinds registered for the test)."""
    # covey's own kinds registered first: one first imported during the test would go to
    # the copy alone, and the next test's runtime would not know it.
    client_module.task_kinds()
    monkeypatch.setattr(client_module, "_HANDLERS", dict(client_module._HANDLERS))
    monkeypatch.setattr(sys, "path", [str(EXAMPLES), *sys.path])
    monkeypatch.delitem(sys.modules, "federated_kmeans", raising=False)
    import federated_kmeans

    yield federated_kmeans
    sys.modules.pop("federated_kmeans", None)


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, *sys.path]), "COLUMNS": "250"}


def _clients(port: int, count: int) -> list[subprocess.Popen[bytes]]:
    """``covey client --app federated_kmeans:client_fn`` for each site, run from examples/."""
    return [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "covey", "client"),
                *("--app", "federated_kmeans:client_fn", "--cid", str(cid)),
                *("--server", f"127.0.0.1:{port}", "--insecure", "--max-attempts", "5"),
            ],
            cwd=EXAMPLES,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for cid in range(count)
    ]


def _ended(procs: list[subprocess.Popen[bytes]]) -> list[str]:
    """Wait (bounded) for ``procs``; their output. A process still running is killed."""
    out = []
    for proc in procs:
        try:
            text, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate(timeout=10)
        out.append(text.decode(errors="replace"))
    return out


_REPORTED: list[str] = []


def _simulated_report(kmeans: ModuleType, capsys: pytest.CaptureFixture[str]) -> str:
    """What the example's ``report`` prints of its simulated run: its scikit-learn fit, once."""
    if not _REPORTED:
        capsys.readouterr()
        kmeans.report(kmeans.simulate())
        _REPORTED.append(capsys.readouterr().out)
    return _REPORTED[0]


def test_the_simulated_k_means_is_near_sklearn_s_on_the_pooled_data(
    kmeans: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    result = kmeans.simulate()
    assert 1 < len(result.inertia) < kmeans.ROUNDS  # it stopped once no centroid moved
    assert result.inertia == sorted(result.inertia, reverse=True)
    said = kmeans.report(result)
    assert said["federated"] <= 1.01 * said["sklearn"]
    assert "federated k-means inertia" in capsys.readouterr().out


def test_deployed_clients_in_this_process_give_the_simulated_centroids(
    kmeans: ModuleType,
) -> None:
    want = kmeans.simulate()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    clients = [
        Joined(transport.port, kmeans.client_fn(cid), name=f"site-{cid}", max_attempts=1)
        for cid in range(kmeans.NUM_CLIENTS)
    ]
    try:
        assert transport.wait_for_clients(kmeans.NUM_CLIENTS, 30)
        got = kmeans.kmeans(transport)
    finally:
        transport.close()
        for client in clients:
            client.join(30)
    assert [c.error for c in clients] == [None] * kmeans.NUM_CLIENTS
    np.testing.assert_array_equal(got.centroids, want.centroids)
    assert len(got.inertia) == len(want.inertia)
    np.testing.assert_allclose(got.inertia, want.inertia, rtol=1e-12)


@pytest.mark.slow
def test_covey_client_processes_as_the_docstring_says_give_the_simulated_centroids(
    kmeans: ModuleType,
) -> None:
    assert "covey client --app federated_kmeans:client_fn --cid 0" in (kmeans.__doc__ or "")
    want = kmeans.simulate()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    procs = _clients(transport.port, kmeans.NUM_CLIENTS)
    try:
        joined = transport.wait_for_clients(kmeans.NUM_CLIENTS, 120)
        got = kmeans.kmeans(transport) if joined else None
    finally:
        transport.close()
        logs = _ended(procs)
    assert got is not None, logs
    assert [p.returncode for p in procs] == [0] * kmeans.NUM_CLIENTS, logs
    np.testing.assert_array_equal(got.centroids, want.centroids)


@pytest.mark.slow
def test_the_example_served_and_its_clients_print_the_simulated_inertia(
    kmeans: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    simulated = _simulated_report(kmeans, capsys)
    server = subprocess.Popen(
        [sys.executable, "federated_kmeans.py", "--serve", "127.0.0.1:0"],
        cwd=EXAMPLES,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    procs = [server]
    try:
        assert server.stdout is not None
        first = server.stdout.readline().decode()  # ends at once if the server failed
        port = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", first)
        assert port is not None, first
        procs += _clients(int(port.group(1)), kmeans.NUM_CLIENTS)
        with contextlib.suppress(subprocess.TimeoutExpired):  # then killed, its log shown
            server.wait(timeout=180)  # its report fits scikit-learn's k-means too
    finally:
        logs = _ended(procs)
    assert [p.returncode for p in procs] == [0] * len(procs), logs
    assert logs[0].splitlines()[-2:] == simulated.splitlines()


_SAVING_APP = """
import numpy as np

import federated_kmeans
from covey.deploy import ServerApp


def main(transport):
    result = federated_kmeans.server().main(transport)  # the example's own loop
    np.save("centroids.npy", result.centroids)
    return result


def server():
    return ServerApp(main=main)
"""


@pytest.mark.slow
def test_covey_server_running_the_example_s_app_gives_the_simulated_centroids(
    kmeans: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "covey server --app federated_kmeans:server --insecure" in (kmeans.__doc__ or "")
    assert kmeans.server().main is kmeans.main
    want = kmeans.simulate()
    simulated = _simulated_report(kmeans, capsys)
    # The example's app, whose centroids a module beside it saves for this test to compare.
    (tmp_path / "saving_kmeans.py").write_text(_SAVING_APP)
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES), env["PYTHONPATH"]])
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "covey", "server", "--app", "saving_kmeans:server"),
            *("--insecure", "--address", "127.0.0.1:0", "--port-file", str(port_file)),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    procs = [server]
    try:
        for _ in range(600):  # 60 s at most
            if port_file.is_file() and port_file.read_text().strip():
                break
            assert server.poll() is None, server.communicate(timeout=10)[0]
            time.sleep(0.1)
        procs += _clients(int(port_file.read_text()), kmeans.NUM_CLIENTS)
        with contextlib.suppress(subprocess.TimeoutExpired):  # then killed, its log shown
            server.wait(timeout=180)
    finally:
        logs = _ended(procs)
    assert [p.returncode for p in procs] == [0] * len(procs), logs
    np.testing.assert_array_equal(np.load(tmp_path / "centroids.npy"), want.centroids)
    lines = logs[0].splitlines()
    assert [line for line in lines if "inertia" in line] == simulated.splitlines(), logs[0]
    assert "the app's loop returned" in lines[-1], logs[0]
    assert not (tmp_path / "runs").exists()  # a loop of its own keeps no run folder
    assert all("server said: the run is over" in log for log in logs[1:]), logs


@pytest.mark.parametrize("method", ["spawn"])
def test_worker_processes_started_afresh_give_the_simulated_centroids(
    kmeans: ModuleType, method: str
) -> None:
    # A worker unpickles client_fn by importing its module, which registers the kinds.
    want = kmeans.simulate()
    with ProcessTransport(
        kmeans.client_fn, kmeans.NUM_CLIENTS, num_workers=2, start_method=method
    ) as processes:
        got = kmeans.kmeans(processes)
    np.testing.assert_array_equal(got.centroids, want.centroids)
