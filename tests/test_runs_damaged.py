"""`covey runs` and History.load on damaged or half-written run folders."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from _sse import next_event
from covey import History
from covey.cli import app
from covey.core._history import RoundRecord


def _good(folder: Path) -> str:
    folder.mkdir(parents=True)
    History([RoundRecord(0, central_loss=1.0), RoundRecord(1, [0, 1], fit_examples=2)]).save(
        folder / History.FILE_NAME
    )
    return (folder / History.FILE_NAME).read_text()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fit_participants", None, "round 1: 'fit_participants' must be a list of client ids"),
        ("fit_participants", ["a"], "round 1: 'fit_participants' must be a list of client ids"),
        ("fit_examples", "2", "round 1: 'fit_examples' must be a whole number"),
        ("central_loss", "low", "round 1: 'central_loss' must be a number or null"),
        ("durations", [], "round 1: 'durations' must be an object"),
        ("fit_failures", [1], "round 1: 'fit_failures' must be a list of failures"),
        ("round", "x", "a round has no valid 'round' number: 'x'"),
    ],
)
def test_a_damaged_round_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value: object, message: str
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    data = json.loads(_good(tmp_path / "run"))
    data["rounds"][1][field] = value
    (tmp_path / "run" / History.FILE_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="is not a covey history: " + message.replace("(", r"\(")):
        History.load(tmp_path / "run")
    result = CliRunner().invoke(app, ["runs", "show", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_runs_list_shows_an_unreadable_run_with_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    text = _good(tmp_path / "runs" / "ok")
    (tmp_path / "runs" / "cut").mkdir()
    (tmp_path / "runs" / "cut" / History.FILE_NAME).write_text(text[: len(text) // 2])
    (tmp_path / "runs" / "not-a-run").mkdir()
    result = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "ok" in out
    assert "cut - unreadable" in out
    assert "cut/history.json is not a covey history" in out
    assert "not-a-run" not in out


def test_a_report_never_overwrites_the_runs_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    text = _good(tmp_path / "run")
    run = str(tmp_path / "run")
    cases = [
        (f"{run}/history.json", "is in the run folder and is not an .html file"),
        (run, "is a folder; give the HTML file to write"),
        (f"{run}/history.json/r.html", "cannot write the report to"),
    ]
    for out, message in cases:
        result = CliRunner().invoke(app, ["runs", "report", run, "-o", out])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())
        assert "Traceback" not in result.output
    assert (tmp_path / "run" / History.FILE_NAME).read_text() == text
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [History.FILE_NAME]
    result = CliRunner().invoke(app, ["runs", "report", run, "-o", f"{run}/report.html"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "report.html").read_text().startswith("<!doctype html>")


def test_the_event_stream_says_a_deleted_run_is_gone(tmp_path: Path) -> None:
    pytest.importorskip("starlette", reason="the dashboard extra is needed")
    import shutil
    import urllib.request

    from covey.dashboard import DashboardServer

    _good(tmp_path / "runs" / "doomed")
    with (
        DashboardServer(tmp_path / "runs", poll=0.05) as server,
        urllib.request.urlopen(server.url + "api/stream?id=doomed", timeout=30) as stream,  # noqa: S310 (our server)
    ):
        kind, first = next_event(stream)
        assert (kind, [r["round"] for r in first["rounds"]]) == ("run", [0, 1])
        shutil.rmtree(tmp_path / "runs" / "doomed")
        kind, data = next_event(stream)
        assert kind == "error"
        assert "doomed is gone (deleted or moved)" in data["error"]


def _nested_too_deep(folder: Path) -> None:
    """A history.json whose JSON nests deeper than Python's parser recurses."""
    folder.mkdir(parents=True)
    depth = 200_000
    (folder / History.FILE_NAME).write_text('{"rounds": ' + "[" * depth + "]" * depth + "}")


def _integer_too_long(folder: Path) -> None:
    """A history.json with an integer of more digits than Python converts."""
    folder.mkdir(parents=True)
    (folder / History.FILE_NAME).write_text('{"rounds": [{"round": ' + "1" * 5000 + "}]}")


