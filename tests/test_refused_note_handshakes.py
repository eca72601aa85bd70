"""Failed TLS handshakes and refused data connections count in the stop short of clients."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

import covey
from covey.deploy import tls_from_certs
from covey.deploy.certs import init_federation, issue_client
from covey.transport.grpc import GrpcServerTransport
from covey.transport.grpc._refusal import Refused

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served, WaitRunOut

pytestmark = pytest.mark.timeout(120)


def test_a_run_short_of_clients_counts_the_tls_handshakes_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: "only 0 of the 2 clients needed ... connected within 10.0 s", with no word
    # of the client whose certificate another federation's CA signed (its handshakes
    # failed: gRPC never hands such a connection to the service, which counted only
    # the refusals it made itself).
    fed = init_federation(tmp_path / "fed", hosts=("127.0.0.1",)).directory
    other = init_federation(tmp_path / "other").directory
    issue_client(other, "stray")
    # Trusts this federation's server, but shows a certificate of the other CA.
    tls = replace(tls_from_certs(other, "stray"), ca=(fed / "ca.pem").read_bytes())
    run_out = WaitRunOut(monkeypatch)
    served = Served(covey.FedAvg(), 1, certs=fed, wait_timeout=60)
    site = Joined(served.port, tls=tls, retry_for=60)
    site.join(90)
    run_out.now()
    assert isinstance(site.error, Refused), site.error  # after the handshakes it lost
    with pytest.raises(covey.FederationError) as stopped:
        served.join()
    said = str(stopped.value)
    assert "round 1: only 0 of the 2 clients needed" in said, said
    assert " refused in the wait: TLS handshake failed from 127.0.0.1 (a client " in said, said


def test_refused_data_connections_count_in_the_wait() -> None:
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, data_port=0)
    try:
        mark = transport.refusals()
        data = transport._service.data
        assert data is not None
        assert transport.data_port is not None
        for _ in range(3):  # the 3rd is not logged (the 1st, 2nd, 4th are), but counted
            with socket.create_connection(("127.0.0.1", transport.data_port), timeout=10) as sock:
                sock.sendall(bytes([7]) + bytes(40))  # a direction that does not exist
                sock.settimeout(10)
                with contextlib.suppress(OSError):  # an empty read, or a reset
                    sock.recv(1)
        end = time.monotonic() + 30
        while data.listener.refused < 3 and time.monotonic() < end:
            time.sleep(0.02)
        assert transport.refused_since(mark) == (
            "3 connections refused in the wait: data connection from 127.0.0.1 closed: it "
            "asked for direction 7, which does not exist x3"
        )
    finally:
        transport.close()
