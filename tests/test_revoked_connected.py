"""A client whose certificate is revoked: what it logs, and what the server's stop says."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from cryptography import x509

import covey
from covey.deploy import tls_from_certs
from covey.deploy.certs import init_federation, issue_client, revoke
from covey.deploy.certs._revocation import serial_hex
from covey.transport.grpc._refusal import Refused

sys.path.insert(0, str(Path(__file__).parent))
from _killmatrix import wait_for
from _live import Joined, Served, WaitRunOut

pytestmark = pytest.mark.timeout(120)


def test_a_client_revoked_while_connected_is_refused_without_retrying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the server cancelled its stream, which the client logged as a lost
    # connection it would retry ("connection ... lost (CANCELLED); retrying"), then
    # reconnected only to be refused.
    caplog.set_level(logging.INFO, logger="covey")
    fed = init_federation(tmp_path / "fed").directory
    issue_client(fed, "a")
    run_out = WaitRunOut(monkeypatch)
    served = Served(covey.FedAvg(), 1, certs=fed, wait_timeout=60)
    site = Joined(served.port, tls=tls_from_certs(fed, "a"))
    try:
        wait_for(
            lambda: any(m.startswith("client a joined") for m in caplog.messages), 30, "a to join"
        )
        revoke(fed, "a")  # noticed at its next heartbeat
        site.join()
    finally:
        run_out.now()
        with pytest.raises(covey.FederationError) as stopped:  # it waits for 2 clients in vain
            served.join()
    assert isinstance(site.error, Refused), site.error
    assert site.error.cause == "the server refused this client: certificate revoked"
    assert not [m for m in caplog.messages if "retrying" in m]
    assert "; 1 connection refused in the wait: certificate revoked (client a, serial " in str(
        stopped.value
    )


def _serial(fed: Path, name: str) -> str:
    pem = tls_from_certs(fed, name).cert
    assert pem is not None
    return serial_hex(x509.load_pem_x509_certificate(pem).serial_number)


@pytest.mark.parametrize(
    ("strategy", "stop"),
    [
        (covey.FedAvg(), "round 1: only 0 of the 2 clients needed"),
        (
            covey.FedBuff(buffer_size=1, min_available_clients=2),
            "only 0 of the 2 clients needed (min_available_clients)",
        ),
    ],
)
def test_a_run_short_of_clients_names_the_connections_it_refused_meanwhile(
    tmp_path: Path, strategy: covey.Strategy, stop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: "only 0 of the 2 clients needed ... connected within 8.0 s", with no
    # word of the clients turned away for a revoked certificate in that time.
    fed = init_federation(tmp_path / "fed").directory
    for name in ("gone", "out"):
        issue_client(fed, name)
        revoke(fed, name)
    run_out = WaitRunOut(monkeypatch)
    served = Served(strategy, 1, certs=fed, wait_timeout=60)
    sites = [Joined(served.port, tls=tls_from_certs(fed, n)) for n in ("gone", "gone", "out")]
    for site in sites:
        site.join()
        assert isinstance(site.error, Refused), site.error
    run_out.now()
    with pytest.raises(covey.FederationError) as stopped:
        served.join()
    said = str(stopped.value)
    assert stop in said
    assert "s; 3 connections refused in the wait: certificate revoked (client " in said
    # counted by cause, in the order they came (the clients connect at once)
    assert f"certificate revoked (client gone, serial {_serial(fed, 'gone')}) x2" in said
    assert f"certificate revoked (client out, serial {_serial(fed, 'out')})" in said