def test_json_too_deep_or_too_long_is_an_unreadable_run_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`covey runs list` and the dashboard list every other run and name the damaged ones."""
    pytest.importorskip("starlette", reason="the dashboard extra is needed")
    import urllib.error
    import urllib.request

    from covey.dashboard import DashboardServer

    monkeypatch.setenv("COLUMNS", "250")
    _good(tmp_path / "runs" / "ok")
    _nested_too_deep(tmp_path / "runs" / "deep")
    _integer_too_long(tmp_path / "runs" / "long")
    with pytest.raises(ValueError, match=r"deep/history\.json is not a covey history"):
        History.load(tmp_path / "runs" / "deep")
    result = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "deep - unreadable" in out
    assert "long - unreadable" in out
    assert " ok " in out
    with DashboardServer(tmp_path / "runs", poll=0.05) as server:
        with urllib.request.urlopen(server.url + "api/runs", timeout=30) as response:  # noqa: S310 (our server)
            rows = {r["id"]: r for r in json.loads(response.read())["runs"]}
        for name in ("deep", "long"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(server.url + f"api/run?id={name}", timeout=30)  # noqa: S310
            assert caught.value.code == 422
            assert name in json.loads(caught.value.read())["error"]
    assert rows["ok"]["status"] != "unreadable"
    assert rows["deep"]["status"] == rows["long"]["status"] == "unreadable"
    assert "deep/history.json" in rows["deep"]["error"]
    assert "4300 digits" in rows["long"]["error"]


def test_a_run_nested_just_below_the_parser_s_limit_is_refused_not_a_server_error(
    tmp_path: Path,
) -> None:
    """Parsed in a thread, sent from the event loop: a depth one takes and the other does not."""
    pytest.importorskip("starlette", reason="the dashboard extra is needed")
    import urllib.error
    import urllib.request

    from covey.dashboard import DashboardServer

    depths = range(900, 1000, 6)
    for depth in depths:
        folder = tmp_path / "runs" / f"d{depth}"
        folder.mkdir(parents=True)
        extra = "[" * depth + "]" * depth
        text = '{"rounds": [{"round": 1, "central_loss": 1.0, "extra": ' + extra + "}]}"
        (folder / History.FILE_NAME).write_text(text)
    codes, said = {}, {}
    with DashboardServer(tmp_path / "runs", poll=0.05) as server:
        for depth in depths:
            try:
                url = server.url + f"api/run?id=d{depth}"
                with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (ours)
                    codes[depth] = response.status
            except urllib.error.HTTPError as exc:
                codes[depth], said[depth] = exc.code, json.loads(exc.read())["error"]
    assert set(codes.values()) <= {200, 422}, codes
    assert all(f"d{depth}" in error for depth, error in said.items()), said


def test_an_integer_too_big_for_a_float_reads_as_infinite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loss or metric of 400 digits is valid JSON: shown as inf, not an OverflowError."""
    pytest.importorskip("starlette", reason="the dashboard extra is needed")
    import urllib.request

    from covey.dashboard import DashboardServer

    monkeypatch.setenv("COLUMNS", "250")
    path = tmp_path / "runs" / "huge" / History.FILE_NAME
    data = json.loads(_good(path.parent))
    data["rounds"][1]["central_loss"] = 10**400
    data["rounds"][1]["central_metrics"] = {"accuracy": -(10**400)}
    data["rounds"][1]["privacy"] = {"epsilon": 10**400, "delta": 1e-5}
    path.write_text(json.dumps(data))
    history = History.load(path.parent)
    assert history.metric("loss") == [(0, 1.0), (1, float("inf"))]
    assert history.metric("accuracy") == [(1, float("-inf"))]
    for command in (["runs", "list", "--dir"], ["runs", "show"]):
        where = str(tmp_path / "runs" / ("huge" if command[1] == "show" else ""))
        result = CliRunner().invoke(app, [*command, where])
        assert result.exit_code == 0, result.output
        assert "inf" in result.output
    with (
        DashboardServer(tmp_path / "runs", poll=0.05) as server,
        urllib.request.urlopen(server.url + "api/runs", timeout=30) as response,  # noqa: S310 (our server)
    ):
        (row,) = json.loads(response.read())["runs"]
    assert row["best"] == {"name": "test loss", "value": 1.0, "round": 0}


