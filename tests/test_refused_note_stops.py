"""Every stop short of clients (or sites) names the connections refused while it waited."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509

import covey
from covey.core._history import RoundRecord
from covey.deploy import tls_from_certs
from covey.deploy._over import tell_returning_clients
from covey.deploy.certs import init_federation, issue_client, revoke
from covey.deploy.certs._revocation import serial_hex
from covey.server import RoundLoop
from covey.server._lasteval import _federated
from covey.transport.grpc._refusal import Refused

sys.path.insert(0, str(Path(__file__).parent))
from _killmatrix import wait_for
from _live import Joined, Served, WaitRunOut

pytestmark = pytest.mark.timeout(120)

NOTE = "2 connections refused in the wait: certificate revoked (client gone, serial 0A) x2"


def _revoked(tmp_path: Path) -> Path:
    fed = init_federation(tmp_path / "fed", hosts=("localhost", "127.0.0.1")).directory
    issue_client(fed, "ok")
    issue_client(fed, "gone")
    revoke(fed, "gone")
    return fed


def _serial(fed: Path, name: str) -> str:
    pem = tls_from_certs(fed, name).cert
    assert pem is not None
    return serial_hex(x509.load_pem_x509_certificate(pem).serial_number)


def _turned_away(port: int, fed: Path) -> None:
    """Two connections of the revoked client ``gone``, each refused."""
    sites = [Joined(port, tls=tls_from_certs(fed, "gone")) for _ in range(2)]
    for site in sites:
        site.join()
        assert isinstance(site.error, Refused), site.error


def test_a_round_short_of_clients_that_pass_where_names_the_refused_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: "round 1: the strategy wants 1 client to train but only 0 clients pass
    # where= ... within the 8 s wait", with no word of the connections refused meanwhile.
    caplog.set_level(logging.INFO, logger="covey")
    fed = _revoked(tmp_path)
    strategy = covey.FedAvg(
        min_fit_clients=1,
        min_available_clients=1,
        fraction_evaluate=0.0,
        where=lambda props: bool(props.get("gpu")),
    )
    run_out = WaitRunOut(monkeypatch)
    served = Served(strategy, 1, certs=fed, wait_timeout=60)
    ok = Joined(served.port, tls=tls_from_certs(fed, "ok"))
    try:
        wait_for(
            lambda: any("waiting for clients: 1 wanted" in m for m in caplog.messages),
            60,
            "the round to wait for a client that passes where=",
        )
        _turned_away(served.port, fed)  # refused in the wait's later polls, not its first
    finally:
        run_out.now()
        with pytest.raises(covey.FederationError) as stopped:
            served.join()
        ok.join()
    said = str(stopped.value)
    assert "only 0 clients pass where=" in said, said
    assert said.endswith(NOTE.replace("0A", _serial(fed, "gone"))), said


def test_a_covey_query_short_of_sites_names_the_refused_connections(tmp_path: Path) -> None:
    # Before: "only 0 of 1 sites joined within 8 s (--wait-timeout)", and no more.
    fed = _revoked(tmp_path)
    port_file = tmp_path / "port"
    command = [sys.executable, "-m", "covey", "query", "SELECT COUNT(*) FROM patients"]
    command += ["--server", "127.0.0.1:0", "--certs", str(fed), "--no-secure"]
    command += ["--wait-timeout", "8", "--port-file", str(port_file)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    ) as proc:
        try:
            wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, "a port")
            _turned_away(int(port_file.read_text()), fed)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert proc.returncode == 1, (out, err)
    said = " ".join(err.split())  # the console may wrap the line
    assert (
        "only 0 of 1 sites joined within 8 s (--wait-timeout); "
        + NOTE.replace("0A", _serial(fed, "gone"))
        in said
    ), err


class _Waited:
    """A transport whose waits run out, having refused two connections."""

    refused_in_wait = "2 connections refused in the wait: certificate revoked (client a) x2"

    def wait_for_clients(self, count: int, timeout: float | None) -> bool:
        return False


def test_telling_returning_clients_names_the_connections_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="covey")
    tell_returning_clients(True, _Waited(), ["a"], 10, 1.0, 3)
    assert (
        "not every client came back within 1 s; 2 connections refused in the wait: "
        "certificate revoked (client a) x2" in caplog.messages
    ), caplog.messages


class _NoneBack(_Waited):
    """A server's transport none of whose clients came back for the final evaluation."""

    def clients(self) -> list[int]:
        return []

    def exchange(self, tasks: Any, *, timeout: float | None = None) -> Any:
        raise AssertionError("an evaluation with no client asks none")

    def close(self) -> None:
        pass


def test_a_final_evaluation_short_of_clients_names_the_connections_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Before: two lines, "round 3: the final evaluation waited 5.0 s for 2 client(s); 2
    # connections refused ..." and then "round 3: skipping federated evaluation: ...".
    caplog.set_level(logging.INFO, logger="covey")
    strategy = covey.FedAvg(min_available_clients=2, min_evaluate_clients=2)
    loop = RoundLoop(strategy, _NoneBack(), {"w": np.zeros(1)}, wait_timeout=5.0)
    assert not _federated(loop, 3, RoundRecord(round=3))
    assert [m for m in caplog.messages if m.startswith("round 3")] == [
        "round 3: skipping federated evaluation: 2 clients wanted, only 0 clients are "
        "available (the final evaluation waited 5.0 s for 2 clients); 2 connections "
        "refused in the wait: certificate revoked (client a) x2"
    ], caplog.messages
