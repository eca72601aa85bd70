"""`covey run` of a project stopped midway: it says what happened and what to do.

The run folder keeps the history of the rounds done, marked stopped, the
model after the last of them and the checkpoints to resume from; the line
printed names the model and the command that continues the run. The same
holds when the app's own evaluation raises.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

import covey
from _procs import COVEY_TAKING_CTRL_C, serve_project
from covey.cli import app

pytestmark = pytest.mark.slow


def _new_project(where: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A new `covey new` project in ``where``, and the environment to run it in."""
    made = CliRunner().invoke(app, ["new", name, "--dir", str(where)])
    assert made.exit_code == 0, made.output
    root = where / name
    env = dict(os.environ, COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    return root, env


@pytest.mark.parametrize(
    ("backend", "sig", "code", "how"),
    [
        ("inline", signal.SIGINT, 130, "interrupted"),
        # a batch scheduler's or `timeout`'s stop: SIGTERM to the whole process group, the
        # workers too. Before: no word, no model kept, the pool's shared memory left behind.
        ("process", signal.SIGTERM, 143, "interrupted (SIGTERM)"),
    ],
)
def test_a_stopped_simulated_covey_run_says_how_to_resume_it(
    tmp_path: Path, backend: str, sig: signal.Signals, code: int, how: str
) -> None:
    import psutil

    root, env = _new_project(tmp_path, "cut-fed")
    proc = subprocess.Popen(
        [
            *COVEY_TAKING_CTRL_C,
            "run",
            "--set",
            "rounds=100000",
            "--set",
            f"backend={backend}",
        ],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a process group of its own, to signal whole
    )
    try:
        deadline = time.monotonic() + 60
        while not _a_round_done(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _a_round_done(root), "no round finished within 60 s"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) == (2 if backend == "process" else 0)
        for child in children:  # a worker dies of SIGTERM: it keeps no handler of `covey run`'s
            assert not _catches(child.pid, signal.SIGTERM)
        os.killpg(proc.pid, sig)
        out, _ = proc.communicate(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    said = " ".join(out.decode(errors="replace").split())
    assert proc.returncode == code, said
    assert "Traceback" not in said  # nor a worker's, which inherited the handler
    assert not alive
    assert not list(Path("/dev/shm").glob(f"covey-{proc.pid}-*"))
    (run,) = root.glob("runs/*")
    assert f"{how}: the simulation in " in said
    assert run.name in said
    assert f"continue it after its last complete round with `covey run --resume {run}`" in said
    meta = json.loads((run / "run.json").read_text())
    assert (meta["status"], meta["stopped_reason"]) == ("failed", f"interrupted ({sig.name})")
    # One line names the model after the last round of the history, as it scored it.
    lines = [line for line in out.decode(errors="replace").splitlines() if "interrupted" in line]
    assert len(lines) == 1, said
    history = covey.History.load(run)
    done = history.rounds[-1].round
    assert f"the model after round {done}, the last complete one, is in " in said
    assert str(run / "model.safetensors") in lines[0]
    _check_model(run, history, done)


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler of its own for ``sig`` (Linux: SigCgt)."""
    status = Path(f"/proc/{pid}/status").read_text()
    (caught,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")]
    return bool(int(caught, 16) >> (sig - 1) & 1)


def _a_round_done(root: Path) -> bool:
    """Whether a run under ``root`` has written a history holding round 1 or later."""
    for path in root.glob("runs/*/history.json"):
        try:
            rounds = json.loads(path.read_text())["rounds"]
        except (OSError, ValueError, KeyError):
            continue
        if any(r["round"] >= 1 for r in rounds):
            return True
    return False


def _check_model(run: Path, history: covey.History, done: int) -> None:
    """The run's model.safetensors is the model after round ``done``, as the history scored it."""
    with safe_open(run / "model.safetensors", "np") as f:
        assert f.metadata()["covey_round"] == str(done)
        model = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    (record,) = [r for r in history.rounds if r.round == done]
    data = covey.data.load_digits()
    loss, _ = covey.models.logistic_evaluate(model, data.x_test, data.y_test)
    assert loss == record.central_loss


BROKEN_EVALUATION = """

def broken_in_round_3(config):
    app = make_server(config)

    def evaluate_until_2(rnd, weights):
        if rnd >= 3:
            raise RuntimeError("evaluation on fire")
        return evaluate(rnd, weights)

    return ServerApp(app.strategy, app.initial_weights, evaluate_fn=evaluate_until_2)
"""


@pytest.fixture(scope="module")
def eval_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose server app ``broken_in_round_3`` evaluates rounds 0 to 2, then raises."""
    where = tmp_path_factory.mktemp("eval")
    made = CliRunner().invoke(app, ["new", "eval-fed", "--dir", str(where)])
    assert made.exit_code == 0, made.output
    root = where / "eval-fed"
    with (root / "eval_fed" / "server_app.py").open("a") as f:
        f.write(BROKEN_EVALUATION)
    return root


def test_a_run_whose_evaluation_raises_keeps_the_last_complete_rounds_model(
    eval_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = eval_project
    monkeypatch.syspath_prepend(str(root))
    server = "server-app=eval_fed.server_app:broken_in_round_3"
    result = CliRunner().invoke(app, ["run", str(root), "--set", server], env={"COLUMNS": "200"})
    said = " ".join(result.output.split())
    # The error is the app's own, as before (covey.cli.main prints it in one line).
    assert isinstance(result.exception, RuntimeError), said
    assert str(result.exception) == "evaluation on fire"
    (run,) = root.glob("runs/sim-*")
    history = covey.History.load(run)
    assert [r.round for r in history.rounds] == [0, 1, 2]
    assert (
        f"the model after round 2, the last complete one, is in {run / 'model.safetensors'}" in said
    )
    _check_model(run, history, 2)


def test_a_served_run_whose_evaluation_raises_names_the_last_complete_rounds_model(
    eval_project: Path,
) -> None:
    root = eval_project
    env = dict(os.environ, COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    command = ["run", "--federation", "local"]
    for item in (
        "server-app=eval_fed.server_app:broken_in_round_3",
        "address='127.0.0.1:0'",
        "port-file='fed.port'",
        "wait-timeout=60",
        "plot=false",
    ):
        command += ["--set", item]
    code, out = serve_project(
        root, command, root / "fed.port", "eval_fed.client_app:client_fn", env
    )
    said = " ".join(out.split())
    assert code == 1, said
    assert "error: RuntimeError: evaluation on fire" in said  # as before
    (run,) = root.glob("runs/local-*")
    model = run / "weights" / "round-00002.safetensors"
    assert f"run stopped: the model after round 2, the last complete one, is in {model}" in said
    history = covey.History.load(run)
    assert [r.round for r in history.rounds] == [0, 1, 2]
    with safe_open(model, "np") as f:
        weights = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    data = covey.data.load_digits()
    loss, _ = covey.models.logistic_evaluate(weights, data.x_test, data.y_test)
    assert loss == history.rounds[2].central_loss


def test_a_finished_run_killed_before_its_model_was_written_gets_it_on_resume(
    tmp_path: Path,
) -> None:
    # A SIGKILL after the run folder marked the run finished and before
    # model.safetensors was written left a finished run without its model, which
    # `--resume` refused ("there is nothing to resume"). The last round's weights,
    # kept in the folder, are that model: the resume writes them.
    root, env = _new_project(tmp_path, "kill-fed")

    def covey_run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "covey", "run", *args]
        return subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=300
        )

    done = covey_run("--set", "rounds=2")
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = (root / "runs").iterdir()
    model = folder / "model.safetensors"
    with safe_open(str(model), "numpy") as f:
        before = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    model.unlink()  # where the kill left the folder
    again = covey_run("--resume", str(folder))
    assert again.returncode == 0, again.stdout + again.stderr
    said = " ".join(again.stdout.split())
    assert "finished after round 2, but its model.safetensors was missing" in said
    with safe_open(str(model), "numpy") as f:
        assert sorted(f.keys()) == sorted(before)
        for k in before:
            assert (f.get_tensor(k) == before[k]).all()
    # with the model there, a finished run is as before: nothing to resume
    third = covey_run("--resume", str(folder))
    assert third.returncode == 2, third.stdout + third.stderr
    assert "nothing to resume" in " ".join((third.stdout + third.stderr).split())


def test_a_resumed_run_killed_before_its_model_was_written_gets_the_final_one(
    tmp_path: Path,
) -> None:
    # A resumed run killed after it finished and before model.safetensors was
    # written kept the model its first part wrote (of round 2, the history going
    # to round 4), and `--resume` took the file for the run's model: it said
    # "nothing to resume" and left the earlier model in place.
    root, env = _new_project(tmp_path, "stale-fed")

    def covey_run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "covey", "run", *args]
        return subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=300
        )

    first = covey_run("--set", "rounds=2")
    assert first.returncode == 0, first.stdout + first.stderr
    (folder,) = (root / "runs").iterdir()
    model = folder / "model.safetensors"
    earlier = model.read_bytes()
    more = covey_run("--resume", str(folder), "--set", "rounds=4")
    assert more.returncode == 0, more.stdout + more.stderr
    with safe_open(str(model), "numpy") as f:
        final = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    model.write_bytes(earlier)  # where a kill before the model was written left the folder
    again = covey_run("--resume", str(folder))
    assert again.returncode == 0, again.stdout + again.stderr
    said = " ".join(again.stdout.split())
    assert "finished after round 4, but its model.safetensors was the model after round 2" in said
    with safe_open(str(model), "numpy") as f:
        assert f.metadata()["covey_round"] == "4"
        assert sorted(f.keys()) == sorted(final)
        for k in final:
            assert (f.get_tensor(k) == final[k]).all()
    third = covey_run("--resume", str(folder))
    assert third.returncode == 2, third.stdout + third.stderr
    assert "nothing to resume" in " ".join((third.stdout + third.stderr).split())
