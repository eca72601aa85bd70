"""The dashboard from outside: what a page on another site can reach, what every route serves."""

from __future__ import annotations

import http.client
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("starlette", reason="the dashboard extra is needed")

import covey
from covey.cli import app
from covey.core import RoundRecord
from covey.dashboard import DashboardServer
from covey.server import RunStore


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


def test_a_run_without_run_json_is_finished_when_all_its_rounds_are_there(
    tmp_path: Path,
) -> None:
    """A history.json alone (older covey, or `History.save`): finished as `covey runs list` says."""
    for name, rounds in (("complete", 2), ("short", 5)):
        covey.simulate(
            lambda cid: Half(), 2, 2, covey.FedAvg(), {"w": np.ones(3)}, run_dir=tmp_path / name
        )
        for kept in ("run.json", "run.sqlite"):  # an older covey's simulation kept neither
            (tmp_path / name / kept).unlink()
        shutil.rmtree(tmp_path / name / "weights")
        history = json.loads((tmp_path / name / "history.json").read_text())
        history["config"]["rounds"] = rounds
        (tmp_path / name / "history.json").write_text(json.dumps(history))
    with (
        DashboardServer(tmp_path, poll=0.1) as server,
        urllib.request.urlopen(server.url + "api/runs", timeout=30) as response,  # noqa: S310
    ):
        rows = {r["id"]: r for r in json.loads(response.read())["runs"]}
    assert rows["complete"]["status"] == "finished"
    assert rows["short"]["status"] == "unknown"
    listed = CliRunner().invoke(
        app, ["runs", "list", "--dir", str(tmp_path)], env={"COLUMNS": "200"}
    )
    row = next(line for line in listed.output.splitlines() if " complete " in line)
    assert "finished" in row


def test_a_report_of_a_crafted_history_holds_no_markup_from_it(tmp_path: Path) -> None:
    """Run files are data: strings where numbers belong are escaped in the report."""
    from covey.dashboard import write_report

    covey.simulate(
        lambda cid: Half(), 2, 2, covey.FedAvg(), {"w": np.ones(3)}, run_dir=tmp_path / "r"
    )
    path = tmp_path / "r" / "history.json"
    history = json.loads(path.read_text())
    evil = "<script>window.__pwned=1</script>"
    for record in history["rounds"]:
        record["durations"] = {"total": evil}
        record["central_loss"] = evil
    path.write_text(json.dumps(history))
    # without its store, as an older covey left it: the report reads the crafted file itself
    (tmp_path / "r" / "run.sqlite").unlink()
    text = write_report(tmp_path / "r", tmp_path / "report.html").read_text()
    assert "window.__pwned" in text  # shown, as text
    assert evil not in text


def test_another_loopback_address_answers_to_its_own_name(tmp_path: Path) -> None:
    """`--host 127.0.0.2` (loopback too) answers requests addressed to 127.0.0.2."""
    covey.simulate(
        lambda cid: Half(), 2, 1, covey.FedAvg(), {"w": np.ones(3)}, run_dir=tmp_path / "a"
    )
    with DashboardServer(tmp_path, host="127.0.0.2", port=0) as server:
        conn = http.client.HTTPConnection("127.0.0.2", server.port, timeout=30)
        try:
            conn.request("GET", "/api/runs")
            response = conn.getresponse()
            assert response.status == 200
            assert b'"id":"a"' in response.read()
        finally:
            conn.close()


