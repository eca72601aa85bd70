"""The commands printed to resume a run repeat the tracker flags it was given.

A resume pasted without ``--tensorboard`` or ``--mlflow`` logged nowhere.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from covey.cli import app

sys.path.insert(0, str(Path(__file__).parent))
from _procs import COVEY_TAKING_CTRL_C, until_listening

TRACKERS = [
    "--tensorboard",
    "tb logs/run 1",
    "--mlflow",
    "ml runs",
    "--mlflow-experiment",
    "my exp",
]
"""Tracker flags with values a shell would split if pasted unquoted."""


def _words_after(command: str, start: str) -> list[str]:
    words = shlex.split(command)
    return words[words.index(start) :]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project made by ``covey new`` in ``tmp_path``, the current folder."""
    monkeypatch.chdir(tmp_path)
    made = CliRunner().invoke(app, ["new", "demo"])
    assert made.exit_code == 0, made.output
    monkeypatch.syspath_prepend(str(tmp_path / "demo"))
    return tmp_path / "demo"


def test_a_served_project_s_resume_command_repeats_the_tracker_flags(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.deploy import _cli
    from covey.server._served import project_command

    seen: dict[str, Any] = {}
    monkeypatch.setattr(_cli, "_serve", lambda server_app, s, flags: seen.update(flags))
    given = ["run", "demo", "--federation", "local", "--set", "round-timeout=30", *TRACKERS]
    result = CliRunner().invoke(app, given)
    assert result.exit_code == 0, result.output
    hint = seen["resume_hint"]
    assert _words_after(hint, "--set") == ["--set", "round-timeout=30", *TRACKERS]
    # The run folder keeps them too, for `covey runs` and the dashboard, as absolute folders.
    kept = project_command(seen["run"])
    assert kept is not None
    words = _words_after(kept, "--tensorboard")
    assert words == [
        *("--tensorboard", str(Path("tb logs/run 1").resolve())),
        *("--mlflow", str(Path("ml runs").resolve())),
        *("--mlflow-experiment", "my exp"),
    ]
    # Without tracker flags, none are repeated (the table's own are read again).
    seen.clear()
    result = CliRunner().invoke(app, ["run", "demo", "--federation", "local"])
    assert result.exit_code == 0, result.output
    assert "--tensorboard" not in seen["resume_hint"]
    assert "--mlflow" not in (project_command(seen["run"]) or "--mlflow")


def test_a_served_run_of_an_older_covey_is_continued_without_trackers(tmp_path: Path) -> None:
    from covey.server._served import FEDERATION_FILE, project_command

    (tmp_path / FEDERATION_FILE).write_text('{"project": "/p", "federation": "f", "set": []}')
    assert project_command(tmp_path) == f"covey run /p --federation f --resume {tmp_path}"
    (tmp_path / FEDERATION_FILE).write_text(
        '{"project": "/p", "federation": "f", "set": [], "trackers": {"tensorboard": 3}}'
    )
    assert project_command(tmp_path) is None  # damaged: the generic hint is given


def test_covey_server_s_resume_command_repeats_the_tracker_flags(
    served_flags: dict[str, Any],
) -> None:
    given = ["server", "--app", "tiny_app:server_app", "--insecure", "--run-dir", "run"]
    result = CliRunner().invoke(app, [*given, *TRACKERS])
    assert result.exit_code == 0, result.output
    assert _words_after(served_flags["resume_hint"], "--tensorboard") == TRACKERS


def test_an_interrupted_simulation_s_resume_command_repeats_the_tracker_flags(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import covey
    from covey.cli import _project_sim
    from covey.deploy._cli_trackers import Trackers

    def interrupted(*args: object, **kwargs: Any) -> None:
        kwargs["run_dir"].mkdir(parents=True, exist_ok=True)
        raise KeyboardInterrupt

    opened: list[dict[str, Any]] = []

    def no_trackers(flags: dict[str, Any], refused: Any = None) -> Trackers:
        opened.append(flags)  # TensorBoard and MLflow are not needed to print the command
        return Trackers([], flags["run"], None)

    monkeypatch.setattr(covey, "simulate", interrupted)
    monkeypatch.setattr(_project_sim, "open_trackers", no_trackers)
    monkeypatch.setenv("COLUMNS", "400")
    result = CliRunner().invoke(app, ["run", "demo", *TRACKERS])
    assert result.exit_code == 130, result.output
    assert opened[0]["trackers"]["tensorboard"] == "tb logs/run 1"
    said = " ".join(result.output.split("\n"))
    command = said[said.index("`covey run") + 1 :]
    command = command[: command.index("`")]
    assert _words_after(command, "--tensorboard") == TRACKERS
    assert shlex.split(command)[:4] == ["covey", "run", str(project), "--resume"]


def _absolute() -> list[str]:
    """:data:`TRACKERS` as the run folder keeps them: folders made absolute."""
    return [
        *("--tensorboard", str(Path("tb logs/run 1").resolve())),
        *("--mlflow", str(Path("ml runs").resolve())),
        *("--mlflow-experiment", "my exp"),
    ]


def _quoted(text: str, start: str) -> str:
    """The first command in backquotes in ``text`` that starts with ``start``."""
    said = " ".join(text.split())
    command = said[said.index(f"`{start}") + 1 :]
    return command[: command.index("`")]


def _env(*paths: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "COLUMNS": "400",
        "PYTHONPATH": os.pathsep.join([*map(str, paths), *sys.path]),
    }
    env.pop("MLFLOW_ALLOW_FILE_STORE", None)  # the logger's to turn on
    return env


@pytest.mark.slow
def test_runs_show_and_the_dashboard_repeat_a_stopped_server_s_tracker_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: they gave `covey server --resume run` alone, so the pasted resume logged nowhere.
    from covey.dashboard._runs import discover_runs, read_run, summary

    monkeypatch.chdir(tmp_path)
    port_file = tmp_path / "port"
    server = _listening(tmp_path, port_file, "--run-dir", "run", *TRACKERS)
    try:
        server.send_signal(signal.SIGINT)  # waiting for its clients: no round logged
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    assert server.returncode == 130, err
    stopped = _quoted(err, "covey server --resume")
    assert _words_after(stopped, "--tensorboard") == TRACKERS  # as given on the command line
    shown = CliRunner().invoke(app, ["runs", "show", "run", "--dir", "."], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    resume = _quoted(shown.output, "covey server --resume")
    assert shlex.split(resume)[:4] == ["covey", "server", "--resume", "run"]
    assert _words_after(resume, "--tensorboard") == _absolute()
    (found,) = discover_runs(tmp_path)
    note = summary(read_run(*found))["note"]
    assert _words_after(_quoted(note, "covey server --resume"), "--tensorboard") == _absolute()


@pytest.mark.slow
def test_runs_show_repeats_a_stopped_simulation_s_tracker_flags(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: `covey runs show` and the dashboard gave `covey run --resume DIR` alone.
    from covey.dashboard._runs import discover_runs, read_run, summary

    out = _stop_simulation(project, signal.SIGINT, "demo", "--set", "rounds=100000", *TRACKERS)
    (run,) = project.glob("runs/*")
    stopped = _quoted(out, "covey run")
    assert _words_after(stopped, "--tensorboard") == TRACKERS
    shown = CliRunner().invoke(app, ["runs", "show", run.name, "--dir", str(run.parent)])
    assert shown.exit_code == 0, shown.output
    resume = _quoted(shown.output, "covey run")
    assert shlex.split(resume)[:4] == ["covey", "run", str(project), "--resume"]
    assert _words_after(resume, "--tensorboard") == _absolute()
    ((_, path),) = discover_runs(run.parent)
    note = summary(read_run(run.name, path))["note"]
    assert _words_after(_quoted(note, "covey run"), "--tensorboard") == _absolute()
    # Resumed with the flags and killed (kill -9): `covey runs list` gives them too.
    _stop_simulation(project, signal.SIGKILL, "demo", "--resume", str(run), *TRACKERS)
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(run.parent)])
    assert listed.exit_code == 0, listed.output
    assert "stopped" in listed.output
    assert _words_after(_quoted(listed.output, "covey run"), "--tensorboard") == _absolute()


def _listening(folder: Path, port_file: Path, *args: str) -> subprocess.Popen[str]:
    """``covey server`` of the tiny app in ``folder`` given ``args``, once it listens."""
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "covey", "server", "--app", "tiny_app:server_app"),
            *("--insecure", "--address", "127.0.0.1:0", "--port-file", str(port_file)),
            *("--wait-timeout", "60", "--no-plot", *args),
        ],
        cwd=folder,
        env=_env(Path(__file__).parent / "apps"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until_listening(server, port_file)
    except BaseException:
        server.kill()
        server.wait(10)
        raise
    return server


def _stop_simulation(project: Path, sig: signal.Signals, *args: str) -> str:
    """Run ``covey run ARGS`` in a process, send ``sig`` once a round is done; its output."""
    done = {path: path.stat().st_mtime_ns for path in project.glob("runs/*/history.json")}
    proc = subprocess.Popen(
        [*COVEY_TAKING_CTRL_C, "run", *args],
        cwd=project.parent,
        env=_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def a_round_done() -> bool:
        now = {path: path.stat().st_mtime_ns for path in project.glob("runs/*/history.json")}
        return any(done.get(path) != stamp for path, stamp in now.items())

    try:
        deadline = time.monotonic() + 120
        while not a_round_done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a_round_done(), "no round finished within 120 s"
        os.killpg(proc.pid, sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == (130 if sig == signal.SIGINT else -sig), out
    return out.decode(errors="replace")


def test_trackers_json_keeps_the_flags_of_the_latest_start_and_its_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is needed")
    from covey.core import RoundRecord
    from covey.deploy._cli_trackers import TRACKERS_FILE, open_trackers
    from covey.server._served import how_to_continue, recorded_trackers
    from covey.sim._rundir import resume_command

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()

    def start(resuming: bool, **given: str) -> None:
        flags = {"trackers": given, "tracker_flags": given, "run": run, "resuming": resuming}
        with open_trackers(flags) as trackers:
            trackers(RoundRecord(round=1, central_loss=0.5))

    start(False, mlflow="ml runs", mlflow_experiment="my exp")
    first = json.loads((run / TRACKERS_FILE).read_text())
    assert first["flags"] == {"mlflow": str(tmp_path / "ml runs"), "mlflow_experiment": "my exp"}
    # A trackers.json of an older covey keeps the MLflow run alone: no flag to repeat.
    (run / TRACKERS_FILE).write_text(json.dumps({"mlflow": first["mlflow"]}))
    assert recorded_trackers(run) == {}
    assert how_to_continue(run).startswith(f"`covey server --resume {run}` and the --app")
    # Resumed with the same store, the run goes on in its MLflow run and keeps the flags.
    start(True, mlflow=str(tmp_path / "ml runs"), mlflow_experiment="my exp", tensorboard="tb")
    kept = json.loads((run / TRACKERS_FILE).read_text())
    assert kept["mlflow"] == first["mlflow"]
    assert recorded_trackers(run) == {
        "tensorboard": str(tmp_path / "tb"),
        "mlflow": str(tmp_path / "ml runs"),
        "mlflow_experiment": "my exp",
    }
    # Resumed without flags: none are repeated, and the MLflow run is still the one to go on in.
    start(True)
    assert json.loads((run / TRACKERS_FILE).read_text()) == {"mlflow": first["mlflow"], "flags": {}}
    assert resume_command(run) == f"covey.simulate(..., run_dir={str(run)!r}, resume=True)"
    (run / TRACKERS_FILE).write_text('{"flags": {"tensorboard": 3}}')  # damaged
    assert recorded_trackers(run) == {}
    # A run with no tracker keeps no file.
    bare = tmp_path / "bare"
    bare.mkdir()
    with open_trackers({"run": bare, "resuming": False, "tracker_flags": {}}) as trackers:
        trackers(RoundRecord(round=1, central_loss=0.5))
    assert not (bare / TRACKERS_FILE).exists()


def test_a_run_interrupted_before_its_first_round_keeps_its_tracker_flags(tmp_path: Path) -> None:
    from covey.deploy._cli_trackers import open_trackers
    from covey.server._served import recorded_trackers

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.sqlite").write_bytes(b"")  # the run started
    given = {"tensorboard": str(tmp_path / "tb")}
    flags = {"trackers": {}, "tracker_flags": given, "run": run, "resuming": False}
    with pytest.raises(KeyboardInterrupt), open_trackers(flags):
        raise KeyboardInterrupt
    assert recorded_trackers(run) == given
    unstarted = tmp_path / "unstarted"  # refused before it started: nothing is written
    unstarted.mkdir()
    with pytest.raises(KeyboardInterrupt), open_trackers({**flags, "run": unstarted}):
        raise KeyboardInterrupt
    assert list(unstarted.iterdir()) == []


@pytest.mark.slow
def test_a_simulation_killed_before_its_first_round_keeps_its_tracker_flags(
    project: Path,
) -> None:
    # Before: trackers.json was written after the first round logged, so a run killed
    # (kill -9) before it was resumed without its trackers.
    from covey.server._served import recorded_trackers

    app_file = project / "demo" / "server_app.py"
    source = app_file.read_text()
    head = "def evaluate(rnd: int, weights: covey.Weights) -> tuple[float, dict[str, Any]]:\n"
    assert head in source
    # round 0's central evaluation never ends: the run is killed before any round finishes
    app_file.write_text(source.replace(head, head + "    import time\n\n    time.sleep(600)\n"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "covey", "run", "demo", *TRACKERS],
        cwd=project.parent,
        env=_env(project),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(project.glob("runs/*/run.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(project.glob("runs/*/run.json")), "the run did not start within 120 s"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    (run,) = project.glob("runs/*")
    assert (
        not (run / "history.json").exists()
        or '"round": 1' not in (run / "history.json").read_text()
    )
    assert recorded_trackers(run) == {
        "tensorboard": str(Path("tb logs/run 1").resolve()),
        "mlflow": str(Path("ml runs").resolve()),
        "mlflow_experiment": "my exp",
    }
    given = ["runs", "show", run.name, "--dir", str(run.parent)]
    shown = CliRunner().invoke(app, given, env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    assert "`covey run" in shown.output, shown.output
    assert _words_after(_quoted(shown.output, "covey run"), "--tensorboard") == _absolute()


def test_a_run_that_fails_before_its_first_round_keeps_the_trackers_json_it_had(
    tmp_path: Path,
) -> None:
    from covey.deploy._cli_trackers import TRACKERS_FILE, open_trackers
    from covey.server._served import recorded_trackers

    run = tmp_path / "run"
    run.mkdir()
    given = {"tensorboard": str(tmp_path / "tb")}
    flags = {"trackers": {}, "tracker_flags": given, "run": run, "resuming": True}
    (run / TRACKERS_FILE).write_text(json.dumps({"flags": {"mlflow_experiment": "kept"}}))

    def refused_start() -> None:
        with open_trackers(flags) as trackers:
            trackers.started()
            assert recorded_trackers(run) == given  # kept as the run starts
            raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        refused_start()
    assert recorded_trackers(run) == {"mlflow_experiment": "kept"}
    (run / TRACKERS_FILE).unlink()
    with pytest.raises(ValueError, match="refused"):
        refused_start()
    assert not (run / TRACKERS_FILE).exists()


def test_runs_list_gives_a_stopped_deployed_run_the_command_that_continues_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: `covey runs list` gave the command of stopped simulations alone; a deployed
    # run whose server was killed was listed "stopped" with no word of how to go on.
    import numpy as np

    from covey.core import RoundRecord
    from covey.server import RunStore
    from covey.server._served import TRACKERS_FILE, record_federation

    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    served, project_run = runs / "served", runs / "project"
    for run in (served, project_run):
        config = {"rounds": 5, "strategy": "FedAvg", "backend": "grpc"}
        store = RunStore.create(run, config=config)
        try:
            for rnd in range(2):
                store.save_round(rnd, {"w": np.ones(2)}, RoundRecord(round=rnd, central_loss=1.0))
        finally:
            store.close()
        (run / "run.lock").write_text("12345")  # its server was killed: held by no process
    flags = {"tensorboard": str(tmp_path / "tb logs"), "mlflow_experiment": "my exp"}
    (served / TRACKERS_FILE).write_text(json.dumps({"flags": flags}))
    record_federation(project_run, tmp_path / "proj", "local", ["rounds=9"], flags)
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", "runs"], env={"COLUMNS": "400"})
    assert listed.exit_code == 0, listed.output
    server = _quoted(listed.output, "covey server --resume")
    assert shlex.split(server) == [
        *("covey", "server", "--resume", "runs/served"),
        *("--tensorboard", str(tmp_path / "tb logs"), "--mlflow-experiment", "my exp"),
    ]
    project = _quoted(listed.output, "covey run")
    assert shlex.split(project) == [
        *("covey", "run", str(tmp_path / "proj"), "--federation", "local"),
        *("--resume", "runs/project", "--set", "rounds=9"),
        *("--tensorboard", str(tmp_path / "tb logs"), "--mlflow-experiment", "my exp"),
    ]
    # `covey runs show` gives the same commands.
    for run, start in ((served, "covey server --resume"), (project_run, "covey run")):
        given = ["runs", "show", str(run.relative_to(tmp_path))]
        shown = CliRunner().invoke(app, given, env={"COLUMNS": "400"})
        assert shown.exit_code == 0, shown.output
        assert _quoted(shown.output, start) == (server if run == served else project)


@pytest.mark.slow
def test_a_resumed_server_killed_before_its_first_round_keeps_its_tracker_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: a resumed server killed (kill -9) while it waited for its clients kept the
    # flags of the start before (none here): its next resume logged nowhere.
    from covey.server._served import how_to_continue, recorded_trackers

    monkeypatch.chdir(tmp_path)
    port_file = tmp_path / "port"

    def killed_once_listening(*args: str) -> None:
        port_file.unlink(missing_ok=True)
        server = _listening(tmp_path, port_file, *args)
        try:
            server.kill()  # waiting for its clients: no round of this start logged
            server.communicate(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(10)

    killed_once_listening("--run-dir", "run")
    assert recorded_trackers(tmp_path / "run") == {}
    killed_once_listening("--resume", "run", *TRACKERS)
    assert recorded_trackers(tmp_path / "run") == {
        "tensorboard": str(tmp_path / "tb logs/run 1"),
        "mlflow": str(tmp_path / "ml runs"),
        "mlflow_experiment": "my exp",
    }
    resume = _quoted(how_to_continue(tmp_path / "run"), "covey server --resume")
    assert _words_after(resume, "--tensorboard") == _absolute()


def test_a_resume_without_the_recorded_tracker_flags_warns_it_logs_to_no_tracker(
    project: Path,
) -> None:
    # Resumed without --tensorboard, the run went on logging to no tracker, unsaid.
    from covey.server._served import TRACKERS_FILE

    def covey_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "covey", "run", "demo", *args],
            cwd=project.parent,
            env=_env(project),
            capture_output=True,
            text=True,
            timeout=300,
        )

    first = covey_run("--set", "rounds=1")
    assert first.returncode == 0, first.stdout + first.stderr
    (run,) = project.glob("runs/*")
    kept = {"flags": {"tensorboard": str(project / "tb")}}  # as a start with the flag keeps it
    (run / TRACKERS_FILE).write_text(json.dumps(kept))
    resumed = covey_run("--resume", str(run), "--set", "rounds=2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    said = " ".join((resumed.stdout + resumed.stderr).split())
    assert (
        f"without the tracker flags its latest start was given (--tensorboard {project / 'tb'})"
        in said
    )
    assert "this start logs to no tracker" in said
    assert not (project / "tb").exists()  # the trackers used are as they were: none
