"""The dashboard's reading of runs, its HTTP API and event stream, TLS, ``covey runs report``."""

from __future__ import annotations

import json
import re
import ssl
import threading
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("starlette", reason="the dashboard extra is needed")

import covey
from _sse import next_event
from covey.cli import app
from covey.core import Failure, RoundRecord
from covey.dashboard import DashboardServer, RunReadError, discover_runs, read_run
from covey.dashboard import _runjson as runjson_module
from covey.server import RunStore
from covey.server._outputs import write_outputs
from covey.sim import SimulationResult


class Half(covey.Client):
    """Halves the weights; reports a loss that shrinks with them."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        loss = float(np.abs(weights["w"]).sum())
        return covey.EvaluateResult(loss=loss, num_examples=1, metrics={"accuracy": 1 / (1 + loss)})


def _simulate(run_dir: Path, rounds: int = 3, **kwargs: Any) -> SimulationResult:
    def central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
        loss = float(np.abs(weights["w"]).sum())
        return loss, {"accuracy": 1 / (1 + loss)}

    return covey.simulate(
        lambda cid: Half(),
        num_clients=4,
        rounds=rounds,
        strategy=covey.FedAvg(),
        initial_weights={"w": np.ones(3)},
        evaluate_fn=central,
        run_dir=run_dir,
        **kwargs,
    )


def _get(url: str, context: ssl.SSLContext | None = None) -> Any:
    with urllib.request.urlopen(url, timeout=30, context=context) as response:  # noqa: S310 (our server)
        return json.loads(response.read())


def test_runs_are_found_and_summarized(tmp_path: Path) -> None:
    _simulate(tmp_path / "a")
    _simulate(tmp_path / "group" / "b", rounds=2)
    (tmp_path / "empty").mkdir()
    assert discover_runs(tmp_path) == [("a", tmp_path / "a"), ("group/b", tmp_path / "group" / "b")]
    assert discover_runs(tmp_path / "a") == [("a", tmp_path / "a")]
    with DashboardServer(tmp_path) as server:
        rows = {r["id"]: r for r in _get(server.url + "api/runs")["runs"]}
        run = _get(server.url + "api/run?id=group/b")
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(server.url + "api/run?id=../a")
    a = rows["a"]
    assert (a["kind"], a["status"], a["strategy"]) == ("simulated", "finished", "FedAvg")
    assert (a["rounds_done"], a["rounds_planned"]) == (3, 3)
    assert a["best"] == {"name": "test accuracy", "value": pytest.approx(1 / 1.375), "round": 3}
    history = covey.History.from_json((tmp_path / "group" / "b" / "history.json").read_text())
    assert run["rounds"] == history.to_dict()["rounds"]


def test_unreadable_runs_are_named_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "history.json").write_text("{not json")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "history.json").write_text('{"rounds": [{"round": -1}]}')
    _simulate(tmp_path / "big")
    monkeypatch.setattr(runjson_module, "MAX_JSON_BYTES", 100)
    monkeypatch.setattr(runjson_module, "MAX_SETTINGS_BYTES", 100)  # run.json's, as covey runs'
    with pytest.raises(RunReadError, match="over the 100-byte cap"):
        read_run("big", tmp_path / "big")
    with pytest.raises(RunReadError, match="no valid 'round' number"):
        read_run("odd", tmp_path / "odd")
    with DashboardServer(tmp_path) as server:
        rows = {r["id"]: r for r in _get(server.url + "api/runs")["runs"]}
        assert {r["status"] for r in rows.values()} == {"unreadable"}
        assert "cannot read" in rows["bad"]["error"]
        with pytest.raises(urllib.error.HTTPError, match="422"):
            _get(server.url + "api/run?id=bad")


def test_new_fields_and_non_finite_values_reach_the_page(tmp_path: Path) -> None:
    run = tmp_path / "dp"
    _simulate(run, rounds=2)
    data = json.loads((run / "history.json").read_text())
    for r in data["rounds"]:
        r["privacy"] = {"epsilon": 0.5 * r["round"], "delta": 1e-5}
    data["rounds"][1]["central_loss"] = float("nan")
    (run / "history.json").write_text(json.dumps(data))
    with DashboardServer(tmp_path) as server:
        got = _get(server.url + "api/run?id=dp")
    assert [r["privacy"]["epsilon"] for r in got["rounds"]] == [0.0, 0.5, 1.0]
    assert got["rounds"][1]["central_loss"] == "NaN"  # JSON has no NaN: sent as text


def _diverging(run_dir: Path) -> None:
    """A run whose test loss is NaN in round 1 and infinite in round 2, its accuracy -inf."""

    def central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
        losses = {1: float("nan"), 2: float("inf")}
        accuracy = float("-inf") if rnd == 2 else 0.5
        return losses.get(rnd, 1.0), {"accuracy": accuracy}

    covey.simulate(
        lambda cid: Half(),
        num_clients=2,
        rounds=3,
        strategy=covey.FedAvg(),
        initial_weights={"w": np.ones(3)},
        evaluate_fn=central,
        run_dir=run_dir,
    )


def test_non_finite_losses_and_metrics_are_sent_as_text(tmp_path: Path) -> None:
    # History.save tags them ({"__float__": "nan"}); the API sent the tag where a
    # number belongs, and the page and the report showed "–", as for no value.
    _diverging(tmp_path / "run")
    with DashboardServer(tmp_path) as server:
        got = _get(server.url + "api/run?id=run")
        row = _get(server.url + "api/runs")["runs"][0]
    rounds = got["rounds"]
    assert [r["central_loss"] for r in rounds] == [1.0, "NaN", "Infinity", 1.0]
    assert [r["central_metrics"]["accuracy"] for r in rounds] == [0.5, 0.5, "-Infinity", 0.5]
    assert [float(r["central_loss"]) for r in rounds][2] == float("inf")  # as float() reads it
    assert "__float__" not in json.dumps(got)
    assert got["best"] == row["best"] == {"name": "test accuracy", "value": 0.5, "round": 0}


def test_a_text_metric_spelled_as_a_non_finite_number_is_sent_as_no_number(
    tmp_path: Path,
) -> None:
    # The API sent the text "NaN" as it sends a NaN, and the page showed it as nan,
    # where `covey runs show`, the report and History.metric read it as no number.
    def central(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        said = {1: float("nan"), 2: "NaN", 3: "-Infinity"}
        return 1.0, {"accuracy": said.get(rnd, 0.5), "note": "Infinity"}

    covey.simulate(
        lambda cid: Half(),
        num_clients=2,
        rounds=3,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.ones(3)},
        evaluate_fn=central,
        run_dir=tmp_path / "run",
    )
    with DashboardServer(tmp_path) as server:
        got = _get(server.url + "api/run?id=run")
        first = _get(server.url + "api/run?id=run&view=first")
    for rounds in (got["rounds"], first["rounds"]):
        assert [r["central_metrics"] for r in rounds] == [
            {"accuracy": 0.5, "note": {"__text__": "Infinity"}},
            {"accuracy": "NaN", "note": {"__text__": "Infinity"}},
            {"accuracy": {"__text__": "NaN"}, "note": {"__text__": "Infinity"}},
            {"accuracy": {"__text__": "-Infinity"}, "note": {"__text__": "Infinity"}},
        ]
    history = covey.History.load(tmp_path / "run")
    assert [r for r, _ in history.metric("accuracy")] == [0, 1]  # the text is no number


def test_a_report_shows_non_finite_values(tmp_path: Path) -> None:
    _diverging(tmp_path / "run")
    out = tmp_path / "report.html"
    done = CliRunner().invoke(app, ["runs", "report", str(tmp_path / "run"), "--out", str(out)])
    assert done.exit_code == 0, done.output
    text = out.read_text()
    cells = [
        re.findall(r'<td class="num">([^<]*)</td>', row)[1:3]  # test loss, test accuracy
        for row in re.findall(r'<tr id="round-\d+">.*?</tr>', text, re.S)
    ]
    assert cells == [
        ["1.0000", "0.5000"],
        ["nan", "0.5000"],
        ["inf", "-inf"],
        ["1.0000", "0.5000"],
    ]


def test_event_stream_sends_each_new_round(tmp_path: Path) -> None:
    reached = threading.Event()
    go_on = threading.Event()

    def gate(record: RoundRecord) -> None:
        if record.round == 1:
            reached.set()
            assert go_on.wait(60)

    sim = threading.Thread(
        target=_simulate, args=(tmp_path / "live",), kwargs={"rounds": 3, "on_round": gate}
    )
    sim.start()
    try:
        assert reached.wait(60)
        with (
            DashboardServer(tmp_path, poll=0.05) as server,
            urllib.request.urlopen(server.url + "api/stream?id=live", timeout=30) as stream,  # noqa: S310
        ):
            kind, first = next_event(stream)
            assert kind == "run"
            assert [r["round"] for r in first["rounds"]] == [0, 1]
            assert first["status"] == "running"
            go_on.set()
            seen, status = [0, 1], "running"
            while seen[-1] < 3 or status != "finished":
                kind, change = next_event(stream)
                assert kind == "update"
                seen += [r["round"] for r in change["new_rounds"]]
                status = change["summary"]["status"]
            assert seen == [0, 1, 2, 3]
    finally:
        go_on.set()
        sim.join(60)


def test_a_round_redone_by_a_resumed_run_reaches_the_open_page(tmp_path: Path) -> None:
    # A run killed after writing round 3 to history.json but before saving it
    # redoes round 3 when resumed, and may get other numbers (clients built again):
    # the page watching it must show the round's new numbers, not keep the old.
    _simulate(tmp_path / "run", rounds=3)
    path = tmp_path / "run" / "history.json"
    with (
        DashboardServer(tmp_path, poll=0.05) as server,
        urllib.request.urlopen(server.url + "api/stream?id=run", timeout=20) as stream,  # noqa: S310
    ):
        kind, first = next_event(stream)
        assert kind == "run"
        assert first["rounds"][3]["central_loss"] != 123.0
        data = json.loads(path.read_text())
        data["rounds"][3]["central_loss"] = 123.0
        path.write_text(json.dumps(data))
        kind, change = next_event(stream, within=30)
        rounds = change["rounds"] if kind == "run" else change["new_rounds"]
        assert [r["central_loss"] for r in rounds if r["round"] == 3] == [123.0]


def _files(folder: Path) -> dict[str, bytes]:
    # run.sqlite-shm is SQLite's shared-memory index of the WAL, where every
    # reader (read-only ones too) marks what it reads; the data is in the others.
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.endswith("-shm")
    }


def test_deployed_run_is_read_read_only_with_its_clients(tmp_path: Path) -> None:
    """A deployed run with clients that came and went, read while the server holds its store."""
    run = tmp_path / "fed"
    store = RunStore.create(run, config={"rounds": 2, "strategy": "FedAvg"})
    try:
        ids = {name: store.client_id(name) for name in ("site-a", "site-b", "site-c")}
        for name in ids:
            store.log_event(name, "join", "ipv4:127.0.0.1:5000")
        store.save_round(0, {"w": np.ones(2)}, RoundRecord(round=0, central_loss=2.0))
        failure = Failure(cid=ids["site-c"], stage="fit", error="timed out after 5 s")
        record = RoundRecord(
            round=1,
            fit_participants=[ids["site-a"], ids["site-b"]],
            fit_failures=[failure],
            central_loss=1.0,
        )
        store.save_round(1, {"w": np.ones(2)}, record)
        store.log_event("site-c", "leave", "heartbeat lost")
        with DashboardServer(tmp_path) as server:
            before = _files(run)
            live = _get(server.url + "api/run?id=fed")
            _get(server.url + "api/runs")
            assert _files(run) == before  # nothing written, not even by SQLite
            store.set_status("finished")
            done = _get(server.url + "api/run?id=fed")
    finally:
        store.close()
    assert (live["kind"], live["status"], live["rounds_done"]) == ("deployed", "running", 1)
    clients = {c["name"]: c for c in live["clients"]}
    assert {n: c["connected"] for n, c in clients.items()} == {
        "site-a": True,
        "site-b": True,
        "site-c": False,
    }
    assert clients["site-a"]["fit_rounds"] == [1]
    assert clients["site-c"]["fit_rounds"] == []
    assert clients["site-c"]["last_event"] == "leave: heartbeat lost"
    assert live["client_names"] == {str(v): k for k, v in ids.items()}
    assert live["rounds"][1]["fit_failures"][0]["error"] == "timed out after 5 s"
    assert done["status"] == "finished"
    assert not any(c["connected"] for c in done["clients"])


def test_a_live_runs_unchanged_history_file_is_parsed_once_across_its_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long deployed run rewrites history.json now and then, its store every round:
    # the page read the whole file again at every round, a cost growing with the run.
    run = tmp_path / "fed"
    store = RunStore.create(run, config={"rounds": 9, "strategy": "FedAvg"})
    read: list[str] = []
    reader = runjson_module.read_regular

    def counted(path: Any, limit: int | None = None) -> bytes:
        read.append(Path(path).name)
        return reader(path, limit)

    try:
        history = covey.History(config={"rounds": 9, "strategy": "FedAvg"})
        for r in range(3):
            record = RoundRecord(round=r, central_loss=1.0 / (r + 1))
            store.save_round(r, {"w": np.ones(2)}, record)
            history.rounds.append(record)
        write_outputs(run, history, plot=False)
        monkeypatch.setattr(runjson_module, "read_regular", counted)
        with DashboardServer(tmp_path) as server:
            for r in range(3, 8):
                shown = _get(server.url + "api/run?id=fed&view=first")
                assert shown["rounds_done"] == r - 1
                record = RoundRecord(round=r, central_loss=1.0 / (r + 1))
                store.save_round(r, {"w": np.ones(2)}, record)
            assert _get(server.url + "api/run?id=fed")["rounds_done"] == 7
            assert read.count("history.json") == 1, read
            history.rounds.append(RoundRecord(round=3, central_loss=0.5))
            write_outputs(run, history, plot=False)  # changed: read again, once
            shown = _get(server.url + "api/run?id=fed")
            assert [r["central_loss"] for r in shown["rounds"]][3] == 0.5
            _get(server.url + "api/runs")
            assert read.count("history.json") == 2, read
    finally:
        store.close()


def test_the_list_of_runs_polled_again_walks_no_rounds_of_an_unchanged_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page asks for the list every 5 s: each time every round of every run was
    # walked again for its best value, though no file had changed.
    from covey.dashboard import _runs as runs_module
    from covey.dashboard import _tally as tally_module

    _simulate(tmp_path / "a", rounds=2)
    _simulate(tmp_path / "b", rounds=1)
    walked: list[int] = []
    best, tally = runs_module.best_metric, tally_module.tally_of

    def counted(rounds: list[dict[str, Any]]) -> Any:
        walked.append(len(rounds))
        return best(rounds)

    def tallied(rounds: list[dict[str, Any]]) -> Any:
        walked.append(len(rounds))
        return tally(rounds)

    monkeypatch.setattr(runs_module, "best_metric", counted)
    monkeypatch.setattr(tally_module, "tally_of", tallied)
    with DashboardServer(tmp_path) as server:
        lists = [_get(server.url + "api/runs")["runs"] for _ in range(6)]
    assert all(rows == lists[0] for rows in lists), lists
    assert [r["rounds_done"] for r in lists[0]] == [2, 1]
    assert len(walked) == 2, walked  # once a run


def test_tls_with_the_federation_certificates(tmp_path: Path) -> None:
    from covey.deploy.certs import init_federation, issue_client

    certs = tmp_path / "fed"
    init_federation(certs)
    issued = issue_client(certs, "analyst")
    _simulate(tmp_path / "runs" / "a", rounds=1)
    with DashboardServer(tmp_path / "runs", certs=certs) as server:
        assert server.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        context.load_cert_chain(str(issued.cert), str(issued.key))
        assert [r["id"] for r in _get(server.url + "api/runs", context)["runs"]] == ["a"]
        anonymous = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            _get(server.url + "api/runs", anonymous)
        with pytest.raises((ssl.SSLError, urllib.error.URLError)):
            _get(server.url + "api/runs", ssl.create_default_context())


def test_runs_report_command(tmp_path: Path) -> None:
    result = _simulate(tmp_path / "r", rounds=4)
    out = tmp_path / "report.html"
    done = CliRunner().invoke(app, ["runs", "report", str(tmp_path / "r"), "--out", str(out)])
    assert done.exit_code == 0, done.output
    text = out.read_text()
    assert "Plotly" in text
    assert "<script src=" not in text  # the library is inside
    for r in result.history.rounds:
        assert f'id="round-{r.round}"' in text
    missing = CliRunner().invoke(app, ["runs", "report", str(tmp_path)])
    assert missing.exit_code == 2  # a command-line mistake (docs/projects.md)
    assert "not a run folder" in missing.output


def test_a_report_plots_the_bytes_of_a_run_that_counted_them(tmp_path: Path) -> None:
    _simulate(tmp_path / "r", rounds=2)
    out = tmp_path / "report.html"
    assert (
        CliRunner().invoke(app, ["runs", "report", str(tmp_path / "r"), "-o", str(out)]).exit_code
        == 0
    )
    assert "Bytes per round (MB)" in out.read_text()
    history = covey.History.load(tmp_path / "r")
    for record in history.rounds:  # as a history written before bytes were counted
        record.bytes_sent = record.bytes_received = None
    (tmp_path / "old").mkdir()
    write_outputs(tmp_path / "old", history, plot=False)
    old = tmp_path / "old.html"
    assert (
        CliRunner().invoke(app, ["runs", "report", str(tmp_path / "old"), "-o", str(old)]).exit_code
        == 0
    )
    assert "Bytes per round" not in old.read_text()
    history.rounds[1].bytes_sent = 10**400  # any integer is valid JSON: no OverflowError
    (tmp_path / "huge").mkdir()
    write_outputs(tmp_path / "huge", history, plot=False)
    huge = tmp_path / "huge.html"
    assert (
        CliRunner()
        .invoke(app, ["runs", "report", str(tmp_path / "huge"), "-o", str(huge)])
        .exit_code
        == 0
    )
    assert "Bytes per round (MB)" in huge.read_text()


def test_runs_report_refuses_an_out_file_in_a_missing_folder(tmp_path: Path) -> None:
    # Before: the folder was made, so a typo in -o left a stray folder and a report in it;
    # every other output flag (covey demo --out, --port-file) refuses a missing folder.
    _simulate(tmp_path / "r", rounds=1)
    out = tmp_path / "paper" / "supplement-fedavg.html"
    done = CliRunner().invoke(app, ["runs", "report", str(tmp_path / "r"), "-o", str(out)])
    assert done.exit_code == 2, done.output
    assert f"--out {out}: the folder {out.parent} does not exist" in done.output
    assert not out.parent.exists()
    # docs/dashboard.md: `covey runs report runs/demo -o paper/supplement-fedavg.html`
    out.parent.mkdir()
    done = CliRunner().invoke(app, ["runs", "report", str(tmp_path / "r"), "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert 'id="round-1"' in out.read_text()
    (tmp_path / "taken").write_text("a file, not a folder")
    blocked = CliRunner().invoke(
        app, ["runs", "report", str(tmp_path / "r"), "-o", str(tmp_path / "taken" / "x.html")]
    )
    assert blocked.exit_code == 2
    assert "cannot write the report to" in blocked.output


def test_dashboard_command_refuses_a_missing_folder(tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["dashboard", str(tmp_path / "nope")])
    assert done.exit_code != 0
    assert "RUNS_DIR" in done.output


def test_report_of_a_deployed_run_names_its_clients(tmp_path: Path) -> None:
    from covey.dashboard import write_report

    run = tmp_path / "fed"
    with RunStore.create(run, config={"rounds": 1, "strategy": "FedAdam"}) as store:
        a, b = store.client_id("site-a"), store.client_id("site-b")
        store.save_round(0, {"w": np.ones(2)}, RoundRecord(round=0, central_loss=2.0))
        failure = Failure(cid=b, stage="fit", error="ValueError: <bad> & late")
        record = RoundRecord(round=1, fit_participants=[a], fit_failures=[failure])
        store.save_round(1, {"w": np.ones(2)}, record)
        store.set_status("finished")
    text = write_report(run, tmp_path / "fed.html").read_text()
    assert "FedAdam" in text
    assert "1: site-a" in text
    assert "site-b (fit): ValueError: &lt;bad&gt; &amp; late" in text  # escaped
    assert 'id="round-1"' in text


def test_a_database_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    import sqlite3

    (tmp_path / "x").mkdir()
    with closing(sqlite3.connect(tmp_path / "x" / "run.sqlite")) as conn, conn:
        conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.close()
    with pytest.raises(RunReadError, match="not a readable covey run database: no such table"):
        read_run("x", tmp_path / "x")
    (tmp_path / "x" / "run.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(RunReadError, match="run database"):
        read_run("x", tmp_path / "x")


def test_an_empty_run_database_is_said_to_be_empty_as_resuming_says(tmp_path: Path) -> None:
    # A zero-byte run.sqlite (a run killed as it made its store) read as a database
    # without tables: the page and `covey runs` said "no such table: meta", while
    # resuming the run said the file is empty.
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "run.sqlite").write_bytes(b"")
    said = "run.sqlite is empty (0 bytes), not a covey run database: remove it"
    with pytest.raises(RunReadError, match=re.escape(said)):
        read_run("x", tmp_path / "x")
    with pytest.raises(ValueError, match=re.escape(said)):
        RunStore.open(tmp_path / "x")
    with DashboardServer(tmp_path) as dashboard:
        (row,) = _get(dashboard.url + "api/runs")["runs"]
    assert row["status"] == "unreadable"
    assert said in row["error"]
    shown = CliRunner().invoke(app, ["runs", "show", str(tmp_path / "x")])
    assert shown.exit_code != 0
    assert "(0 bytes)" in shown.output


def test_read_run_refuses_a_folder_that_is_no_run_and_takes_a_str(tmp_path: Path) -> None:
    # It gave an empty "simulated" run for a missing or empty folder, and a str path
    # failed with "unsupported operand type(s) for /".
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(RunReadError, match="is not a run folder"):
            read_run("x", folder)
    _simulate(tmp_path / "run")
    assert read_run("run", str(tmp_path / "run")).rounds


def test_files_that_link_outside_the_runs_folder_are_not_read(tmp_path: Path) -> None:
    # Before: a history.json (run.json, run.sqlite) that was a symbolic link to a file
    # anywhere was read and served, so whoever could write a run folder could show
    # the dashboard's viewers a file from outside it.
    import shutil

    root, outside = tmp_path / "runs", tmp_path / "outside"
    outside.mkdir()
    for name in ("a", "b", "c", "d"):
        _simulate(root / name, rounds=1)
    secret = covey.History([RoundRecord(0)], config={"strategy": "SECRET-MARKER", "rounds": 0})
    secret.save(outside / "secret.json")
    (root / "a" / "history.json").unlink()
    (root / "a" / "history.json").symlink_to(outside / "secret.json")
    (outside / "run.json").write_text('{"status": "finished", "strategy": "SECRET-MARKER"}')
    (root / "b" / "run.json").unlink()
    (root / "b" / "run.json").symlink_to(outside / "run.json")
    shutil.copy(root / "c" / "run.sqlite", outside / "run.sqlite")
    (root / "c" / "run.sqlite").unlink()
    (root / "c" / "run.sqlite").symlink_to(outside / "run.sqlite")
    # A link that stays inside the runs folder is read as before.
    (root / "d" / "run.json").rename(root / "d" / "kept.json")
    (root / "d" / "run.json").symlink_to(Path("kept.json"))

    for name, file in (("a", "history.json"), ("b", "run.json"), ("c", "run.sqlite")):
        with pytest.raises(RunReadError, match=f"{file} is a link to a file outside"):
            read_run(name, root / name, root=root)
        read_run(name, root / name)  # without a root, as before: read
    assert read_run("d", root / "d", root=root).status == "finished"
    with DashboardServer(root) as server:
        with urllib.request.urlopen(server.url + "api/runs", timeout=30) as response:  # noqa: S310
            listing = response.read().decode()
        rows = {r["id"]: r for r in json.loads(listing)["runs"]}
        with pytest.raises(urllib.error.HTTPError, match="422"):
            _get(server.url + "api/run?id=a")
    assert "SECRET-MARKER" not in listing
    assert {k: r["status"] for k, r in rows.items()} == {
        "a": "unreadable",
        "b": "unreadable",
        "c": "unreadable",
        "d": "finished",
    }
    assert "is a link to a file outside" in rows["a"]["error"]


def test_a_damaged_history_beside_a_run_database_is_shown_from_the_database(
    tmp_path: Path,
) -> None:
    # The dashboard listed such a run (history.json cut short by a kill) as unreadable,
    # and `covey runs report` refused it, though its run.sqlite kept every round;
    # `covey runs show` read it from there.
    runs = tmp_path / "runs"
    result = _simulate(runs / "cut")
    history = runs / "cut" / "history.json"
    text = history.read_text()
    history.write_text(text[: len(text) // 2])
    said = f"its rounds were read from {runs / 'cut' / 'run.sqlite'} instead"
    run = read_run("cut", runs / "cut", root=runs)
    assert run.warning is not None
    assert run.warning.startswith(f"cannot read {history}: ")
    assert run.warning.endswith(said)
    assert run.status == "finished"
    assert run.rounds == result.history.to_dict()["rounds"]
    with DashboardServer(runs) as server:
        row = _get(server.url + "api/runs")["runs"][0]
        shown = _get(server.url + "api/run?id=cut")
    assert (row["status"], row["rounds_done"], row["warning"]) == ("finished", 3, run.warning)
    assert shown["warning"] == run.warning
    assert shown["strategy"] == "FedAvg"
    assert shown["rounds"] == result.history.to_dict()["rounds"]
    out = tmp_path / "cut.html"
    done = CliRunner().invoke(app, ["runs", "report", str(runs / "cut"), "--out", str(out)])
    assert done.exit_code == 0, done.output
    report = out.read_text()
    assert said in report
    assert 'id="round-3"' in report
    history.write_text(text)  # repaired: no note
    assert read_run("cut", runs / "cut", root=runs).warning is None


def test_a_deployed_run_with_a_damaged_history_keeps_its_clients(tmp_path: Path) -> None:
    run = tmp_path / "fed"
    with RunStore.create(run, config={"rounds": 1, "strategy": "FedAdam"}) as store:
        a = store.client_id("site-a")
        store.log_event("site-a", "join", "ipv4:127.0.0.1:5000")
        store.save_round(0, {"w": np.ones(2)}, RoundRecord(round=0, central_loss=2.0))
        store.save_round(1, {"w": np.ones(2)}, RoundRecord(round=1, fit_participants=[a]))
        store.set_status("finished")
    (run / "history.json").write_text('{"rounds": [{"round": 0}, {"rou')
    with DashboardServer(tmp_path) as server:
        shown = _get(server.url + "api/run?id=fed")
    assert (shown["kind"], shown["status"], shown["strategy"]) == (
        "deployed",
        "finished",
        "FedAdam",
    )
    assert [r["round"] for r in shown["rounds"]] == [0, 1]
    assert shown["clients"][0]["name"] == "site-a"
    assert shown["clients"][0]["fit_rounds"] == [1]
    assert "its rounds were read from" in shown["warning"]


def test_a_damaged_history_is_read_from_no_database_outside_the_runs_folder(
    tmp_path: Path,
) -> None:
    # The fallback to run.sqlite refuses a store that links outside the runs folder,
    # as the reading of history.json does; a history.json that links outside is
    # refused, not passed over for the store.
    import shutil

    root, outside = tmp_path / "runs", tmp_path / "outside"
    outside.mkdir()
    for name in ("a", "b"):
        _simulate(root / name, rounds=1)
    shutil.copy(root / "a" / "run.sqlite", outside / "run.sqlite")
    (root / "a" / "run.sqlite").unlink()
    (root / "a" / "run.sqlite").symlink_to(outside / "run.sqlite")
    (root / "a" / "history.json").write_text('{"rounds": [')
    (outside / "history.json").write_text('{"rounds": [')
    (root / "b" / "history.json").unlink()
    (root / "b" / "history.json").symlink_to(outside / "history.json")
    for name, file in (("a", "run.sqlite"), ("b", "history.json")):
        with pytest.raises(RunReadError, match=f"{file} is a link to a file outside") as caught:
            read_run(name, root / name, root=root)
        assert "were read from" not in str(caught.value)
    with DashboardServer(root) as server:
        rows = {r["id"]: r for r in _get(server.url + "api/runs")["runs"]}
        with pytest.raises(urllib.error.HTTPError, match="422"):
            _get(server.url + "api/run?id=a")
    assert {k: r["status"] for k, r in rows.items()} == {"a": "unreadable", "b": "unreadable"}
    assert "run.sqlite is a link to a file outside" in rows["a"]["error"]
    assert "history.json is a link to a file outside" in rows["b"]["error"]
    assert "cannot read" in rows["a"]["error"]  # the damaged history is named too


def test_a_damaged_history_beside_a_damaged_database_names_both(tmp_path: Path) -> None:
    _simulate(tmp_path / "r", rounds=1)
    (tmp_path / "r" / "history.json").write_text("{not json")
    (tmp_path / "r" / "run.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(RunReadError) as caught:
        read_run("r", tmp_path / "r")
    said = str(caught.value)
    assert f"cannot read {tmp_path / 'r' / 'history.json'}" in said
    assert f"{tmp_path / 'r' / 'run.sqlite'}" in said
    assert "were read from" not in said


def test_a_report_plots_a_metric_named_loss_beside_the_round_s_loss() -> None:
    from covey.dashboard._report import _series
    from covey.dashboard._runs import metric_value

    rounds = [
        {
            "round": 1,
            "central_loss": 0.5,
            "central_metrics": {"loss": 0.25, "loss_metric": 0.125},
            "evaluate_loss": 2.0,
            "evaluate_metrics": {"loss": 1.5},
            "fit_metrics": {"loss": 3.0},
        }
    ]
    assert _series(rounds) == {
        ("central", "loss"): "test loss",
        ("central", "loss_metric"): "test loss_metric",
        ("central", "loss_metric_metric"): "test loss_metric_metric",
        ("evaluate", "loss"): "federated loss",
        ("evaluate", "loss_metric"): "federated loss_metric",
        ("fit", "loss"): "train loss",
    }
    values = {key: metric_value(rounds[0], *key) for key in _series(rounds)}
    assert list(values.values()) == [0.5, 0.25, 0.125, 2.0, 1.5, 3.0]


@pytest.mark.parametrize(("rounds", "bars"), [(600, False), (3, True)])
def test_a_report_of_a_long_run_draws_lines_every_round_kept(rounds: int, bars: bool) -> None:
    """A 20,000-round report drew a marker or bar per round: a browser took minutes to open it."""
    from covey.dashboard._report import _figures
    from covey.dashboard._runs import Run

    records = [
        {
            "round": k,
            "central_loss": 1.0 / (k + 1),
            "fit_participants": [0, 1] if k else [],
            "bytes_sent": 10,
            "bytes_received": 5,
            "privacy": {"epsilon": k / 10},
        }
        for k in range(rounds + 1)
    ]
    figures = _figures(Run("r", Path("r"), "simulated", rounds=records))
    drawn = {(t.type, getattr(t, "mode", None)) for figure in figures for t in figure.data}
    if bars:
        assert drawn == {("scatter", "lines+markers"), ("bar", None)}
    else:
        assert drawn == {("scatter", "lines")}
        assert {len(t.x) for figure in figures for t in figure.data} == {rounds, rounds + 1}


def test_a_failed_simulation_says_how_to_continue_it_as_runs_show_does(tmp_path: Path) -> None:
    """The page gave a failed run's reason alone; `covey runs show` adds the resume command."""

    class Same(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(weights=weights, num_examples=1)

    def central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
        if rnd == 2:
            raise RuntimeError("<b>diverged</b>")
        return 1.0, {}

    run_dir = tmp_path / "runs" / "failed"
    with pytest.raises(RuntimeError, match="diverged"):
        covey.simulate(
            lambda cid: Same(),
            2,
            4,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.ones(2)},
            central,
            run_dir=run_dir,
        )
    from covey.dashboard._runs import summary

    note = summary(read_run("failed", run_dir))["note"]
    assert note.startswith("RuntimeError: <b>diverged</b> (raised by evaluate_fn ")
    assert ".central in round 2)" in note
    assert "; continue it after its last complete" in note
    assert f"run_dir={str(run_dir)!r}, resume=True" in note
    shown = CliRunner().invoke(app, ["runs", "show", str(run_dir)], env={"COLUMNS": "400"})
    assert f"failed: {note}" in " ".join(shown.output.split())


