"""History.load, the server console and `covey runs` on hand-made run folders (in process)."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from covey import History
from covey.cli import app
from covey.core._history import Failure, RoundRecord
from covey.deploy._console import ServerConsole
from covey.deploy._names import ClientNames
from covey.server._outputs import RunOutputs, write_outputs


def _history() -> History:
    failure = Failure(1, "fit", "client disconnected", name="hospital-b")
    return History(
        [
            RoundRecord(0, central_loss=2.3, central_metrics={"accuracy": 0.1}),
            RoundRecord(
                1,
                fit_participants=[0, 1],
                fit_failures=[failure],
                central_loss=1.1,
                central_metrics={"accuracy": 0.7},
                durations={"fit": 0.5, "total": 0.75},
            ),
        ],
        config={"backend": "grpc", "rounds": 1, "strategy": {"name": "FedAvg"}},
        clients={0: "hospital-a", 1: "hospital-b"},
    )


def _show(tmp_path: Path, name: str, history: History, env: dict[str, str] | None = None) -> str:
    """What ``covey runs show`` prints of ``history``, written as the run ``name``."""
    (tmp_path / name).mkdir()
    write_outputs(tmp_path / name, history, plot=False)
    shown = CliRunner().invoke(app, ["runs", "show", name, "--dir", str(tmp_path)], env=env)
    assert shown.exit_code == 0, shown.output
    return shown.output


def test_load_reads_a_run_folder_and_keeps_names(tmp_path: Path) -> None:
    write_outputs(tmp_path, _history())
    loaded = History.load(tmp_path)
    assert loaded == History.load(tmp_path / "history.json")
    assert loaded.clients == {0: "hospital-a", 1: "hospital-b"}
    assert loaded.failures()[0][1].name == "hospital-b"
    assert loaded.name_of(0) == "hospital-a"
    assert loaded.name_of(7) == "client 7"
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_the_plot_is_drawn_at_most_every_so_often_and_at_the_end(tmp_path: Path) -> None:
    outputs = RunOutputs(tmp_path, plot_every=3600.0)
    plot, history_file = tmp_path / "plot.png", tmp_path / "history.json"
    outputs.round_done(_history())
    assert plot.is_file()  # the first round is always drawn
    plot.unlink()
    history_file.unlink()
    outputs.round_done(_history())
    assert history_file.is_file()  # the history after every round
    assert not plot.exists()  # the plot not again within the hour
    outputs.finish(_history())
    assert plot.read_bytes()[:4] == b"\x89PNG"
    quiet = RunOutputs(tmp_path / "none", plot=False)
    (tmp_path / "none").mkdir()
    quiet.round_done(_history())
    quiet.finish(_history())
    assert not (tmp_path / "none" / "plot.png").exists()


def test_load_reads_a_history_written_before_names(tmp_path: Path) -> None:
    data = _history().to_dict()
    del data["clients"]
    for record in data["rounds"]:
        for failure in record["fit_failures"]:
            del failure["name"]
    (tmp_path / "history.json").write_text(json.dumps(data))
    loaded = History.load(tmp_path)
    assert loaded.clients == {}
    assert loaded.failures()[0][1].who == "client 1"


def test_load_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no history\.json in"):
        History.load(tmp_path)
    (tmp_path / "history.json").write_text('{"rounds": 3}')
    with pytest.raises(ValueError, match="is not a covey history"):
        History.load(tmp_path)


def test_console_names_clients_and_counts_them() -> None:
    lines: list[str] = []
    names: dict[int, str] = {}
    shown = ServerConsole(lines.append, 2, names)
    keeper = ClientNames(None, names, shown.on_event)
    shown.waiting()
    assert keeper.client_id("hospital-a") == 0
    keeper.event("hospital-a", "join", "ipv4:127.0.0.1:5000")
    assert keeper.client_id("hospital-b") == 1
    keeper.event("hospital-b", "join", "")
    record = _history().rounds[1]
    record.fit_failures[0].name = ""
    keeper.name_failures(record)
    assert record.fit_failures[0].name == "hospital-b"
    shown.on_round(record)
    text = "\n".join(lines)
    assert "waiting for clients (0 of 2 connected)" in text
    assert "client hospital-a joined (1 of 2 connected)" in text
    assert "client hospital-b joined (2 of 2 connected)" in text
    assert "round 1: fit by hospital-a, hospital-b" in text
    assert "accuracy 0.7000" in text
    assert "took fit 0.50 s" in text
    assert "hospital-b failed in fit:[/] client disconnected" in text
    assert all(line.startswith("[dim]") for line in lines)  # each line has its time


def test_runs_list_and_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "server-1").mkdir()
    write_outputs(tmp_path / "server-1", _history(), plot=False)
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert "server-1" in listed.output
    assert "deployed" in listed.output
    assert "1/1" in listed.output
    assert "0.7000" in listed.output
    shown = CliRunner().invoke(app, ["runs", "show", "server-1", "--dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    for text in ("strategy FedAvg", "hospital-a", "hospital-b", "client disconnected", "0.7000"):
        assert text in shown.output
    missing = CliRunner().invoke(app, ["runs", "show", "nope", "--dir", str(tmp_path)])
    assert missing.exit_code == 2
    assert "error: no run 'nope'" in missing.output


def test_runs_list_names_the_round_of_a_metric_from_before_the_last_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run stopped after round 4 that evaluated every 3 rounds showed round 3's loss
    # as if it were round 4's.
    monkeypatch.setenv("COLUMNS", "200")
    evaluated = {0: 2.3, 3: 0.412}
    records = [
        RoundRecord(rnd, central_loss=evaluated.get(rnd), central_metrics={"accuracy": 0.625})
        if rnd in evaluated
        else RoundRecord(rnd, fit_participants=[0, 1])
        for rnd in range(5)
    ]
    config = {"backend": "inline", "rounds": 6, "strategy": {"name": "FedAvg"}}
    for name, history in (("stale", History(records, config=config)), ("fresh", _history())):
        (tmp_path / name).mkdir()
        write_outputs(tmp_path / name, history, plot=False)
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.output.splitlines() if line.strip()}
    assert "4/6" in rows["stale"]
    assert "0.6250 (r3)" in rows["stale"]
    assert "0.4120 (r3)" in rows["stale"]
    assert "0.7000" in rows["fresh"]  # its last round's: no round said
    assert "(r" not in rows["fresh"]
    # It ended "... before the run's last", a phrase cut short.
    (note,) = [line for line in listed.output.splitlines() if line.startswith("(rN)")]
    assert note == "(rN): the latest value was measured at round N, before the run's last round"


def test_runs_show_gives_the_delta_of_the_epsilon_it_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    history = _history()
    history.rounds[1].privacy = {"epsilon": 1.25, "delta": 1e-5}
    output = _show(tmp_path, "dp", history)
    assert "1.2500" in output
    assert "delta=1e-05" in output


def test_runs_show_gives_the_runs_own_metrics_a_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # only train_loss, loss and accuracy had columns: "acc" or "f1" never showed
    monkeypatch.setenv("COLUMNS", "250")
    history = _history()
    history.rounds[1].fit_metrics = {"acc": 0.625, "flag": True, "note": "x"}
    history.rounds[1].evaluate_metrics = {"f1": 0.375}
    history.rounds[1].central_metrics["m[0]"] = 0.125  # markup is shown as written
    output = _show(tmp_path, "mine", history)
    for text in ("acc", "0.6250", "f1", "0.3750", "m[0]", "0.1250"):
        assert text in output
    assert "flag" not in output  # not a number
    many = _history()
    many.rounds[1].fit_metrics = {f"m{k}": float(k) for k in range(9)}
    output = _show(tmp_path, "many", many)
    assert "not shown: fit m6, fit m7, fit m8 (in history.json)" in output


def test_runs_show_names_the_covey_that_started_the_run_and_its_compression(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    history = _history()
    history.config["covey_version"] = "9.1.0"
    output = _show(tmp_path, "server-1", history)
    assert "started by covey 9.1.0" in output
    assert "compression" not in output
    history.config["compression"] = "q8"  # the compression was not shown: a run like any other
    assert "compression q8, started by covey 9.1.0" in _show(tmp_path, "q8", history)


def test_runs_show_counts_an_asynchronous_runs_updates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its tables said "round" while its server's log and its errors say "update".
    monkeypatch.setenv("COLUMNS", "200")
    history = _history()
    history.config["strategy"] = {"name": "FedBuff", "options": {"buffer_size": 2}}
    headers = [line.split() for line in _show(tmp_path, "fedbuff", history).splitlines()]
    assert ["Updates"] in headers
    assert ["update", "client", "stage", "error"] in headers  # the failures'
    assert any(line[:3] == ["update", "clients", "failed"] for line in headers)
    assert not any("round" in line or "Rounds" in line for line in headers)
    headers = [line.split() for line in _show(tmp_path, "fedavg", _history()).splitlines()]
    assert ["Rounds"] in headers
    assert ["round", "client", "stage", "error"] in headers


def test_runs_show_gives_the_bytes_each_round_moved(tmp_path: Path) -> None:
    history = _history()
    history.rounds[1].bytes_sent, history.rounds[1].bytes_received = 80_000_000, 20_500_000
    with_bytes = {**os.environ, "COLUMNS": "250"}
    output = _show(tmp_path, "small", history, env=with_bytes)
    assert "MB" in output
    row = next(line for line in output.splitlines() if line.strip().startswith("1 "))
    assert "80.0" in row
    assert "20.5" in row
    history.rounds[1].bytes_sent, history.rounds[1].bytes_received = 48_000, 12_000
    output = _show(tmp_path, "kb", history, env=with_bytes)
    row = next(line for line in output.splitlines() if line.strip().startswith("1 "))
    assert "48.0" in row
    assert "12.0" in row
    assert "kB" in output
    uncounted = _history()  # a history written before bytes were counted: no such columns
    output = _show(tmp_path, "old", uncounted, env=with_bytes)
    assert "sent" not in output
    history.rounds[1].bytes_sent = 10**400  # any integer is valid JSON: no OverflowError
    row = next(
        line
        for line in _show(tmp_path, "huge", history, env=with_bytes).splitlines()
        if line.strip().startswith("1 ")
    )
    assert "inf" in row


def test_the_server_console_counts_clients_past_those_needed() -> None:
    from covey.deploy._console import ServerConsole

    lines: list[str] = []
    console = ServerConsole(lines.append, 2, {})
    for name in ("a", "b", "c"):
        console.on_event(name, "join")
    console.on_event("a", "leave", "disconnected")
    assert lines[2].endswith("client c joined (3 connected, 2 needed)")
    assert lines[3].endswith("client a left: disconnected (2 of 2 connected)")


def test_the_server_console_leaves_refusals_to_the_transport_s_warning() -> None:
    # The transport logs each refusal and broken protocol as a WARNING; the console
    # wrote a line of each too, so every refusal (a TLS probe, a revoked site) came twice.
    lines: list[str] = []
    console = ServerConsole(lines.append, 2, {})
    console.on_event("s1", "refused", "certificate revoked (peer ipv4:127.0.0.1:5)")
    console.on_event("s1", "protocol-error", "a chunk frame over 2 MiB (peer ipv4:127.0.0.1:5)")
    assert lines == []
    console.on_event("s1", "join")
    assert lines[-1].endswith("client s1 joined (1 of 2 connected)")


def test_the_server_console_counts_clients_that_joined_before_it_says_it_waits() -> None:
    # Clients started before the server retry, and may join as soon as it listens.
    lines: list[str] = []
    console = ServerConsole(lines.append, 3, {})
    console.on_event("a", "join")
    console.waiting()
    assert lines[-1].endswith("waiting for clients (1 of 3 connected)")
    console.on_event("b", "join")
    console.on_event("c", "join")
    lines.clear()
    console.waiting()  # as many as it needs: it waits for none
    assert lines == []


def test_the_server_console_names_a_few_clients_of_a_big_round_and_counts_the_rest() -> None:
    lines: list[str] = []
    names = {c: f"site-{c}" for c in range(1000)}
    shown = ServerConsole(lines.append, 1000, names)
    record = RoundRecord(round=1, fit_participants=list(range(600)))
    record.fit_failures = [
        Failure(c, "fit", "no reply in time", name=names[c]) for c in range(600, 1000)
    ]
    shown.on_round(record)
    # One line per round and a bounded number of failure lines, not one name or line per client.
    assert len(lines) <= 14
    assert max(len(line) for line in lines) < 1000
    assert "site-9 and 590 more (600 clients)" in lines[0]
    assert "site-10," not in lines[0]
    assert "390 more clients failed[/] (390 in fit)" in lines[-1]


def test_the_server_console_counts_one_more_failed_client_in_the_singular() -> None:
    lines: list[str] = []
    names = {c: f"site-{c}" for c in range(20)}
    shown = ServerConsole(lines.append, 20, names)
    record = RoundRecord(round=1, fit_participants=list(range(9)))
    record.fit_failures = [
        Failure(c, "fit", "no reply in time", name=names[c]) for c in range(9, 20)
    ]
    shown.on_round(record)
    assert "1 more client failed[/] (1 in fit)" in lines[-1], lines[-1]


def test_a_deployed_run_that_failed_before_round_1_finished_says_so(tmp_path: Path) -> None:
    import numpy as np

    import covey
    from covey.deploy import serve

    with pytest.raises(covey.FederationError, match="round 1: only 0 of the 2 clients"):
        serve(
            covey.FedAvg(),
            3,
            {"w": np.zeros(2)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=tmp_path / "run",
            plot=False,
            wait_timeout=0.2,
        )
    out = CliRunner().invoke(app, ["runs", "show", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())
    assert "stopped before any round finished: round 1: only 0 of the 2 clients" in said
    assert "after round 0" not in said


@pytest.mark.parametrize(
    ("rounds", "reason", "said"),
    [
        # the record of the round it failed in is kept, for its failures
        ([0, 1, 2, 3], "round 3: 0 of 5 sampled clients replied", "after round 2: round 3"),
        ([0, 1], "round 1: the aggregation step failed", "before any round finished"),
        ([0], "round 1: only 0 of the 2 clients needed", "before any round finished"),
        ([], "interrupted (SIGINT)", "before any round finished"),
        ([0, 1, 2], "interrupted (SIGINT)", "after round 2: interrupted"),
        ([0, 1], "privacy budget: round 2 would spend epsilon", "after round 1: privacy budget"),
        ([0, 1, 2], "update 2: no reply within 5 s", "after update 1: update 2"),
    ],
)
def test_a_stopped_run_names_the_last_round_that_finished(
    rounds: list[int], reason: str, said: str
) -> None:
    from covey.cli._runs import stopped_early

    history = History([RoundRecord(r) for r in rounds], stopped_reason=reason)
    early = stopped_early(history)
    assert early is not None
    assert said in early


@pytest.mark.parametrize(
    ("rounds", "reason", "count"),
    [
        ([0, 1], "round 1: the aggregation step failed", "0/3"),  # it read 1/3
        ([0, 1, 2], "round 2: 0 of 5 sampled clients replied", "1/3"),
        ([0, 1], "privacy budget: round 2 would spend epsilon", "1/3"),
    ],
)
def test_runs_list_counts_the_rounds_that_finished_as_show_does(
    tmp_path: Path, rounds: list[int], reason: str, count: str
) -> None:
    history = History(
        [RoundRecord(r) for r in rounds],
        config={"backend": "grpc", "rounds": 3},
        stopped_reason=reason,
    )
    _show(tmp_path, "run", history)
    listed = CliRunner().invoke(app, ["runs", "list", str(tmp_path)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    row = next(
        line.split()
        for line in listed.output.splitlines()
        if line.split()[:2] == ["run", "deployed"]
    )
    assert count in row, row


def test_a_killed_servers_run_says_what_its_resume_needs(tmp_path: Path) -> None:
    # `covey server --resume RUN` alone is refused (it needs the app and the security
    # the server was started with, which the run does not record): the hint says so.
    from covey.cli._runstatus import why_stopped as _why

    (tmp_path / "run.sqlite").touch()
    said = _why(tmp_path, "stopped", History([]))
    assert said is not None
    assert f"covey server --resume {tmp_path}" in said
    assert "--app" in said
    assert "--certs" in said
    assert "--insecure" in said


def test_the_server_console_shows_only_the_metrics_that_are_numbers() -> None:
    # A custom fit_metrics may give each client's value (a list), or a text: the
    # console of `covey server` leaves them out rather than stop the run.
    lines: list[str] = []
    shown = ServerConsole(lines.append, 2, {})
    per_client: Any = [0.5, 1.5]
    shown.on_round(
        RoundRecord(
            1,
            fit_participants=[0, 1],
            fit_metrics={"train_loss": per_client},
            evaluate_participants=[0, 1],
            evaluate_loss=0.25,
            evaluate_metrics={"accuracy": "n/a"},
            central_metrics={"accuracy": 0.75},
        )
    )
    text = "\n".join(lines)
    assert "eval loss 0.2500" in text
    assert "accuracy 0.7500" in text
    assert "train loss" not in text
    assert "eval accuracy" not in text


def test_runs_show_last_prints_only_the_last_rounds_and_their_failures(tmp_path: Path) -> None:
    # A long run printed every round (a 3,000-round run, 3,000 lines): --last N cuts it.
    records = [RoundRecord(0, central_loss=2.3, central_metrics={"accuracy": 0.1})]
    for rnd in range(1, 61):
        failures = [Failure(1, "fit", f"lost in round {rnd}", name="b")] if rnd % 20 == 0 else []
        records.append(
            RoundRecord(
                rnd,
                fit_participants=[0, 1],
                fit_failures=failures,
                central_loss=1.0 / rnd,
                fit_metrics={"late_metric": 1.0} if rnd > 57 else {},
            )
        )
    History(records, config={"backend": "inline", "rounds": 60}).save(tmp_path / "history.json")
    runner = CliRunner(env={"COLUMNS": "200"})
    every = runner.invoke(app, ["runs", "show", str(tmp_path)])
    assert every.exit_code == 0, every.output
    assert "lost in round 20" in every.output
    out = runner.invoke(app, ["runs", "show", str(tmp_path), "--last", "3"])
    assert out.exit_code == 0, out.output
    rows = [line.split()[0] for line in out.output.splitlines() if line.strip()[:2].isdigit()]
    assert rows == ["58", "59", "60", "60"], out.output  # three rounds, then the failure
    assert "Rounds (the last 3 of 61)" in out.output
    assert "late_metric" in out.output  # the columns of the rounds shown
    assert "2 failures before round 58 not shown" in out.output
    assert "lost in round 60" in out.output
    assert "lost in round 40" not in out.output
    assert runner.invoke(app, ["runs", "show", str(tmp_path), "--last", "0"]).exit_code == 2
    whole = runner.invoke(app, ["runs", "show", str(tmp_path), "--last", "100"])
    assert whole.exit_code == 0
    assert "Rounds (the last" not in whole.output
    assert "lost in round 20" in whole.output


def test_runs_show_prints_a_long_runs_last_rounds_and_says_how_to_see_all(
    tmp_path: Path,
) -> None:
    # A 10,000-round run printed 10,004 lines: now its last 100, and how many were left out.
    records = [RoundRecord(0, central_loss=2.3)]
    for rnd in range(1, 251):
        failures = [Failure(1, "fit", f"lost in round {rnd}", name="b")] if rnd % 100 == 0 else []
        records.append(
            RoundRecord(rnd, fit_participants=[0, 1], fit_failures=failures, central_loss=1 / rnd)
        )
    History(records, config={"backend": "inline", "rounds": 250}).save(tmp_path / "history.json")
    runner = CliRunner(env={"COLUMNS": "200"})
    out = runner.invoke(app, ["runs", "show", str(tmp_path)])
    assert out.exit_code == 0, out.output
    rows = [line.split()[0] for line in out.output.splitlines() if line.strip()[:1].isdigit()]
    assert rows[:100] == [str(rnd) for rnd in range(151, 251)], out.output
    assert "Rounds (the last 100 of 251)" in out.output
    assert "the first 151 rounds not shown (--all shows every round, --last N the last N)" in (
        out.output
    )
    assert "lost in round 200" in out.output
    assert "1 failure before round 151 not shown (--all shows every round and failure)" in (
        out.output
    )
    every = runner.invoke(app, ["runs", "show", str(tmp_path), "--all"])
    assert every.exit_code == 0, every.output
    rows = [line.split()[0] for line in every.output.splitlines() if line.strip()[:1].isdigit()]
    assert rows[:251] == [str(rnd) for rnd in range(251)]
    assert "not shown" not in every.output
    assert "lost in round 100" in every.output
    both = runner.invoke(app, ["runs", "show", str(tmp_path), "--all", "--last", "5"])
    assert both.exit_code == 2
    assert "give --last N or --all, not both" in both.output


def test_a_run_killed_during_set_up_is_listed_with_how_to_start_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: `covey runs list` and the dashboard did not list a folder holding only
    # a run.lock (a simulation killed as it started), though `covey runs show` knew it.
    import os

    from covey.dashboard._runs import discover_runs, read_run, summary
    from covey.server._rundb import hold_run
    from covey.sim._rundir import resume_command

    monkeypatch.setenv("COLUMNS", "400")
    (tmp_path / "server-1").mkdir()
    write_outputs(tmp_path / "server-1", _history(), plot=False)
    killed, starting = tmp_path / "killed", tmp_path / "study" / "starting"
    killed.mkdir()
    (killed / "run.lock").write_text("4242\n")
    starting.mkdir(parents=True)
    lock = hold_run(starting)
    try:
        listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path)])
        assert listed.exit_code == 0, listed.output
        rows = {
            line.split()[0]: line.split() for line in listed.output.splitlines() if line.strip()
        }
        assert rows["killed"][1:3] == ["simulated", "interrupted"]
        assert rows["study/starting"][1:3] == ["simulated", "starting"]
        assert "server-1" in rows
        said = " ".join(listed.output.split())
        command = resume_command(killed)
        assert "interrupted during set-up: killed: its simulation stopped" in said
        assert f"`{command}` starts it again at round 1" in said
        shown = CliRunner().invoke(app, ["runs", "show", "killed", "--dir", str(tmp_path)])
        assert f"`{command}` starts it again at round 1" in " ".join(shown.output.split())

        found = dict(discover_runs(tmp_path))
        assert set(found) == {"killed", "server-1", "study/starting"}
        run = read_run("killed", found["killed"])
        assert (run.kind, run.status, run.rounds) == ("simulated", "interrupted", [])
        assert f"`{command}` starts it again at round 1" in summary(run)["note"]
        assert read_run("study/starting", found["study/starting"]).status == "starting"
    finally:
        if lock is not None:
            os.close(lock)


def test_a_deployed_run_killed_before_its_history_was_written_is_listed_and_shown(
    tmp_path: Path,
) -> None:
    # A server killed while it waited for its first clients leaves run.sqlite (status
    # running) and no history.json: `covey runs list` skipped it ("no runs in ...")
    # and `covey runs show` could not read it, while the dashboard listed it.
    from covey.server._store import RunStore

    run = tmp_path / "runs" / "study"
    RunStore.create(run, config={"backend": "grpc", "rounds": 3}, exclusive=True).close()
    assert not (run / "history.json").exists()
    runner = CliRunner(env={"COLUMNS": "250"})
    listed = runner.invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    assert listed.exit_code == 0, listed.output
    assert "study" in listed.output
    assert "stopped" in listed.output
    assert "running" not in listed.output
    shown = runner.invoke(app, ["runs", "show", str(run)])
    assert shown.exit_code == 0, shown.output
    assert "stopped" in shown.output
    assert "covey server --resume" in " ".join(shown.output.split())


def test_rounds_a_killed_runs_history_json_missed_are_read_from_its_store(
    tmp_path: Path,
) -> None:
    # A long run of short rounds rewrites history.json less often than every round;
    # killed, its store (run.sqlite) holds the rounds the file missed.
    import numpy as np

    import covey
    from covey.cli._runs import load_history
    from covey.dashboard._runs import read_run

    class Adder(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(weights={"w": weights["w"] + 1}, num_examples=1)

    run = tmp_path / "run"
    full = covey.simulate(
        lambda cid: Adder(),
        2,
        5,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        run_dir=run,
        progress=False,
    ).history
    written = json.loads((run / "history.json").read_text())
    written["rounds"] = written["rounds"][:3]  # as last written, rounds 0 to 2
    (run / "history.json").write_text(json.dumps(written))
    assert [r["round"] for r in read_run("run", run).rounds] == [0, 1, 2, 3, 4, 5]
    history = load_history(run, [])
    assert history.to_json() == full.to_json()
    shown = CliRunner().invoke(app, ["runs", "show", str(run)])
    assert shown.exit_code == 0, shown.output
    rows = [line.split()[:3] for line in shown.output.splitlines() if line.strip()]
    assert ["5", "2", "0"] in rows, shown.output  # round 5, two clients, none failed


def test_rounds_that_did_not_aggregate_are_named_under_the_table() -> None:
    from covey.cli._rounds import endings
    from covey.server._outputs import not_aggregated

    def record(rnd: int, error: str | None) -> RoundRecord:
        info = {} if error is None else {"error": f"AggregationError: {error}"}
        return RoundRecord(rnd, aggregated=error is None and rnd > 0, aggregate_info=info)

    fine = History([record(0, None), record(1, None), record(2, None)])
    assert not_aggregated(fine) is None
    assert endings(fine) == []
    some = History([record(r, "late" if r in (2, 9) else None) for r in range(10)])
    assert not_aggregated(some) == (
        "2 of 9 rounds did not aggregate (the model was left as it was); rounds 2 and 9: "
        "AggregationError: late"
    )
    every = History([record(0, None), *(record(r, f"full {r}") for r in range(1, 9))])
    assert endings(every) == [
        "no round aggregated: the model is the one the run started with; rounds 1, 2, 3, 4, "
        "5 and 3 more: AggregationError: full 8"
    ]


def test_reading_a_finished_run_leaves_nothing_beside_its_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `covey runs show` and `runs list` left run.sqlite-shm and an empty
    # run.sqlite-wal in the folder of a run that had closed cleanly.
    import numpy as np

    import covey
    from covey.dashboard._runs import read_run

    class Adder(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(weights={"w": weights["w"] + 1}, num_examples=1)

    run = tmp_path / "runs" / "run"
    covey.simulate(
        lambda cid: Adder(),
        2,
        2,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        run_dir=run,
    )
    before = sorted(p.name for p in run.iterdir())
    assert "run.sqlite" in before
    assert "run.sqlite-wal" not in before
    monkeypatch.chdir(tmp_path)
    for args in (["runs", "show", str(run)], ["runs", "list"]):
        shown = CliRunner().invoke(app, args)
        assert shown.exit_code == 0, shown.output
        assert sorted(p.name for p in run.iterdir()) == before, args
    assert [r["round"] for r in read_run("run", run).rounds] == [0, 1, 2]  # the dashboard
    assert sorted(p.name for p in run.iterdir()) == before


def test_reading_a_killed_run_with_a_wal_writes_nothing_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run killed with `kill -9` leaves run.sqlite and run.sqlite-wal (no -shm):
    # reading it in place made run.sqlite-shm in its folder, and touched it on every read.
    import shutil
    import tempfile

    import numpy as np

    from covey.dashboard import DashboardServer
    from covey.dashboard._runs import read_run
    from covey.server import RunStore

    live, killed = tmp_path / "live", tmp_path / "runs" / "killed"
    store = RunStore.create(live, config={"rounds": 5, "strategy": "FedAvg"})
    try:
        for rnd in range(3):
            store.save_round(rnd, {"w": np.ones(2)}, RoundRecord(round=rnd, central_loss=1.0 + rnd))
        killed.mkdir(parents=True)
        for name in ("run.sqlite", "run.sqlite-wal"):  # as the killed process left them
            shutil.copyfile(live / name, killed / name)
    finally:
        store.close()
    (killed / "run.lock").write_text("12345")  # held by no process now
    assert (killed / "run.sqlite-wal").stat().st_size > 0

    def files() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in killed.iterdir()}

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    before = files()
    assert [r["round"] for r in read_run("killed", killed).rounds] == [0, 1, 2]
    with DashboardServer(tmp_path / "runs") as server:
        url = server.url + "api/run?id=killed"
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (our server)
            shown = json.loads(response.read())
    assert [r["central_loss"] for r in shown["rounds"]] == [1.0, 2.0, 3.0]
    assert shown["status"] == "stopped"
    monkeypatch.chdir(tmp_path)
    for args in (["runs", "show", str(killed)], ["runs", "list", "--dir", "runs"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "stopped" in result.output, args
    assert files() == before  # no run.sqlite-shm, nothing touched
    assert list(scratch.iterdir()) == []  # the copies read are gone