def test_json_nested_too_deeply_is_a_damaged_run_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It stopped `covey runs list` (every run, not just this one) with a RecursionError.
    from covey.dashboard._runs import RunReadError, read_run

    monkeypatch.setenv("COLUMNS", "250")
    _good(tmp_path / "runs" / "ok")
    (tmp_path / "runs" / "deep").mkdir()
    (tmp_path / "runs" / "deep" / History.FILE_NAME).write_text("[" * 100_000 + "]" * 100_000)
    result = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "deep - unreadable" in out
    assert "deep/history.json is not a covey history: its JSON nests too deeply" in out
    assert "ok" in out
    result = CliRunner().invoke(app, ["runs", "show", str(tmp_path / "runs" / "deep")])
    assert result.exit_code == 2, result.output
    assert "nests too deeply" in result.output
    with pytest.raises(RunReadError, match="nests too deeply"):
        read_run("deep", tmp_path / "runs" / "deep")


def _invoke(args: list[str], done: list[Any]) -> None:
    done.append(CliRunner().invoke(app, args))


def test_a_run_json_that_is_a_named_pipe_is_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `covey runs list` and `covey runs show` opened it and waited for a writer for ever.
    import os

    monkeypatch.setenv("COLUMNS", "250")
    _good(tmp_path / "runs" / "piped")
    pipe = tmp_path / "runs" / "piped" / "run.json"
    os.mkfifo(pipe)
    listing = ["runs", "list", "--dir", str(tmp_path / "runs")]
    for args in (listing, ["runs", "show", str(pipe.parent)]):
        result = _run_bounded(args, pipe)
        assert result.exit_code == (0 if args is listing else 2), result.output
        assert "piped" in result.output