def test_a_run_whose_process_dies_while_watched_turns_stopped(tmp_path: Path) -> None:
    """Its files do not change when it is killed: the lock let go must still reach the page."""
    import fcntl
    import os

    covey.simulate(
        lambda cid: Half(), 2, 2, covey.FedAvg(), {"w": np.ones(3)}, run_dir=tmp_path / "v"
    )
    meta = json.loads((tmp_path / "v" / "run.json").read_text())
    meta["status"] = "running"  # as a simulation writes it until it ends
    (tmp_path / "v" / "run.json").write_text(json.dumps(meta))
    with RunStore.open(tmp_path / "v") as store:  # its checkpoints say so too
        store.set_status("running")
    fd = os.open(tmp_path / "v" / "run.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the simulation's process, alive

    def status(url: str) -> Any:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (our server)
            data = json.loads(response.read())
        return data["runs"][0]["status"] if "runs" in data else data["status"]

    try:
        with DashboardServer(tmp_path, poll=0.1) as server:
            assert status(server.url + "api/runs") == "running"
            assert status(server.url + "api/run?id=v") == "running"
            os.close(fd)  # killed: the lock goes with the process
            fd = -1
            assert status(server.url + "api/runs") == "stopped"
            assert status(server.url + "api/run?id=v") == "stopped"
    finally:
        if fd >= 0:
            os.close(fd)


def test_a_run_folder_named_in_bytes_that_are_not_utf8_gets_an_id_a_url_can_hold(
    tmp_path: Path,
) -> None:
    """A folder named in Latin-1 (`café` as bytes) is listed and opened by its id.

    Its name reached the page as a lone surrogate, on which the browser's
    ``encodeURIComponent`` throws: the list of runs showed only "URI malformed".
    """
    import os
    import urllib.parse

    runs = tmp_path / "runs"
    covey.simulate(lambda cid: Half(), 2, 1, covey.FedAvg(), {"w": np.ones(3)}, run_dir=runs / "ok")
    shutil.copytree(runs / "ok", runs / os.fsdecode(b"caf\xe9 run"))  # named in Latin-1
    with DashboardServer(runs, poll=0.1) as server:
        with urllib.request.urlopen(server.url + "api/runs", timeout=30) as response:  # noqa: S310
            ids = sorted(r["id"] for r in json.loads(response.read())["runs"])
        assert ids == ["caf\\xe9 run", "ok"]
        for run_id in ids:
            url = server.url + "api/run?id=" + urllib.parse.quote(run_id.encode("utf-8"), safe="")
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
                assert json.loads(response.read())["rounds_done"] == 1
    from covey.dashboard import write_report

    report = write_report(runs / os.fsdecode(b"caf\xe9 run"), tmp_path / "report.html")
    assert "covey run caf\\xe9 run" in report.read_text(encoding="utf-8")


def test_a_folder_named_like_an_escaped_byte_gets_its_own_id(tmp_path: Path) -> None:
    r"""Folders named ``caf`` + byte 0xE9 and ``caf\xe9`` (a backslash, x, e, 9) differ.

    Both got the id ``caf\xe9``, and both ids opened the first: the other could
    not be opened, and its page showed the first one's rounds.
    """
    import os
    import urllib.parse

    runs = tmp_path / "runs"
    covey.simulate(lambda cid: Half(), 2, 1, covey.FedAvg(), {"w": np.ones(3)}, run_dir=runs / "a")
    covey.simulate(lambda cid: Half(), 2, 2, covey.FedAvg(), {"w": np.ones(3)}, run_dir=runs / "b")
    (runs / "a").rename(runs / os.fsdecode(b"caf\xe9"))
    (runs / "b").rename(runs / "caf\\xe9")
    with DashboardServer(runs, poll=0.1) as server:
        with urllib.request.urlopen(server.url + "api/runs", timeout=30) as response:  # noqa: S310
            listed = {r["id"]: r["rounds_done"] for r in json.loads(response.read())["runs"]}
        assert listed == {"caf\\xe9": 1, "caf\\\\xe9": 2}
        for run_id, rounds in listed.items():
            url = server.url + "api/run?id=" + urllib.parse.quote(run_id.encode("utf-8"), safe="")
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
                got = json.loads(response.read())
            assert (got["id"], got["rounds_done"]) == (run_id, rounds)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("fit_participants", 5, "round 1: 'fit_participants' must be a list of client ids"),
        ("fit_participants", [[0]], "round 1: 'fit_participants' must be a list of client ids"),
        ("fit_failures", "boom", "round 1: 'fit_failures' must be a list of failures"),
        ("privacy", 3, "round 1: 'privacy' must be an object or null"),
    ],
)
def test_a_round_of_the_wrong_shape_is_named_not_served(
    tmp_path: Path, field: str, value: Any, says: str
) -> None:
    """A round whose fields have the wrong types makes its run unreadable, with the reason.

    Served as read, such a round stopped the page's script (the run stayed at
    "Loading…"), and in a deployed run the clients table answered 500. A run
    whose ``run.sqlite`` keeps the rounds is shown from there instead, saying why.
    """
    runs = tmp_path / "runs"
    covey.simulate(
        lambda cid: Half(), 2, 2, covey.FedAvg(), {"w": np.ones(3)}, run_dir=runs / "sim"
    )
    store = RunStore.create(runs / "fed", config={"rounds": 2, "strategy": "FedAvg"})
    try:
        cid = store.client_id("site-a")
        store.save_round(1, {"w": np.ones(2)}, RoundRecord(round=1, fit_participants=[cid]))
    finally:
        store.close()
    covey.History([RoundRecord(round=0), RoundRecord(round=1, fit_participants=[cid])]).save(
        runs / "fed" / "history.json"
    )
    (runs / "plain").mkdir()
    shutil.copy(runs / "sim" / "history.json", runs / "plain" / "history.json")
    for name in ("sim", "fed", "plain"):
        path = runs / name / "history.json"
        history = json.loads(path.read_text())
        history["rounds"][1][field] = value
        path.write_text(json.dumps(history))
    with DashboardServer(runs, poll=0.1) as server:
        status, body = _get(server.port, "/api/runs")
        assert status == 200, body
        rows = {r["id"]: r for r in json.loads(body)["runs"]}
        assert rows["plain"]["status"] == "unreadable"
        assert says in rows["plain"]["error"]
        status, body = _get(server.port, "/api/run?id=plain")
        assert status == 422
        assert says in json.loads(body)["error"]
        for name in ("sim", "fed"):  # their run.sqlite keeps every round as it was
            assert says in rows[name]["warning"]
            status, body = _get(server.port, f"/api/run?id={name}")
            assert status == 200, body
            run = json.loads(body)
            assert says in run["warning"]
            assert run["rounds"][-1]["round"] == (2 if name == "sim" else 1)
            assert all(r[field] != value for r in run["rounds"] if field in r)


