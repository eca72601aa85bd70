"""`covey run --resume RUN` continues a simulated project run killed midway.

The run's process is killed (SIGKILL) as round 2 is evaluated; `covey runs show`
and `covey runs list` say how to continue it, and the command they print
finishes the run with the model and the history of a run never stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

import covey
from covey.cli import app

pytestmark = pytest.mark.timeout(180)

runner = CliRunner()

KILLED = """

def killed_in_round_2(config):
    import os, signal

    app = make_server(config)

    def evaluate_until_2(rnd, weights):
        if rnd == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return evaluate(rnd, weights)

    return ServerApp(
        app.strategy, app.initial_weights, rounds=app.rounds, evaluate_fn=evaluate_until_2
    )
"""


def _cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "250"})
    return result.exit_code, " ".join(result.output.split())


def _project(tmp: Path, name: str, app_code: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project made by `covey new NAME` whose server_app.py ends with ``app_code``."""
    made = runner.invoke(app, ["new", name, "--dir", str(tmp)])
    assert made.exit_code == 0, made.output
    root = tmp / name
    with (root / name.replace("-", "_") / "server_app.py").open("a") as f:
        f.write(app_code)
    monkeypatch.syspath_prepend(str(root))
    return root


def _records(run: Path) -> list[dict[str, object]]:
    rounds = json.loads((run / "history.json").read_text())["rounds"]
    for record in rounds:
        record.pop("durations", None)
    return list(rounds)


@pytest.mark.slow
def test_a_killed_project_run_resumes_with_the_command_covey_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project(tmp_path, "cut-fed", KILLED, monkeypatch)
    env = dict(os.environ, COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(root), *sys.path])
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "covey",
            "run",
            "--set",
            "rounds=3",
            "--set",
            "server-app=cut_fed.server_app:killed_in_round_2",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout
    (run,) = root.glob("runs/sim-*")

    code, said = _cli("runs", "show", str(run))
    assert code == 0, said
    assert f"{run}: stopped" in said
    command = f"covey run {root} --resume {run}"
    assert f"continue it after its last complete round with `{command}`" in said
    code, listed = _cli("runs", "list", "--dir", str(root / "runs"))
    assert f"stopped: {run.name}: continue it with `{command}`" in listed

    code, said = _cli(*shlex.split(command)[1:])  # the rounds it was started with
    assert code == 0, said
    assert f"resuming {run}" in said
    code, said = _cli("runs", "show", str(run))
    assert f"{run}: finished" in said
    assert "continue it" not in said

    code, said = _cli("run", str(root), "--set", "rounds=3")  # the run never stopped
    assert code == 0, said
    (whole,) = set(root.glob("runs/sim-*")) - {run}
    assert _records(run) == _records(whole)
    resumed, expected = load_file(run / "model.safetensors"), load_file(whole / "model.safetensors")
    assert resumed.keys() == expected.keys()
    assert all(np.array_equal(resumed[k], expected[k]) for k in expected)
    assert [r.round for r in covey.History.load(run).rounds] == [0, 1, 2, 3]


def test_resume_refusals_of_covey_run_name_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project(tmp_path, "cut-fed", "", monkeypatch)
    code, said = _cli("run", str(root), "--resume", str(tmp_path / "nowhere"))
    assert code == 2, said
    assert "no such folder, so no simulated run to resume" in said
    code, said = _cli("run", str(root), "--federation", "local", "--resume", str(root))
    assert code == 2, said
    assert f"--resume {root}: no served run there (no run.sqlite)" in said
    code, said = _cli("run", str(root), "--set", "rounds=1")
    assert code == 0, said
    (run,) = root.glob("runs/sim-*")
    code, said = _cli("run", str(root), "--federation", "local", "--resume", str(run))
    assert code == 2, said
    assert f"--resume {run} holds a simulated run; continue it without --federation" in said
    served = tmp_path / "served"  # what a served run keeps: run.sqlite and no run.json
    served.mkdir()
    shutil.copy(run / "run.sqlite", served / "run.sqlite")
    code, said = _cli("run", str(root), "--resume", str(served))
    assert code == 2, said
    assert f"--resume {served} holds a served run: continue it with `covey run" in said
    assert not (served / "run.json").exists()
    code, said = _cli("run", str(root), "--resume", str(run), "--set", "lr=0.9", "--set", "seed=3")
    assert code == 2, said
    assert "the run was started with other settings: lr = 0.5 (now 0.9), seed = 0 (now 3)" in said
    # A refusal of what it was given: one line naming the flag, status 2 (was an
    # "error: ValueError: ... (run with -v for the traceback)" and status 1).
    code, said = _cli("run", str(root), "--resume", str(run), "--set", "rounds=1")
    assert code == 2, said
    assert f"error: --resume {run}: the simulation in {run} is finished (round 1 was" in said
    assert "covey run --set rounds=2 or more" in " ".join(said.split())  # how, with this tool
    assert "ValueError" not in said
    assert "traceback" not in said