def _run_bounded(args: list[str], pipe: Path) -> Any:
    """`covey ARGS`'s result, failing (not hanging) if it waits on the named pipe ``pipe``."""
    import os
    import threading

    done: list[Any] = []
    thread = threading.Thread(target=_invoke, args=(args, done), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():  # let the blocked reader go before failing
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(20)
        pytest.fail(f"covey {' '.join(args[:2])} waited on the named pipe {pipe}")
    return done[0]


def _no_regular_file(path: Path, how: str) -> None:
    """Make ``path`` a named pipe or a folder, as ``how`` says."""
    import os

    if how == "a named pipe":
        os.mkfifo(path)
    else:
        path.mkdir()


@pytest.mark.parametrize("how", ["a named pipe", "a folder"])
def test_runs_show_refuses_a_run_json_that_is_no_regular_file_without_its_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # `covey runs show` printed the rounds of such a run below one line, as a sound run's.

    monkeypatch.setenv("COLUMNS", "400")
    folder = tmp_path / "runs" / "odd"
    _good(folder)
    path = folder / "run.json"
    _no_regular_file(path, how)
    result = _run_bounded(["runs", "show", str(folder)], path)
    out = "".join(result.output.split("\n"))
    assert result.exit_code == 2, result.output
    assert f"{path} is not a regular file" in out
    assert "Rounds" not in result.output


@pytest.mark.parametrize("how", ["a named pipe", "a folder"])
def test_a_set_up_run_whose_history_is_no_regular_file_names_the_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # A run.lock beside it made the run read as one killed as it set up, its history unnamed.

    from covey.dashboard._runs import RunReadError, read_run

    monkeypatch.setenv("COLUMNS", "400")
    folder = tmp_path / "runs" / "odd"
    folder.mkdir(parents=True)
    (folder / "run.lock").write_text("")
    history = folder / History.FILE_NAME
    _no_regular_file(history, how)
    why = f"{history} is not a regular file (a folder, a named pipe, a device)"
    shown = _run_bounded(["runs", "show", str(folder)], history)
    assert shown.exit_code == 2, shown.output
    assert why in "".join(shown.output.split("\n"))
    assert "set-up" not in shown.output
    listed = _run_bounded(["runs", "list", "--dir", str(tmp_path / "runs")], history)
    assert listed.exit_code == 0, listed.output
    assert " odd - unreadable " in " ".join(listed.output.split())
    assert f"unreadable: {why}" in "".join(listed.output.split("\n"))
    with pytest.raises(RunReadError, match=re.escape(why)):
        read_run("odd", folder)


@pytest.mark.parametrize("text", ['{"status": "fini', "", "[1]"])
def test_a_damaged_run_json_makes_the_run_unreadable_in_runs_list_and_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """As the dashboard and `covey runs report` refuse it: one verdict, naming the file."""
    monkeypatch.setenv("COLUMNS", "250")
    folder = tmp_path / "runs" / "r"
    _good(folder)
    (folder / "run.json").write_text(text)
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    assert listed.exit_code == 0, listed.output
    out = " ".join(listed.output.split())
    assert " unreadable " in out
    assert "r/run.json" in out
    shown = CliRunner().invoke(app, ["runs", "show", str(folder)])
    assert "unreadable" in shown.output
    assert "run.json" in " ".join(shown.output.split())


def test_a_history_holding_a_round_twice_shows_each_record_s_own_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    folder = tmp_path / "run"
    folder.mkdir()
    text = '{"rounds": [{"round": 1, "central_loss": 1.5}, {"round": 1, "central_loss": 2.5}]}'
    (folder / History.FILE_NAME).write_text(text)
    shown = CliRunner().invoke(app, ["runs", "show", str(folder)])
    assert "1.5000" in shown.output  # the first record's loss (the second's was shown twice)
    assert "2.5000" in shown.output


def test_a_damaged_history_beside_a_run_database_is_shown_from_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `covey runs show` refused the run though its run.sqlite kept every round.
    import numpy as np

    import covey

    class Step(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)

    run = tmp_path / "runs" / "cut"
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    covey.simulate(lambda cid: Step(), 2, 3, strategy, {"w": np.zeros(2)}, run_dir=run)
    (run / History.FILE_NAME).write_text('{"rounds": [')
    monkeypatch.setenv("COLUMNS", "250")
    shown = CliRunner().invoke(app, ["runs", "show", str(run)])
    assert shown.exit_code == 0, shown.output
    said = " ".join(shown.output.split())
    assert f"its rounds were read from {run / 'run.sqlite'} instead" in said
    assert "strategy FedAvg" in said
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    assert listed.exit_code == 0, listed.output
    assert "unreadable" not in listed.output
    assert "3/3" in listed.output


def test_a_deployed_run_with_a_damaged_history_is_shown_with_its_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read from run.sqlite, its history kept no client names: the clients table was missing.
    import numpy as np

    from covey.server import RunStore

    run = tmp_path / "fed"
    with RunStore.create(run, config={"rounds": 1, "strategy": "FedAdam"}) as store:
        a = store.client_id("site-a")
        store.save_round(0, {"w": np.ones(2)}, RoundRecord(round=0, central_loss=2.0))
        store.save_round(1, {"w": np.ones(2)}, RoundRecord(round=1, fit_participants=[a]))
        store.set_status("finished")
    (run / History.FILE_NAME).write_text('{"rounds": [{"round": 0}, {"rou')
    monkeypatch.setenv("COLUMNS", "250")
    shown = CliRunner().invoke(app, ["runs", "show", str(run)])
    assert shown.exit_code == 0, shown.output
    said = " ".join(shown.output.split())
    assert f"its rounds were read from {run / 'run.sqlite'} instead" in said
    assert "strategy FedAdam" in said
    assert "Clients" in said
    assert "site-a" in said


def test_a_report_of_a_damaged_history_says_on_the_console_it_was_read_from_the_database(
    tmp_path: Path,
) -> None:
    # The note was only inside the HTML file: the command said the report was written, no more.
    import numpy as np

    from covey.server import RunStore

    run = tmp_path / "fed"
    with RunStore.create(run, config={"rounds": 1, "strategy": "FedAvg"}) as store:
        store.save_round(0, {"w": np.ones(2)}, RoundRecord(round=0, central_loss=2.0))
        store.save_round(1, {"w": np.ones(2)}, RoundRecord(round=1, central_loss=1.0))
        store.set_status("finished")
    out = tmp_path / "report.html"
    clean = CliRunner().invoke(app, ["runs", "report", str(run), "-o", str(out)])
    assert clean.exit_code == 0, clean.output
    assert "warning" not in clean.output
    (run / History.FILE_NAME).write_text('{"rounds": [{"round": 0}, {"rou')
    done = CliRunner().invoke(app, ["runs", "report", str(run), "-o", str(out)])
    assert done.exit_code == 0, done.output
    said = " ".join(done.stderr.split())
    assert said.startswith("warning: ")
    assert f"its rounds were read from {run / 'run.sqlite'} instead" in said
    assert f"report written to {out}" in done.stdout
    assert 'id="warning"' in out.read_text()


def _damage_run_json(folder: Path, how: str) -> None:
    import os

    path = folder / "run.json"
    if how == "a list":
        path.write_text('[{"status": "finished"}]')
    elif how == "a named pipe":
        os.mkfifo(path)
    else:  # not UTF-8
        path.write_bytes(b'{"status": "fini\xffshed"}')


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("a list", "holds no JSON object (it holds a list)"),
        ("a named pipe", "is not a regular file"),
        ("not UTF-8", "can't decode byte 0xff"),
    ],
)
def test_the_dashboard_and_covey_runs_refuse_a_damaged_run_json_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, why: str
) -> None:
    # The dashboard passed over a list or a named pipe (the run looked fine) and
    # `covey runs` said otherwise: one reader now gives one verdict, naming why.
    pytest.importorskip("starlette", reason="the dashboard extra is needed")
    from covey.dashboard import DashboardServer, RunReadError, read_run
    from covey.dashboard._runjson import read_run_json

    monkeypatch.setenv("COLUMNS", "400")
    folder = tmp_path / "runs" / "r"
    _good(folder)
    _damage_run_json(folder, how)
    with pytest.raises(RunReadError, match=re.escape(why)) as info:
        read_run_json(folder)
    said = str(info.value)
    assert str(folder / "run.json") in said
    with pytest.raises(RunReadError) as again:
        read_run("r", folder)
    assert str(again.value) == said
    with (
        DashboardServer(tmp_path / "runs") as server,
        urllib.request.urlopen(server.url + "api/runs", timeout=30) as response,  # noqa: S310
    ):
        (row,) = json.loads(response.read())["runs"]
    assert row["status"] == "unreadable"
    assert row["error"] == said
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    assert listed.exit_code == 0, listed.output
    assert " unreadable " in " ".join(listed.output.split())
    assert said in "".join(listed.output.split("\n"))


@pytest.mark.parametrize("how", ["a named pipe", "a folder"])
def test_a_history_that_is_no_regular_file_is_listed_as_unreadable_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # `covey runs list` and the dashboard left such a run out, without a word of why.

    from covey.dashboard._runs import RunReadError, discover_runs, read_run

    monkeypatch.setenv("COLUMNS", "400")
    _good(tmp_path / "runs" / "ok")
    history = tmp_path / "runs" / "odd" / History.FILE_NAME
    history.parent.mkdir()
    _no_regular_file(history, how)
    why = f"{history} is not a regular file (a folder, a named pipe, a device)"
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    assert listed.exit_code == 0, listed.output
    out = "".join(listed.output.split("\n"))
    assert " odd - unreadable " in " ".join(listed.output.split())
    assert f"unreadable: {why}" in out
    shown = CliRunner().invoke(app, ["runs", "show", str(history.parent)])
    assert shown.exit_code == 2, shown.output
    assert why in "".join(shown.output.split("\n"))
    found = dict(discover_runs(tmp_path / "runs"))
    assert sorted(found) == ["odd", "ok"]
    with pytest.raises(RunReadError, match=re.escape(f"{history.name} is not a regular file")):
        read_run("odd", found["odd"])
