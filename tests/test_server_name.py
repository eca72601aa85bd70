"""Dialling a server by an address its certificate does not name: ``server_name``.

The server listens on 127.0.0.1 with a certificate issued for ``fl.example.org``
only (as behind a load balancer, or dialled by IP): the client names the host
the certificate is for, and TLS checks the certificate against that name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.deploy import tls_from_certs
from covey.deploy.certs import init_federation, issue_client

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

APPS = Path(__file__).parent / "apps"
HOST = "fl.example.org"

pytestmark = pytest.mark.timeout(180)


def _federation(tmp_path: Path) -> Path:
    fed = tmp_path / "fed"
    init_federation(fed, hosts=(HOST,))  # not the 127.0.0.1 the clients dial
    issue_client(fed, "a")
    return fed


def _one_client() -> covey.Strategy:
    return covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)


def test_connect_with_the_name_the_certificate_gives(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    served = Served(_one_client(), 1, certs=fed)
    client = Joined(served.port, tls=tls_from_certs(fed, "a"), server_name=HOST)
    client.join(60)
    assert client.error is None, client.error
    assert client.result is not None
    assert client.result.tasks == 1
    assert served.join(60).history.rounds[-1].round == 1


def test_tls_from_certs_takes_the_server_name(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    served = Served(_one_client(), 1, certs=fed)
    client = Joined(served.port, tls=tls_from_certs(fed, "a", server_name=HOST))
    client.join(60)
    assert client.error is None, client.error
    served.join(60)


def test_covey_client_server_name_flag(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    served = Served(_one_client(), 1, certs=fed)
    env = {**os.environ, "COLUMNS": "250"}
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")])
    args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--retry-for", "30"]
    args += ["--server", f"127.0.0.1:{served.port}", "--certs", str(fed), "--name", "a"]
    run = subprocess.run(
        [sys.executable, "-m", "covey", *args, "--server-name", HOST],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "done: 1 task(s)" in run.stderr
    served.join(60)


def test_without_the_name_the_refusal_says_how_to_give_it(tmp_path: Path) -> None:
    from covey.transport.grpc._refusal import Refused

    fed = _federation(tmp_path)
    served = Served(_one_client(), 1, certs=fed, wait_timeout=3)
    client = Joined(served.port, tls=tls_from_certs(fed, "a"), retry_for=5)
    client.join(30)
    assert isinstance(client.error, Refused), client.error
    assert "--server-name" in client.error.cause
    with pytest.raises(covey.FederationError):
        served.join(30)


def test_a_wrong_server_name_is_named_in_the_refusal(tmp_path: Path) -> None:
    from covey.transport.grpc._refusal import Refused

    fed = _federation(tmp_path)
    served = Served(_one_client(), 1, certs=fed, wait_timeout=3)
    wrong = "other.example.org"
    client = Joined(served.port, tls=tls_from_certs(fed, "a"), server_name=wrong, retry_for=5)
    client.join(30)
    assert isinstance(client.error, Refused), client.error
    assert f"does not name {wrong!r}" in client.error.cause
    assert "give that name with" not in client.error.cause  # it was given, and is not it
    with pytest.raises(covey.FederationError):
        served.join(30)


def test_server_name_without_tls_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--insecure"]
    result = CliRunner().invoke(
        app, [*args, "--server", "127.0.0.1:9", "--server-name", HOST], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 2
    assert "--server-name needs TLS" in result.output
    with pytest.raises(ValueError, match="server_name needs TLS"):
        covey.connect(covey.Client(), "127.0.0.1:9", insecure=True, server_name=HOST)