INTERRUPTED = """

def interrupted_in_round_1(config):
    app = make_server(config)

    def evaluate_until_1(rnd, weights):
        if rnd == 1:
            raise KeyboardInterrupt
        return evaluate(rnd, weights)

    return ServerApp(
        app.strategy, app.initial_weights, rounds=app.rounds, evaluate_fn=evaluate_until_1
    )
"""


def test_a_resume_without_set_rounds_runs_the_rounds_the_run_was_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project(tmp_path, "halt-fed", INTERRUPTED, monkeypatch)
    stopper = "server-app=halt_fed.server_app:interrupted_in_round_1"
    code, said = _cli("run", str(root), "--set", "rounds=2", "--set", stopper)
    assert code == 130, said
    (run,) = root.glob("runs/sim-*")
    code, said = _cli("run", str(root), "--resume", str(run))  # as `covey runs show` says
    assert code == 0, said
    assert [r.round for r in covey.History.load(run).rounds] == [0, 1, 2]
    code, said = _cli("run", str(root), "--resume", str(run), "--set", "rounds=3")
    assert code == 0, said  # an explicit --set rounds trains it on
    assert [r.round for r in covey.History.load(run).rounds] == [0, 1, 2, 3]


def test_a_resume_without_set_keeps_the_settings_the_run_was_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `covey run --resume` refused it ("started with other settings: lr = 0.3 (now
    # 0.5)") though the command it printed to continue the run had no --set.
    root = _project(tmp_path, "kept-fed", INTERRUPTED, monkeypatch)
    stopper = "server-app=kept_fed.server_app:interrupted_in_round_1"
    given = ["--set", "rounds=2", "--set", "lr=0.3", "--set", "clients=6", "--set", "seed=4"]
    code, said = _cli("run", str(root), *given, "--set", stopper)
    assert code == 130, said
    (run,) = root.glob("runs/sim-*")
    command = f"covey run {root} --resume {run}"
    assert command in " ".join(said.split())
    code, said = _cli(*shlex.split(command)[1:])
    assert code == 0, said
    assert "6 simulated clients, 2 rounds" in said
    code, said = _cli("run", str(root), *given)  # the same run, never stopped
    assert code == 0, said
    (whole,) = set(root.glob("runs/sim-*")) - {run}
    assert _records(run) == _records(whole)
    resumed, expected = load_file(run / "model.safetensors"), load_file(whole / "model.safetensors")
    assert all(np.array_equal(resumed[k], expected[k]) for k in expected)
    # A --set on the resume that changes one is still refused, naming it.
    code, said = _cli("run", str(root), "--resume", str(run), "--set", "lr=0.5")
    assert code == 2, said
    assert "started with other settings: lr = 0.3 (now 0.5)" in said


def test_a_resume_without_set_backend_goes_on_on_the_backend_the_run_was_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run started with --set backend (a Ray run's GPUs, say), resumed with the
    # command it printed, went on in this process on the project's inline backend.
    root = _project(tmp_path, "moved-fed", INTERRUPTED, monkeypatch)
    stopper = "server-app=moved_fed.server_app:interrupted_in_round_1"
    given = ["--set", "rounds=2", "--set", "clients=4", "--set", 'backend="process"']
    code, said = _cli("run", str(root), *given, "--set", stopper)
    assert code == 130, said
    (run,) = root.glob("runs/sim-*")
    code, said = _cli("run", str(root), "--resume", str(run))
    assert code == 0, said
    assert "4 simulated clients, 2 rounds (process backend)" in said
    assert json.loads((run / "run.json").read_text())["backend"] == "process"
    code, said = _cli("run", str(root), "--resume", str(run), "--set", "rounds=3")
    assert code == 0, said
    assert "(process backend)" in said
    # A --set backend on the resume wins.
    code, said = _cli(
        "run", str(root), "--resume", str(run), "--set", "rounds=4", "--set", 'backend="inline"'
    )
    assert code == 0, said
    assert "4 simulated clients, 4 rounds (inline backend)" in said


def test_a_resume_on_ray_keeps_the_client_resources_and_address_the_run_was_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Resumed as printed, with no --set, a run started with --set client-resources
    # and ray-address went on on Ray with the default resources, on a new local Ray.
    from covey.sim._inline import inline_transport

    seen: list[tuple[object, object]] = []

    def on_ray(client_fn: object, num_clients: int, **options: object) -> object:
        seen.append((options["client_resources"], options["address"]))
        return inline_transport(client_fn, num_clients, None)  # type: ignore[arg-type]

    monkeypatch.setattr("covey.sim._ray.RayTransport", on_ray)
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    root = _project(tmp_path, "ray-fed", INTERRUPTED, monkeypatch)
    stopper = "server-app=ray_fed.server_app:interrupted_in_round_1"
    given = ["--set", "rounds=2", "--set", "clients=4", "--set", 'backend="ray"']
    ray = ["--set", "client-resources={num_cpus=0.5}", "--set", "ray-address='127.0.0.1:6390'"]
    code, said = _cli("run", str(root), *given, *ray, "--set", stopper)
    assert code == 130, said
    (run,) = root.glob("runs/sim-*")
    code, said = _cli("run", str(root), "--resume", str(run))
    assert code == 0, said
    assert "(ray backend)" in said
    assert seen[-1] == ({"num_cpus": 0.5}, "127.0.0.1:6390")
    # A --set on the resume wins, and is what the next resume keeps.
    more = ["--set", "rounds=3", "--set", "client-resources={num_cpus=1}"]
    code, said = _cli("run", str(root), "--resume", str(run), *more)
    assert code == 0, said
    assert seen[-1] == ({"num_cpus": 1}, "127.0.0.1:6390")
    code, said = _cli("run", str(root), "--resume", str(run), "--set", "rounds=4")
    assert code == 0, said
    assert seen[-1] == ({"num_cpus": 1}, "127.0.0.1:6390")
    # Resumed on another backend, the Ray options are not carried over.
    code, said = _cli(
        "run", str(root), "--resume", str(run), "--set", "rounds=5", "--set", 'backend="inline"'
    )
    assert code == 0, said
    assert len(seen) == 4  # the first run and three resumes on Ray


def test_a_project_run_killed_before_its_run_json_starts_again_from_round_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # `covey run --resume` refused such a folder: "no simulated run there (no run.json)".
    root = _project(tmp_path, "cut-fed", "", monkeypatch)
    code, said = _cli("run", str(root), "--set", "rounds=2", "--set", "clients=4")
    assert code == 0, said
    (run,) = root.glob("runs/sim-*")
    assert [r.round for r in covey.History.load(run).rounds] == [0, 1, 2]
    for kept in [{"project.json", "run.lock"}, {"project.json"}]:  # killed as clients started
        for path in run.iterdir():
            if path.name not in kept:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        with caplog.at_level(logging.WARNING, logger="covey"):
            code, said = _cli("run", str(root), "--resume", str(run), "--set", "clients=4")
        assert code == 0, said
        assert "the resumed run starts at round 1" in caplog.text
        # to the rounds it was started with (project.json keeps them), not the project's 5
        assert [r.round for r in covey.History.load(run).rounds] == [0, 1, 2]
        assert json.loads((run / "run.json").read_text())["status"] == "finished"
    # A folder that holds nothing a run writes is refused, naming what is missing.
    (tmp_path / "other").mkdir()
    code, said = _cli("run", str(root), "--resume", str(tmp_path / "other"))
    assert code == 2, said
    assert "no simulated run there: it holds none of the files a `covey run` writes" in said
    assert "(project.json, run.lock, run.json, run.sqlite, history.json)" in said
    assert f"start a new run with `covey run {root}`" in said


LOADING = """

_LOADED = []


def interrupted_loading(config):
    app = make_server(config)

    def initial_weights():
        if not _LOADED:  # Ctrl-C as the model loads, the first time only
            _LOADED.append(True)
            raise KeyboardInterrupt
        return app.weights()

    return ServerApp(
        app.strategy, initial_weights, rounds=app.rounds, evaluate_fn=app.evaluate_fn
    )
"""


def test_a_project_run_interrupted_before_its_first_round_says_how_to_start_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It blamed top-k or an asynchronous strategy for keeping no checkpoint, and
    # `covey runs show` knew no such run.
    root = _project(tmp_path, "load-fed", LOADING, monkeypatch)
    stopper = "server-app=load_fed.server_app:interrupted_loading"
    code, said = _cli("run", str(root), "--set", "rounds=2", "--set", "clients=4", "--set", stopper)
    assert code == 130, said
    (run,) = root.glob("runs/sim-*")
    command = f"covey run {root} --resume {run}"
    assert f"stopped before its first round; `{command}` starts it again at round 1" in said
    assert "top-k" not in said
    code, said = _cli("runs", "show", str(run))
    assert code == 2, said
    assert "its simulation stopped before its first round" in said
    assert f"`{command}` starts it again at round 1" in said
    code, said = _cli(*shlex.split(command)[1:], "--set", "clients=4", "--set", stopper)
    assert code == 0, said
    assert [r.round for r in covey.History.load(run).rounds] == [0, 1, 2]


def test_a_damaged_project_json_is_named_not_taken_as_no_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, a project.json that did not parse was skipped as a run of simulate()
    # (which keeps none), and a resume with other settings went on unchecked.
    root = _project(tmp_path, "torn-fed", "", monkeypatch)
    code, said = _cli("run", str(root), "--set", "rounds=1")
    assert code == 0, said
    (run,) = root.glob("runs/sim-*")
    kept = run / "project.json"
    more = ("--set", "rounds=2", "--set", "lr=0.9")
    for damage in ('{"lr": 0.5, "epo', "[]"):
        kept.write_text(damage)
        code, said = _cli("run", str(root), "--resume", str(run), *more)
        assert code == 2, said
        assert f"{kept} is damaged" in said
        assert "the settings the run was started with cannot be checked" in said
    kept.unlink()
    os.mkfifo(kept)  # read, it would wait for a writer for ever
    code, said = _cli("run", str(root), "--resume", str(run), *more)
    assert code == 2, said
    assert "not a regular file" in said


def test_a_run_interrupted_after_its_last_round_is_completed_by_the_command_it_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C as the run closed its store, its rounds all done and kept: it printed
    # `covey run --resume RUN`, which refused the run as finished (status 2).
    from covey.sim._checkpoint import SimCheckpoint

    root = _project(tmp_path, "late-fed", "", monkeypatch)
    end = SimCheckpoint.end

    def interrupted_end(self: SimCheckpoint, exc: BaseException | None, **kw: bool) -> None:
        end(self, exc, **kw)
        if exc is None:
            raise KeyboardInterrupt

    monkeypatch.setattr(SimCheckpoint, "end", interrupted_end)
    code, said = _cli("run", str(root), "--set", "rounds=2")
    assert code == 130, said
    monkeypatch.setattr(SimCheckpoint, "end", end)
    (run,) = root.glob("runs/sim-*")
    command = f"covey run {root} --resume {run}"
    assert command in said
    code, said = _cli(*shlex.split(command)[1:])
    assert code == 0, said
    assert f"run folder: {run} (history.json, plot.png, model.safetensors)" in said
    assert (run / "plot.png").is_file()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert [r.round for r in covey.History.load(run).rounds] == [0, 1, 2]
    code, said = _cli("runs", "show", str(run))
    assert f"{run}: finished" in said
    assert "SIGINT" not in said