@pytest.mark.parametrize(
    ("given", "bound", "url"),
    [
        ("127.0.0.2", "127.0.0.2", "http://127.0.0.2:8765/"),
        ("[::1]", "::1", "http://[::1]:8765/"),
        ("::1", "::1", "http://[::1]:8765/"),
    ],
)
def test_the_command_takes_any_loopback_address_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, bound: str, url: str
) -> None:
    """`--host 127.0.0.2` is this machine only; `--host [::1]`, as URLs write it, binds ::1.

    The command warned that anyone could reach a loopback address other than
    127.0.0.1, and could not bind `[::1]` (the form the URL it prints uses).
    """
    from covey.dashboard import _server

    calls: list[str] = []

    def serve(runs_dir: Path, host: str, port: int, **kwargs: Any) -> None:
        calls.append(host)
        kwargs["on_listen"](port)

    monkeypatch.setattr(_server, "serve_dashboard", serve)
    result = CliRunner().invoke(app, ["dashboard", str(tmp_path), "--host", given])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert calls == [bound]
    assert url in result.output


def test_a_dashboard_server_takes_an_ipv6_address_in_brackets(tmp_path: Path) -> None:
    """`DashboardServer(host="[::1]")` listens on ::1 and names itself by a working URL."""
    covey.simulate(
        lambda cid: Half(), 2, 1, covey.FedAvg(), {"w": np.ones(3)}, run_dir=tmp_path / "a"
    )
    with (
        DashboardServer(tmp_path, host="[::1]") as server,
        urllib.request.urlopen(server.url + "api/runs", timeout=30) as response,  # noqa: S310
    ):
        assert server.url.startswith("http://[::1]:")
        assert json.loads(response.read())["runs"][0]["id"] == "a"


def test_a_run_request_without_an_id_says_the_id_is_missing(dashboard: Any) -> None:
    """It answered 404 "no run '' in ...", as if a run named '' had been asked for."""
    for path in ("/api/run", "/api/run?id=", "/api/stream"):
        status, body = _get(dashboard.port, path)
        assert status == 400, (path, status)
        assert b"?id=RUN" in body


@pytest.mark.parametrize("given", ["", "[]", " "])
def test_an_empty_host_is_refused_not_bound_to_every_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """`--host ""` (an unset variable) listened on 0.0.0.0 and printed `http://:8765/`."""
    from covey.dashboard import _server

    calls: list[str] = []
    monkeypatch.setattr(_server, "serve_dashboard", lambda *a, **k: calls.append(a[1]))
    result = CliRunner().invoke(app, ["dashboard", str(tmp_path), "--host", given])
    assert result.exit_code == 2, result.output
    assert "--host" in result.output
    assert "every address" in result.output
    assert calls == []
    with pytest.raises(ValueError, match="host is empty"):
        DashboardServer(tmp_path, host=given)
