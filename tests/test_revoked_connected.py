"""A client whose certificate is revoked: what it logs, and what the server's stop says."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

import covey
from covey.deploy import tls_from_certs
from covey.deploy.certs import init_federation, issue_client, revoke
from covey.transport.grpc._refusal import Refused

sys.path.insert(0, str(Path(__file__).parent))
from _killmatrix import wait_for
from _live import Joined, Served

pytestmark = pytest.mark.timeout(120)


def test_a_client_revoked_while_connected_is_refused_without_retrying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the server cancelled its stream, which the client logged as a lost
    # connection it would retry ("connection ... lost (CANCELLED); retrying"), then
    # reconnected only to be refused.
    caplog.set_level(logging.INFO, logger="covey")
    fed = init_federation(tmp_path / "fed").directory
    issue_client(fed, "a")
    served = Served(covey.FedAvg(), 1, certs=fed, wait_timeout=10)
    site = Joined(served.port, tls=tls_from_certs(fed, "a"))
    try:
        wait_for(
            lambda: any(m.startswith("client a joined") for m in caplog.messages), 30, "a to join"
        )
        revoke(fed, "a")  # noticed at its next heartbeat
        site.join()
    finally:
        with pytest.raises(covey.FederationError):  # it waits for 2 clients in vain
            served.join()
    assert isinstance(site.error, Refused), site.error
    assert site.error.cause == "the server refused this client: certificate revoked"
    assert not [m for m in caplog.messages if "retrying" in m]
