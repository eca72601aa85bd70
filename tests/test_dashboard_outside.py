"""The dashboard from outside: what a page on another site can reach, what every route serves."""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the dashboard extra is needed")

import covey
from covey.dashboard import DashboardServer


class Half(covey.Client):
    """Halves the weights."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=float(np.abs(weights["w"]).sum()), num_examples=1)


def _get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {} if host is None else {"Host": host}
        conn.request("GET", path, headers=headers)  # a Host header given replaces the default
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def dashboard(tmp_path: Path) -> Any:
    """A dashboard on 127.0.0.1 over one finished run named ``a``."""
    covey.simulate(
        lambda cid: Half(), 2, 2, covey.FedAvg(), {"w": np.ones(3)}, run_dir=tmp_path / "runs" / "a"
    )
    (tmp_path / "secret.txt").write_text("not a run file")
    with DashboardServer(tmp_path / "runs", poll=0.1) as server:
        yield server


def test_a_page_on_another_site_cannot_read_the_runs(dashboard: Any) -> None:
    """DNS rebinding: a request naming another host is refused; this machine's names work."""
    port = dashboard.port
    for path in ("/", "/api/runs", "/api/run?id=a", "/static/app.js"):
        status, body = _get(port, path, host=f"attacker.example:{port}")
        assert status == 400, (path, status)
        assert b'"runs"' not in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"LOCALHOST:{port}"):
        status, body = _get(port, "/api/runs", host=host)
        assert status == 200, host
        assert b'"id":"a"' in body


def test_no_route_serves_a_file_outside_the_page(dashboard: Any) -> None:
    """Path traversal on every route, plain and percent-encoded, finds nothing."""
    port = dashboard.port
    probes = [
        f"{prefix}{dots}secret.txt"
        for prefix in ("/", "/static/", "/vendor/", "/api/", "/api/run?id=", "/api/stream?id=")
        for dots in ("../", "../../", "%2e%2e/", "..%2f..%2f", "%2e%2e%2f%2e%2e%2f", "....//")
    ]
    probes += ["/api/run?id=/etc/passwd", "/static//etc/passwd", "/vendor/../../etc/passwd"]
    for path in probes:
        status, body = _get(port, path)
        assert status in (400, 404, 405), (path, status)
        assert b"not a run file" not in body
        assert b"root:" not in body
