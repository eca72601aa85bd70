"""``--tensorboard`` and ``--mlflow`` of ``covey run`` and ``covey server``.

The rounds are read back with TensorBoard's ``EventAccumulator`` and MLflow's
client, as ``tests/test_trackers.py`` reads the loggers' own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import covey

sys.path.insert(0, str(Path(__file__).parent))
from _clirun import covey as run_covey
from _clirun import (
    in_tmp,  # noqa: F401 - the fixture
    last_line,
)
from _procs import until_listening

APPS = Path(__file__).parent / "apps"


def _steps(folder: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def _mlflow_runs(store: Path, experiment: str, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as the logger turns it on

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return [(client, run) for run in client.search_runs([found.experiment_id])]


def _mlflow_steps(client: Any, run: Any, tag: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, tag))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("MLFLOW_ALLOW_FILE_STORE", None)  # the logger's to turn on
    return subprocess.run(
        [sys.executable, "-m", "covey", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def _new_demo(tmp_path: Path) -> Path:
    """A project made by ``covey new demo`` in ``tmp_path``: its folder."""
    assert _cli("new", "demo", cwd=tmp_path).returncode == 0
    return tmp_path / "demo"


@pytest.mark.slow
def test_covey_run_logs_each_round_and_a_resume_goes_on_in_the_same_trackers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _new_demo(tmp_path)
    toml = root / "pyproject.toml"
    toml.write_text(
        toml.read_text().replace("[tool.covey]\n", '[tool.covey]\ntensorboard = "tb"\n')
    )
    out = _cli("run", "--set", "rounds=2", "--mlflow", "file:./mlruns", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    (run_dir,) = (root / "runs").iterdir()
    assert [r.round for r in covey.History.load(run_dir).rounds] == [0, 1, 2]
    assert _steps(root / "tb", "clients/fit") == [1, 2]  # the table's folder, the project's
    ((client, run),) = _mlflow_runs(root / "mlruns", "demo", monkeypatch)  # the project's name
    assert run.info.status == "FINISHED"
    assert run.info.run_name == run_dir.name
    assert _mlflow_steps(client, run, "clients/fit") == [1, 2]
    out = _cli(
        *("run", "--resume", str(run_dir), "--set", "rounds=3", "--mlflow", "file:./mlruns"),
        cwd=root,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert _steps(root / "tb", "clients/fit") == [1, 2, 3]
    ((client, again),) = _mlflow_runs(root / "mlruns", "demo", monkeypatch)  # the same MLflow run
    assert again.info.run_id == run.info.run_id
    assert _mlflow_steps(client, again, "clients/fit") == [1, 2, 3]  # no round twice


@pytest.mark.slow
def test_a_round_called_again_on_resume_is_logged_once_to_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from covey.server._runrecords import PENDING_KEY

    root = _new_demo(tmp_path)
    trackers = ("--mlflow", "file:./mlruns", "--tensorboard", "tb")
    out = _cli("run", "--set", "rounds=2", *trackers, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    (run_dir,) = (root / "runs").iterdir()
    # As a run killed after its trackers logged round 2 but before its callbacks all
    # returned: the resumed run calls them again with round 2's saved record.
    with sqlite3.connect(run_dir / "run.sqlite") as conn:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, '2')", (PENDING_KEY,))
    conn.close()
    out = _cli("run", "--resume", str(run_dir), "--set", "rounds=3", *trackers, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert _steps(root / "tb", "clients/fit") == [1, 2, 3]
    ((client, run),) = _mlflow_runs(root / "mlruns", "demo", monkeypatch)
    assert _mlflow_steps(client, run, "clients/fit") == [1, 2, 3]  # round 2 once
    assert _mlflow_steps(client, run, "central/loss") == [0, 1, 2, 3]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_covey_server_logs_each_round_of_two_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("MLFLOW_ALLOW_FILE_STORE", None)  # the logger's to turn on
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), *sys.path])
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "covey", "server", "--app", "tiny_app:server_app"),
            *("--insecure", "--address", "127.0.0.1:0", "--port-file", str(port_file)),
            *("--run-dir", "run", "--wait-timeout", "60", "--no-plot"),
            *("--tensorboard", "tb", "--mlflow", "ml", "--mlflow-experiment", "tiny"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    clients: list[subprocess.Popen[Any]] = []
    try:
        port = until_listening(server, port_file)
        for cid in (0, 1):
            clients.append(
                subprocess.Popen(
                    [
                        *(sys.executable, "-m", "covey", "client", "--app", "tiny_app:client_fn"),
                        *("--cid", str(cid), "--name", f"site-{cid}", "--insecure"),
                        *("--server", f"127.0.0.1:{port}"),
                    ],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        output, _ = server.communicate(timeout=180)
    finally:
        procs: list[subprocess.Popen[Any]] = [server, *clients]
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    assert server.returncode == 0, output
    assert _steps(tmp_path / "tb", "clients/fit") == [1, 2]
    ((client, run),) = _mlflow_runs(tmp_path / "ml", "tiny", monkeypatch)
    assert run.info.status == "FINISHED"
    assert _mlflow_steps(client, run, "clients/fit") == [1, 2]


def _serve(*extra: str) -> tuple[int, str]:
    return run_covey(
        *("server", "--app", "tiny_app:server_app", "--insecure"),
        *("--address", "127.0.0.1:0", "--run-dir", "r", "--wait-timeout", "1", *extra),
    )


@pytest.mark.usefixtures("in_tmp")
@pytest.mark.parametrize(
    ("flag", "library"), [("--tensorboard", "tensorboard"), ("--mlflow", "mlflow")]
)
def test_a_missing_extra_is_refused_before_the_server_listens(
    monkeypatch: pytest.MonkeyPatch, flag: str, library: str
) -> None:
    for name in [library, *(n for n in sys.modules if n.startswith(library + "."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, f"covey.trackers._{library}", raising=False)
    code, out = _serve(flag, "logs")
    assert code == 2, out
    assert last_line(out).startswith(f"error: {flag}: covey.trackers.")
    assert f"pip install 'covey[{library}]'" in last_line(out)
    assert "listening" not in out
    assert not Path("r").exists()
    assert not Path("logs").exists()


@pytest.mark.usefixtures("in_tmp")
def test_a_tensorboard_folder_that_cannot_be_written_is_refused_before_the_server_listens() -> None:
    Path("taken").write_text("a file")
    code, out = _serve("--tensorboard", "taken/tb")
    assert code == 2, out
    assert last_line(out) == (
        "error: --tensorboard: TensorBoardLogger: cannot write to taken/tb: taken is a file"
    )
    assert "listening" not in out
    assert not Path("r").exists()


@pytest.mark.usefixtures("in_tmp")
def test_covey_run_refuses_a_tracker_before_the_simulation_starts() -> None:
    assert run_covey("new", "demo")[0] == 0
    Path("demo/taken").write_text("a file")
    code, out = run_covey("run", "demo", "--set", "tensorboard=taken/tb")
    assert code == 2, out
    assert "cannot write to" in last_line(out)
    assert last_line(out).startswith("error: tensorboard ([tool.covey]): TensorBoardLogger:")
    assert not Path("demo/runs").exists() or not any(Path("demo/runs").iterdir())
    code, out = run_covey("run", "demo", "--federation", "local", "--set", "tensorboard=taken/tb")
    assert code == 2, out  # a federation's own key, refused before it serves
    assert last_line(out).startswith(
        "error: tensorboard ([tool.covey.federations.local]): TensorBoardLogger: cannot write"
    )
    assert "listening" not in out
    assert not Path("demo/runs").exists() or not any(Path("demo/runs").iterdir())
    code, out = run_covey("run", "demo", "--mlflow-experiment", "x")
    assert code == 2, out
    assert last_line(out) == (
        "error: --mlflow-experiment names an MLflow experiment: give --mlflow URI too"
    )


@pytest.mark.usefixtures("in_tmp")
def test_an_app_s_own_loop_refuses_the_trackers() -> None:
    Path("own_loop.py").write_text(
        "from covey.deploy import ServerApp\n\napp = ServerApp(main=print)\n"
    )
    for flag in ("--tensorboard", "--mlflow", "--mlflow-experiment"):
        code, out = run_covey("server", "--app", "own_loop:app", "--insecure", flag, "x")
        assert code == 2, out
        assert last_line(out) == (
            f"error: {flag}: --app own_loop:app runs a server loop of its own (ServerApp "
            "main=), which has no rounds and keeps no run folder; leave it out"
        )


@pytest.mark.parametrize("again", ["folder", "file:./", "file:///", "file://localhost/"])
def test_a_resume_naming_the_same_local_store_otherwise_goes_on_in_the_same_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, again: str
) -> None:
    from covey.core import RoundRecord
    from covey.deploy._cli_trackers import open_trackers

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    store = tmp_path / "ml runs"

    def opened(given: str, resuming: bool) -> Any:
        flags = {"trackers": {"mlflow": given}, "run": run_dir, "resuming": resuming}
        return open_trackers(flags)

    with opened("ml runs", resuming=False) as trackers:
        trackers(RoundRecord(round=1, central_loss=0.5))
    if again == "folder":
        given = str(store)
    elif again == "file:./":
        given = "file:./ml runs"
    else:
        given = again + store.as_uri()[len("file:///") :]
    with opened(given, resuming=True) as trackers:
        trackers(RoundRecord(round=2, central_loss=0.25))
    ((client, run),) = _mlflow_runs(store, "covey", monkeypatch)
    assert run.info.status == "FINISHED"
    assert _mlflow_steps(client, run, "central/loss") == [1, 2]


def test_a_new_run_into_a_tensorboard_folder_of_another_run_is_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from covey.core import RoundRecord
    from covey.deploy._cli_trackers import open_trackers

    def run(name: str, resuming: bool = False) -> str:
        run_dir = tmp_path / name
        run_dir.mkdir(exist_ok=True)
        flags = {"trackers": {"tensorboard": str(tmp_path / "tb")}, "run": run_dir}
        with open_trackers({**flags, "resuming": resuming}) as trackers:
            trackers(RoundRecord(round=1, central_loss=0.5))
        return " ".join(capsys.readouterr().err.split())

    assert run("first") == ""  # a new folder
    assert run("first", resuming=True) == ""  # the same run, resumed
    said = run("second")
    assert said.startswith(f"warning: --tensorboard {tmp_path / 'tb'} already holds the event")
    assert "give each run a folder of its own" in said
