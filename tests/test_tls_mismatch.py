"""A client and a server that disagree on TLS: each end is told which one it is, once.

A client started with --insecure against a server with TLS retried for its
whole --retry-for (ten minutes by default) and gave up with status 1 saying
only "handshake closed: ... Socket closed"; a client with TLS against a server
started with --insecure was told its certificate came from another federation.
"""

from __future__ import annotations

import http.server
import sys
import threading
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


def test_a_client_with_tls_dialling_another_service_is_told_to_check_the_address(
    tmp_path: Path,
) -> None:
    # A wrong port, another service's (a plain HTTP server): the client was told only
    # that the server was started with --insecure and to serve with --certs.
    fed = tmp_path / "fed"
    init_federation(fed)
    issue_client(fed, "site")
    web = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    serving = threading.Thread(target=web.serve_forever, daemon=True)
    serving.start()
    try:
        with pytest.raises(Refused, match="does not speak TLS") as refused:
            connect(
                Fit(),
                f"127.0.0.1:{web.server_address[1]}",
                tls=tls_from_certs(fed, "site"),
                backoff=0.05,
                retry_for=30,
            )
        assert "a wrong host or port" in str(refused.value)
        assert "check --server" in str(refused.value)
    finally:
        web.shutdown()
        web.server_close()
        serving.join(10)