def test_a_report_plots_only_the_epsilons_that_are_numbers() -> None:
    """Text, a list or a NaN under a privacy key is left off the chart; the table shows it.

    Before: every key with ``epsilon`` in its name had a trace, its values as they
    were (an accountant's name, the tag of a NaN), and the table showed the tag.
    """
    from covey.dashboard._report import _figures, render_report
    from covey.dashboard._runs import Run

    spent = [0.0, {"__float__": "nan"}, 0.2, "n/a", [1, 2], None]
    records = [
        {
            "round": k,
            "central_loss": 1.0,
            "fit_participants": [0] if k else [],
            "privacy": {"epsilon": value, "epsilon_accountant": "rdp", "delta": 1e-5},
        }
        for k, value in enumerate(spent)
    ]
    run = Run("r", Path("r"), "simulated", rounds=records)
    (budget,) = [f for f in _figures(run) if f.layout.title.text == "Privacy budget spent"]
    assert [(t.name, list(t.x), list(t.y)) for t in budget.data] == [
        ("epsilon", [0, 2], [0.0, 0.2])
    ]
    text = render_report(run)
    row = re.search(r'<tr id="round-1">.*?</tr>', text, re.S)
    assert row is not None
    assert "epsilon=nan, epsilon_accountant=rdp" in row.group(0)
    assert "__float__" not in text.split("<body>")[1]
