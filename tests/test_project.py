"""`covey new` writes a project that `covey run` runs, in simulation and deployed.

Its runs are read back by `covey runs` and `History.load`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.server._outputs import new_run_dir

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


def covey_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "covey", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )


def new_project(where: Path, name: str) -> Path:
    """``covey new NAME`` in ``where``, run in this process (the module's project runs it apart)."""
    made = CliRunner().invoke(app, ["new", name, "--dir", str(where)])
    assert made.exit_code == 0, made.output
    return where / name


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("projects")
    out = covey_cli("new", "clinic-fed", cwd=where)
    assert out.returncode == 0, out.stdout + out.stderr
    root = where / "clinic-fed"
    assert "[tool.covey]" in (root / "pyproject.toml").read_text()
    for name in ("task.py", "client_app.py", "server_app.py"):
        assert (root / "clinic_fed" / name).is_file()
    return root


def test_new_refuses_an_existing_folder(project: Path) -> None:
    out = covey_cli("new", project.name, cwd=project.parent)
    assert out.returncode == 2
    assert out.stderr.strip().endswith("already exists; choose another NAME or --dir")


def test_run_simulates_the_project_and_runs_reads_it(project: Path) -> None:
    out = covey_cli("run", "--set", "rounds=2", "--set", "lr=0.3", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    (folder,) = (project / "runs").iterdir()
    history = covey.History.load(folder)
    assert [r.round for r in history.rounds] == [0, 1, 2]  # --set rounds=2 won over 5
    assert history.config["num_clients"] == 10
    assert (folder / "plot.png").read_bytes()[:8] == PNG
    # The trained model is kept: the final round's weights, as the history evaluated them.
    assert "model.safetensors" in out.stdout
    with safe_open(folder / "model.safetensors", "np") as f:
        assert f.metadata()["covey_round"] == "2"
        model = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    x, y = covey.data.load_digits().x_test, covey.data.load_digits().y_test
    loss, accuracy = covey.models.logistic_evaluate(model, x, y)
    assert loss == history.rounds[-1].central_loss
    assert {"accuracy": accuracy} == history.rounds[-1].central_metrics
    listed = covey_cli("runs", "list", cwd=project)
    assert listed.returncode == 0, listed.stderr
    assert folder.name in listed.stdout
    assert "finished" in listed.stdout
    shown = covey_cli("runs", "show", folder.name, cwd=project)
    assert shown.returncode == 0, shown.stderr
    accuracy = float(history.rounds[-1].central_metrics["accuracy"])
    assert f"{accuracy:.4f}" in shown.stdout


def test_run_starts_process_workers_the_way_the_project_says(project: Path) -> None:
    base = ("run", "--set", "rounds=1", "--set", "backend=process", "--set", "runs-dir=other")
    out = covey_cli(*base, "--set", "start-method=spawn", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    (folder,) = (project / "other").iterdir()
    assert [r.round for r in covey.History.load(folder).rounds] == [0, 1]
    out = covey_cli(*base, "--set", "start-method='thread'", cwd=project)
    assert out.returncode != 0
    assert "start-method = 'thread' ([tool.covey] or --set)" in out.stdout + out.stderr


def test_run_keeps_as_many_rounds_weights_as_keep_last_says(project: Path) -> None:
    base = ("run", "--set", "rounds=3", "--set", "runs-dir=kept")
    out = covey_cli(*base, "--set", "keep-last=all", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    (folder,) = (project / "kept").iterdir()
    names = sorted(p.name for p in (folder / "weights").glob("round-*.safetensors"))
    assert names == [f"round-{r:05d}.safetensors" for r in range(4)]
    assert covey.History.load(folder).config["keep_last"] is None
    # resumed without --set keep-last, it keeps every round's file still
    out = covey_cli("run", "--resume", str(folder), "--set", "rounds=4", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    names = sorted(p.name for p in (folder / "weights").glob("round-*.safetensors"))
    assert names == [f"round-{r:05d}.safetensors" for r in range(5)]
    # and with it, prunes as it is told from then on
    out = covey_cli(
        "run", "--resume", str(folder), "--set", "rounds=5", "--set", "keep-last=3", cwd=project
    )
    assert out.returncode == 0, out.stdout + out.stderr
    names = sorted(p.name for p in (folder / "weights").glob("round-*.safetensors"))
    assert names == [f"round-{r:05d}.safetensors" for r in (3, 4, 5)]
    for value in ("1", "0", "'3'"):
        out = covey_cli(*base, "--set", f"keep-last={value}", cwd=project)
        assert out.returncode == 2, out.stdout + out.stderr
        said = " ".join(out.stderr.split())
        assert "keep-last = " in said
        assert "2 or more" in said
        assert "Traceback" not in out.stderr
    assert len(list((project / "kept").iterdir())) == 1  # no run folder made


def test_a_resume_past_its_rounds_is_refused_before_anything_is_printed(project: Path) -> None:
    out = covey_cli("run", "--set", "rounds=2", "--set", "runs-dir=past", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    (folder,) = (project / "past").iterdir()
    out = covey_cli("run", "--resume", str(folder), "--set", "rounds=1", cwd=project)
    assert out.returncode == 2, out.stdout + out.stderr
    # Before, the header ("covey run: 10 simulated clients, 1 rounds ..., resuming
    # ...") was printed first, as if the run were going on.
    assert out.stdout == ""
    said = " ".join(out.stderr.split())
    assert (
        f"--resume {folder}: the simulation in {folder} is finished (round 2 was its last)" in said
    )
    assert "nothing to resume with rounds=1" in said
    assert [r.round for r in covey.History.load(folder).rounds] == [0, 1, 2]


def test_a_served_resume_past_its_rounds_is_refused_before_anything_is_printed(
    project: Path, tmp_path: Path
) -> None:
    import numpy as np

    from covey.server import RunStore

    folder = tmp_path / "served"
    with RunStore.create(folder, config={"address": "127.0.0.1:0"}) as store:
        for r in range(3):
            store.save_round(r, {"w": np.zeros(2)}, None)
        store.set_status("finished")
    out = covey_cli(
        "run", "--federation", "local", "--resume", str(folder), "--set", "rounds=1", cwd=project
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""  # before: "covey run --federation local: resuming ..., serving"
    said = " ".join(out.stderr.split())
    assert f"the run in {folder} is finished (round 2 was its last)" in said
    assert "nothing to resume with rounds=1" in said


def test_the_generated_projects_own_tests_pass(project: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout


def test_the_generated_readme_starts_as_many_clients_as_the_server_waits_for(
    project: Path,
) -> None:
    # The README served the project and started one client, `--cid 0`: the server waits
    # for two before round 1, so following it as written waited until the timeout.
    wanted = subprocess.run(
        [
            sys.executable,
            "-c",
            "from clinic_fed.server_app import server_app; "
            "print(server_app().strategy.describe()['options']['min_available_clients'])",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(project), *sys.path])},
    )
    assert wanted.returncode == 0, wanted.stderr
    readme = (project / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    clients = [line for line in readme.splitlines() if line.strip().startswith("covey client")]
    cids = {re.search(r"--cid (\d+)", line).group(1) for line in clients}  # type: ignore[union-attr]
    names = {re.search(r"--name (\S+)", line).group(1) for line in clients}  # type: ignore[union-attr]
    assert len(cids) == len(names) == len(clients) >= int(wanted.stdout)


def test_run_rejects_unknown_settings(project: Path) -> None:
    out = covey_cli("run", "--federation", "nowhere", cwd=project)
    assert out.returncode == 2
    assert "no [tool.covey.federations.nowhere]" in out.stderr
    assert "(known: local)" in out.stderr


@pytest.mark.parametrize("value", ["five", "2.5", "true", "-1", str(2**70)])  # 2**70 was taken
def test_run_refuses_a_count_that_is_not_a_whole_number(project: Path, value: str) -> None:
    runs = project / "runs"
    before = sorted(runs.iterdir()) if runs.exists() else []
    out = covey_cli("run", "--set", f"rounds={value}", cwd=project)
    assert out.returncode == 2, out.stdout + out.stderr
    said = " ".join(out.stderr.split())
    assert "rounds = " in said
    assert "must be a whole number" in said
    assert "Traceback" not in out.stderr
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before  # no run folder made


def test_a_federation_table_may_set_compression(project: Path) -> None:
    runs = project / "runs"
    before = sorted(runs.iterdir()) if runs.exists() else []
    out = covey_cli("run", "--federation", "local", "--set", "compression='bogus'", cwd=project)
    assert out.returncode == 2, out.stdout + out.stderr
    said = " ".join(out.stderr.split())
    # Before, named as the flag of `covey server` (`--compression: ...`), not the setting.
    assert "compression ([tool.covey.federations.local] or --set): unknown compression" in said
    assert "--compression" not in said
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before  # no run folder made


def test_a_compression_that_is_no_text_is_refused_naming_the_table(project: Path) -> None:
    runs = project / "runs"
    before = sorted(runs.iterdir()) if runs.exists() else []
    out = covey_cli("run", "--federation", "local", "--set", "compression=3", cwd=project)
    assert out.returncode == 2, out.stdout + out.stderr
    said = " ".join(out.stderr.split())
    assert (
        "compression ([tool.covey.federations.local] or --set) must name a compression "
        'scheme as text (e.g. compression = "q8"), got 3'
    ) in said, said
    assert "--compression" not in said
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before  # no run folder made


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (
            'lr = "fast"',
            "lr = 'fast' in [tool.covey.config] of pyproject.toml (or --set lr=...) "
            "must be a number above 0, e.g. lr = 0.5",
        ),
        (
            "epochs = 2.5",
            "epochs = 2.5 in [tool.covey.config] of pyproject.toml (or --set "
            "epochs=...) must be a whole number above 0, e.g. epochs = 2",
        ),
    ],
)
def test_an_app_setting_of_the_wrong_kind_is_refused_before_the_run(
    tmp_path: Path, line: str, said: str
) -> None:
    # Before, every client failed in round 1 ("could not convert string to float:
    # 'fast'"), or epochs = 2.5 trained 2 epochs.
    root = new_project(tmp_path, "kinds")
    pyproject = root / "pyproject.toml"
    key = line.split(" ", 1)[0]
    text = pyproject.read_text()
    pyproject.write_text(re.sub(rf"(?m)^{key} = .*$", line, text, count=1))
    out = covey_cli("run", cwd=root)
    assert out.returncode == 2, out.stdout + out.stderr
    assert said in " ".join(out.stderr.split()), out.stderr
    assert "failed in fit" not in out.stdout + out.stderr
    assert not (root / "runs").exists()


def test_run_folders_started_in_the_same_second_differ(tmp_path: Path) -> None:
    folders = [new_run_dir(tmp_path, "server") for _ in range(5)]
    assert len(set(folders)) == 5
    assert all(f.is_dir() and not any(f.iterdir()) for f in folders)


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the server exited early"
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.05)


def test_run_serves_the_project_and_names_its_clients(project: Path, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    run_dir = tmp_path / "deployed"
    log = tmp_path / "server.log"
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "COLUMNS": "250"}
    try:
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "covey",
                    "run",
                    "--federation",
                    "local",
                    "--set",
                    "address='127.0.0.1:0'",
                    "--set",
                    f"port_file='{port_file}'",
                    "--set",
                    f"run_dir='{run_dir}'",
                    "--set",
                    "rounds=2",
                    "--set",
                    "heartbeat=1",
                ],
                cwd=project,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        procs.append(server)
        _wait_for_file(port_file, server, 120)
        port = port_file.read_text()
        for k, name in enumerate(("hospital-a", "hospital-b")):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "covey",
                        "client",
                        "--app",
                        "clinic_fed.client_app:client_fn",
                        "--cid",
                        str(k),
                        "--name",
                        name,
                        "--server",
                        f"127.0.0.1:{port}",
                        "--insecure",
                    ],
                    cwd=project,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            )
        assert server.wait(240) == 0, log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    history = covey.History.load(run_dir)
    assert [r.round for r in history.rounds] == [0, 1, 2]
    assert sorted(history.clients.values()) == ["hospital-a", "hospital-b"]
    assert {history.name_of(c) for c in history.rounds[1].fit_participants} == {
        "hospital-a",
        "hospital-b",
    }
    assert (run_dir / "plot.png").read_bytes()[:8] == PNG
    console = log.read_text()
    assert "--server 127.0.0.1:PORT --insecure" in console  # port 0: not a port to dial
    assert "waiting for clients (0 of 2 connected)" in console
    assert "client hospital-a joined" in console
    assert "round 1: fit by hospital-" in console
    assert "took fit" in console
    shown = covey_cli("runs", "show", str(run_dir), cwd=project)
    assert shown.returncode == 0, shown.stderr
    assert "hospital-a" in shown.stdout
    assert "hospital-b" in shown.stdout


def _refusing_project(where: Path, name: str) -> Path:
    """A new project whose strategy refuses every round's updates (an AggregationError)."""
    root = new_project(where, name)
    server = root / name.replace("-", "_") / "server_app.py"
    text = server.read_text()
    assert "strategy = covey.FedAvg(" in text
    server.write_text(
        text.replace(
            "strategy = covey.FedAvg(",
            "strategy = covey.Strategy(\n        aggregator=covey.aggregate.reducer(_refuse),",
        )
        + "\n\ndef _refuse(params: Any, contributions: Any) -> Any:\n"
        "    raise covey.aggregate.AggregationError('the booster takes 11746 bytes')\n"
    )
    return root


def test_a_run_none_of_whose_rounds_aggregated_fails_saying_why(tmp_path: Path) -> None:
    # An XGBoost booster past the federation's capacity failed to aggregate in every
    # round: `covey run` printed its table, kept the untrained model and said
    # "finished" (exit status 0); the reason was in history.json only.
    root = _refusing_project(tmp_path, "agg-fed")
    out = covey_cli("run", "--set", "rounds=2", cwd=root)
    said = " ".join(out.stdout.split())
    assert out.returncode == 1, out.stdout + out.stderr
    assert (
        "no round aggregated: the model is the one the run started with; rounds 1 and 2: "
        "AggregationError: the booster takes 11746 bytes" in said
    )
    assert "error: no round of the run aggregated" in said
    (folder,) = (root / "runs").iterdir()
    shown = covey_cli("runs", "show", str(folder), cwd=root)
    assert shown.returncode == 0, shown.stderr
    assert "no round aggregated" in " ".join(shown.stdout.split())


def test_a_served_run_none_of_whose_rounds_aggregated_fails_saying_why(tmp_path: Path) -> None:
    from _procs import serve_project

    root = _refusing_project(tmp_path, "dagg-fed")
    env = {**os.environ, "COLUMNS": "300", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = ["run", "--federation", "local"]
    for item in ("address='127.0.0.1:0'", "port-file='fed.port'", "rounds=2", "wait-timeout=60"):
        command += ["--set", item]
    code, out = serve_project(
        root, command, root / "fed.port", "dagg_fed.client_app:client_fn", env
    )
    said = " ".join(out.split())
    assert code == 1, out
    assert "run finished after round 2" in said
    assert (
        "no round aggregated: the model is the one the run started with; rounds 1 and 2: "
        "AggregationError: the booster takes 11746 bytes" in said
    )


def test_covey_runs_reads_the_runs_dir_the_project_names(tmp_path: Path) -> None:
    # It looked in runs/ and said "no runs in runs" in a project keeping them elsewhere.
    root = new_project(tmp_path, "elsewhere")
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    assert 'runs-dir = "runs"' in text
    pyproject.write_text(text.replace('runs-dir = "runs"', 'runs-dir = "experiments"'))
    out = covey_cli("run", "--set", "rounds=1", "--set", "clients=3", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    (folder,) = (root / "experiments").iterdir()
    listed = covey_cli("runs", "list", cwd=root)
    assert listed.returncode == 0, listed.stderr
    assert "Runs in experiments" in listed.stdout
    assert folder.name in listed.stdout
    shown = covey_cli("runs", "show", folder.name, cwd=root)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert str(Path("experiments") / folder.name) in " ".join(shown.stdout.split())


@pytest.mark.parametrize("command", ["list", "show"])
def test_covey_runs_help_names_the_project_runs_dir_as_the_default(command: str) -> None:
    # The help said "[default: runs]" where the project's runs-dir is read.
    shown = CliRunner().invoke(app, ["runs", command, "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "[default: runs]" not in shown.output
    assert "the runs-dir its pyproject.toml names" in " ".join(shown.output.split())
