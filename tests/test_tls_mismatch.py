"""A client and a server that disagree on TLS: each end is told which one it is, once.

A client started with --insecure against a server with TLS retried for its
whole --retry-for (ten minutes by default) and gave up with status 1 saying
only "handshake closed: ... Socket closed"; a client with TLS against a server
started with --insecure was told its certificate came from another federation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from covey.deploy._client import tls_from_certs
from covey.deploy._tls import tls_from_dir
from covey.deploy.certs import init_federation, issue_client
from covey.transport.grpc._client import connect
from covey.transport.grpc._refusal import Refused
from covey.transport.grpc._server import GrpcServerTransport

sys.path.insert(0, str(Path(__file__).parent))
from _live import Fit

pytestmark = pytest.mark.timeout(120)


def test_a_client_without_tls_is_refused_by_a_server_with_tls(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    init_federation(fed)
    transport = GrpcServerTransport("127.0.0.1:0", tls=tls_from_dir(fed), heartbeat=5.0)
    try:
        with pytest.raises(Refused, match="the server requires TLS") as refused:
            connect(Fit(), f"127.0.0.1:{transport.port}", insecure=True, backoff=0.05, retry_for=60)
        assert "give --certs" in str(refused.value)
    finally:
        transport.close()


def test_a_client_with_tls_is_told_the_server_does_not_speak_it(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    init_federation(fed)
    issue_client(fed, "site")
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    try:
        with pytest.raises(Refused, match="the server does not speak TLS") as refused:
            connect(
                Fit(),
                f"127.0.0.1:{transport.port}",
                tls=tls_from_certs(fed, "site"),
                backoff=0.05,
                retry_for=60,
            )
        assert "another federation" not in str(refused.value)
    finally:
        transport.close()
