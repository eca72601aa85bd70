"""Mistakes a user makes with `covey new` / `covey run`: each ends in one line naming it.

Every mistake here is refused before a run starts: exit code 2, one `error:` line
naming the setting and where it comes from, no traceback, and no run folder
left behind. A federation that would start anyway is bounded by a short
`wait-timeout` and a free port, so a regression fails instead of hanging.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE, STDOUT

import pytest
from rich.console import Console
from safetensors import safe_open
from typer.testing import CliRunner

import covey
from _procs import serve_project, undated, until_listening
from covey.cli import app
from covey.cli._runs import round_table
from covey.deploy._cli_resume import saved_round

runner = CliRunner()

SERVERS = """

def bad_compression(config):
    app = make_server(config)
    return ServerApp(app.strategy, app.initial_weights, compression="q9")


def needs_warm_up(config):
    if config.get("warm-up") != 3:
        raise ValueError(f"warm-up is {config.get('warm-up')!r}")
    return make_server(config)


def private(config):
    app = make_server(config)
    strategy = covey.privacy.central(
        covey.FedAvg(fraction_fit=0.5, min_fit_clients=0, fraction_evaluate=0.0),
        noise_multiplier=1.0, clip=0.5, delta=1e-5, target_epsilon=5.0,
    )
    return ServerApp(strategy, app.initial_weights, rounds=5, evaluate_fn=evaluate)


def waits_for_three(config):
    app = make_server(config)
    strategy = covey.FedAvg(min_fit_clients=3, min_evaluate_clients=0, min_available_clients=3)
    return ServerApp(strategy, app.initial_weights)
"""


def _cli(*args: str) -> tuple[int, str]:
    """Run ``covey ARGS`` in this process: the exit code and stdout + stderr, one line."""
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, " ".join((result.stdout + result.stderr).split())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("outside")
    code, said = _cli("new", "outside-fed", "--dir", str(where))
    assert code == 0, said
    root = where / "outside-fed"
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("epochs = 2\n", "epochs = 2\nwarm-up = 1\n"))
    with (root / "outside_fed" / "server_app.py").open("a") as f:
        f.write("\n\ndef returns_int(config):\n    return 42\n")
        f.write(SERVERS)
    with (root / "outside_fed" / "client_app.py").open("a") as f:
        f.write(
            "\n\ndef no_args():\n    return make_client(0, {})\n"
            "\n\ndef returns_int(cid, config):\n    return 42\n"
            "\n\nclass Broken(LogisticClient):\n"
            "    def fit(self, weights, config):\n"
            "        raise RuntimeError('disk on fire')\n"
            "\n\ndef broken_fn(cid):\n"
            "    client = client_fn(cid)\n"
            "    client.__class__ = Broken\n"
            "    return client\n"
            "\n\nclass BrokenInRound3(LogisticClient):\n"
            "    def fit(self, weights, config):\n"
            "        if config['round'] >= 3:\n"
            "            raise RuntimeError('disk on fire')\n"
            "        return super().fit(weights, config)\n"
            "\n\ndef broken_in_round_3(cid, config):\n"
            "    client = make_client(cid, config)\n"
            "    client.__class__ = BrokenInRound3\n"
            "    return client\n"
        )
    return root


def _refused(project: Path, *args: str) -> str:
    """Run ``covey run PROJECT ARGS``; check it is refused cleanly; return what it said."""
    runs = project / "runs"
    before = sorted(runs.iterdir()) if runs.exists() else []
    code, said = _cli("run", str(project), *args)
    assert code == 2, said
    assert said.startswith("error: "), said
    assert said.count("error:") == 1, said
    assert "Traceback" not in said
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before, "a run folder was made"
    return said


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("roundz=3", ["--set roundz=3", "no setting roundz", "did you mean rounds?"]),
        ("lrr=0.1", ["no setting lrr", "did you mean lr?", "[tool.covey.config]"]),
        ("insecure=true", ["insecure is a setting of a federation", "--federation NAME"]),
        ("clients=0", ["clients = 0", "of 1 or more"]),
        ("rounds=-1", ["rounds = -1", "from 0 to 1,000,000,000"]),
        ("clients=1", ["clients = 1", "min_fit_clients=2"]),
        # every site failed in round 1: the template's split cannot give 300 sites 4 examples
        ("clients=300", ["cannot be split into 300 sites", "[tool.covey] clients"]),
        ("seed=-3", ["seed = -3", "of 0 or more"]),
        ("runs-dir='pyproject.toml'", ["runs-dir = 'pyproject.toml'", "give a folder"]),
    ],
)
def test_a_wrong_setting_for_a_simulation_is_named(
    project: Path, given: str, expected: list[str]
) -> None:
    said = _refused(project, "--set", given)
    for part in expected:
        assert part in said, said


def test_an_unknown_key_is_named_as_pyproject_spells_it(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('runs-dir = "runs"', 'runs-dirr = "runs"'))
    try:
        said = _refused(project)
    finally:
        pyproject.write_text(text)
    assert "unknown setting runs-dirr in [tool.covey]" in said
    assert "of pyproject.toml (did you mean runs-dir?); known: " in said  # as --set says
    assert "runs_dir" not in said
    assert "server_app" not in said


@pytest.mark.parametrize(
    ("table", "misspelled"),
    [
        ("[tool.covey.config]", "[tool.covey.confg]"),
        ("[tool.covey.federations.local]", "[tool.covey.federation.local]"),
    ],
)
def test_a_misspelled_table_is_named_with_the_table_meant(
    project: Path, table: str, misspelled: str
) -> None:
    # "unknown setting confg in [tool.covey]; known: backend, ..." named no table.
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert f"\n{table}\n" in text
    pyproject.write_text(text.replace(f"\n{table}\n", f"\n{misspelled}\n"))
    try:
        said = _refused(project)
    finally:
        pyproject.write_text(text)
    meant = "[tool.covey.config]" if "config" in table else "[tool.covey.federations.NAME]"
    assert f"in [tool.covey] of pyproject.toml (did you mean {meant}?)" in said
    assert "; tables: [tool.covey.config], [tool.covey.federations.NAME]" in said


def test_a_server_app_returning_something_else_is_named(project: Path) -> None:
    said = _refused(project, "--set", "server-app=outside_fed.server_app:returns_int")
    assert "server-app outside_fed.server_app:returns_int(config) returned int" in said
    assert "covey.deploy.ServerApp" in said


def test_a_client_app_of_the_wrong_shape_is_named(project: Path) -> None:
    said = _refused(project, "--set", "client-app=outside_fed.client_app:no_args")
    assert "client-app outside_fed.client_app:no_args must be a function of (cid, config)" in said


def test_a_client_app_returning_no_client_stops_the_run_naming_it(project: Path) -> None:
    code, said = _cli(
        "run",
        str(project),
        "--set",
        "client-app=outside_fed.client_app:returns_int",
        "--set",
        "rounds=1",
    )
    assert code == 1, said
    assert "run stopped:" in said
    assert "client-app outside_fed.client_app:returns_int(cid, config) returned int" in said
    assert "Traceback" not in said
    assert "has no attribute" not in said


def _fed(project: Path, *sets: str) -> str:
    """Refused ``covey run --federation local`` (bounded: a free port, a short wait)."""
    args = ["--federation", "local", "--set", "address='127.0.0.1:0'"]
    bounded = [*sets, "wait-timeout=1", "rounds=1"]
    for item in bounded if not any(s.startswith("wait-timeout") for s in sets) else sets:
        args += ["--set", item]
    return _refused(project, *args)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("round-timeout=-1", "round-timeout ([tool.covey.federations.local] or --set) must be"),
        ("heartbeat='abc'", "heartbeat ([tool.covey.federations.local] or --set) must be"),
        ("wait-timeout=0", "wait-timeout ([tool.covey.federations.local] or --set) must be"),
        ("plot='maybe'", "plot = 'maybe' ([tool.covey.federations.local] or --set): must be"),
        ("insecure=1", "insecure = 1 ([tool.covey.federations.local] or --set): must be"),
        ("port-file='missing/port'", "port-file ([tool.covey.federations.local] or --set)"),
        ("roundz=2", "did you mean rounds?"),
        ("data-port=70000", "data-port ([tool.covey.federations.local] or --set) must be a port"),
        # A path given as a number or a switch was taken as a folder named "3" or "True".
        ("run-dir=3", "run-dir = 3 ([tool.covey.federations.local] or --set): give a path"),
        ("port-file=true", "port-file = True ([tool.covey.federations.local] or --set): give"),
        (
            "certs=3",
            "certs = 3 ([tool.covey.federations.local] or --set): give a path as text, "
            'e.g. certs = "federation"',
        ),
        ("run-dir=''", "run-dir = '' ([tool.covey.federations.local] or --set): give a path"),
    ],
)
def test_a_wrong_setting_of_a_federation_is_named_before_it_serves(
    project: Path, given: str, expected: str
) -> None:
    said = _fed(project, given)
    assert expected in said, said
    assert "listening" not in said


def test_an_address_without_a_port_is_named_before_it_serves(project: Path) -> None:
    said = _refused(project, "--federation", "local", "--set", "address='nohost'")
    assert "address = 'nohost' ([tool.covey.federations.local] or --set)" in said
    assert "has no port" in said


def test_a_run_dir_holding_a_run_points_to_how_to_continue_it(project: Path) -> None:
    held = project / "held"
    held.mkdir(exist_ok=True)
    (held / "run.sqlite").write_bytes(b"")
    said = _fed(project, "run-dir='held'")
    assert "run-dir" in said
    assert "already holds a run" in said
    # It was `covey server --resume` with the app's function of no arguments, which
    # reads pyproject.toml: this run's --set (rounds=1 here) was lost on the resume.
    assert f"`covey run {project} --federation local --resume {held} " in said
    assert "--set \"address='127.0.0.1:0'\" --set \"run-dir='held'\"" in said
    assert "--set wait-timeout=1 --set rounds=1`" in said
    assert "--run-dir" not in said  # `covey run` has no such flag


@pytest.mark.parametrize(
    ("server", "said_waits"),
    [
        (None, "it waits for 2 clients: start each, with its own --cid K (0, 1) and --name"),
        (
            "outside_fed.server_app:waits_for_three",
            "it waits for 3 clients: start each, with its own --cid K (0, 1, ... 2) and --name",
        ),
    ],
)
def test_a_served_project_says_how_many_clients_it_waits_for(
    project: Path, tmp_path: Path, server: str | None, said_waits: str
) -> None:
    # It said "start each client with ... --cid K": not how many the first round waits for.
    args = ["--set", "address='127.0.0.1:0'", "--set", f"run-dir={str(tmp_path / 'run')!r}"]
    args += ["--set", "wait-timeout=1", "--set", "rounds=1"]
    if server is not None:
        args += ["--set", f"server-app={server!r}"]
    code, said = _cli("run", str(project), "--federation", "local", *args)
    assert code == 1, said  # no client came within the wait-timeout
    assert said_waits in said, said
    assert "covey client --app outside_fed.client_app:client_fn --cid K --name NAME" in said


def test_a_run_stopped_by_an_error_keeps_the_last_complete_rounds_model(project: Path) -> None:
    code, said = _cli(
        "run", str(project), "--set", "client-app=outside_fed.client_app:broken_in_round_3"
    )
    assert code == 1, said
    assert "run stopped: round 3:" in said
    where = said.split("the model after round 2, the last complete one, is in ")[1].split(";")[0]
    folder = Path(where).parent
    assert Path(where) == folder / "model.safetensors"
    with safe_open(where, "np") as f:
        assert f.metadata()["covey_round"] == "2"
        model = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    history = covey.History.load(folder)
    assert [r.round for r in history.rounds] == [0, 1, 2, 3]  # round 3's failures are kept
    data = covey.data.load_digits()
    loss, _ = covey.models.logistic_evaluate(model, data.x_test, data.y_test)
    assert loss == history.rounds[2].central_loss


@pytest.mark.slow
def test_the_process_backend_runs_the_project(project: Path) -> None:
    code, said = _cli("run", str(project), "--set", "backend='process'", "--set", "rounds=1")
    assert code == 0, said
    assert "run folder:" in said


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["backend=ray", "client-resources={num_cpus=-1}"], "'num_cpus' must be a finite number"),
        # NaN and inf were let through, and failed inside Ray.
        (["backend=ray", "client-resources={num_cpus=nan}"], "'num_cpus' must be a finite"),
        (["backend=ray", "client-resources={num_gpus=inf}"], "'num_gpus' must be a finite"),
        (["backend=ray", "client-resources=3"], "client-resources = 3"),
        (["backend=ray", "client-resources={a={num_cpus=1}}"], "one table for every client"),
        (["backend=ray", "ray-address=6379"], "ray-address = 6379"),
        (["ray-address='127.0.0.1:6379'"], 'applies to backend = "ray" only'),
        (["backend=ray", "ray-start-timeout=0"], "ray-start-timeout = 0 ([tool.covey] or"),
        (["backend=ray", "ray-start-timeout='60'"], "ray_start_timeout must be None"),
        (["ray-start-timeout=600"], "ray-start-timeout ([tool.covey] or --set) applies to"),
        # given with --set, the value was said to be "in [tool.covey]"
        (["backend=gpu"], "backend = 'gpu' ([tool.covey] or --set): choose inline, process"),
    ],
)
def test_a_wrong_ray_setting_is_named_before_ray_starts(
    project: Path, given: list[str], expected: str
) -> None:
    said = _refused(project, *(arg for item in given for arg in ("--set", item)))
    assert expected in said, said


def test_the_ray_backend_without_ray_names_the_extra(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    said = _refused(project, "--set", "backend=ray")
    assert "needs the ray extra" in said
    assert "pip install 'covey[ray]'" in said


def test_a_compression_the_server_app_names_wrongly_is_refused(project: Path) -> None:
    said = _refused(project, "--set", "server-app=outside_fed.server_app:bad_compression")
    assert "ServerApp(compression=): unknown compression 'q9'" in said


def test_a_run_stopped_by_its_privacy_budget_says_so(project: Path) -> None:
    code, said = _cli("run", str(project), "--set", "server-app=outside_fed.server_app:private")
    assert code == 0, said
    assert "stopped early after round 1: privacy budget: round 2 would spend epsilon" in said
    folder = Path(said.split("run folder: ")[1].split(" (history.json")[0])
    code, shown = _cli("runs", "show", str(folder))
    assert code == 0, shown
    assert "stopped early after round 1: privacy budget" in shown
    out = io.StringIO()
    Console(file=out, width=200).print(round_table(covey.History.load(folder)))
    table = " ".join(out.getvalue().split())
    assert "epsilon" in table  # the budget spent, per round
    privacy = covey.History.load(folder).rounds[1].privacy
    assert privacy is not None
    spent = privacy["epsilon"]
    assert f"{spent:.4f}" in table


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("numpy", "would shadow the installed Python package 'numpy'"),
        ("scikit_learn", None),
        ("sklearn", "would shadow the installed Python package 'sklearn'"),
        ("google", "would shadow the installed Python package 'google'"),  # protobuf's
        ("class", "'class' is a Python keyword"),  # was "would shadow the Python module"
        ("tests", "the project keeps its tests/ folder there"),
        ("runs", "the project keeps its runs/ folder there"),
    ],
)
def test_new_refuses_a_name_that_would_break_the_project(
    tmp_path: Path, name: str, expected: str | None
) -> None:
    code, said = _cli("new", name, "--dir", str(tmp_path))
    if expected is None:  # a name no installed package has: made
        assert code == 0, said
        return
    assert code == 2, said
    assert said.startswith(f"error: NAME {name!r}")
    assert expected in said
    assert not (tmp_path / name).exists()


def test_new_takes_a_name_only_a_plain_folder_on_the_path_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elsewhere" / "plainfed" / "notes").mkdir(parents=True)
    (tmp_path / "elsewhere" / "plainfed" / "README.md").write_text("no Python here")
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    code, said = _cli("new", "plainfed", "--dir", str(tmp_path / "projects"))
    assert code == 0, said
    assert (tmp_path / "projects" / "plainfed" / "plainfed" / "server_app.py").is_file()


def test_new_refuses_a_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    code, said = _cli("new", "fed", "--dir", str(tmp_path / "file"))
    assert code == 2, said
    assert said == f"error: --dir {tmp_path / 'file'} is a file; give a folder (made if missing)"


@pytest.mark.slow
def test_a_federation_names_the_clients_that_failed(project: Path) -> None:
    port_file = project / "fed.port"
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = ["run", "--federation", "local"]
    for item in ("address='127.0.0.1:0'", "port-file='fed.port'", "rounds=2", "wait-timeout=60"):
        command += ["--set", item]
    command += ["--set", "keep-last=1"]  # a served project run crashed on any federation
    code, out = serve_project(project, command, port_file, "outside_fed.client_app:broken_fn", env)
    said = " ".join(out.split())
    assert code == 1, said
    assert "site-0 failed in fit: RuntimeError: disk on fire" in said
    assert "site-1 failed in fit: RuntimeError: disk on fire" in said
    assert "failures: site-" in said
    assert "client 0" not in said
    assert "client 1" not in said


def test_a_federation_refuses_a_keep_last_below_1(project: Path) -> None:
    command = [sys.executable, "-m", "covey", "run", "--federation", "local"]
    command += ["--set", "address='127.0.0.1:0'", "--set", "keep-last=0"]
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "keep-last ([tool.covey.federations.local] or --set)" in out.stderr


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("0", "max-clients ([tool.covey.federations.local] or --set) must be a whole number"),
        # FedAvg waits for 2 clients: a federation admitting 1 could never start a round.
        ("1", "max_clients"),
    ],
)
def test_a_federation_takes_max_clients_and_refuses_one_it_cannot_serve(
    project: Path, value: str, said: str
) -> None:
    command = [sys.executable, "-m", "covey", "run", "--federation", "local"]
    command += ["--set", "address='127.0.0.1:0'", "--set", f"max-clients={value}"]
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode in (1, 2), out.stdout + out.stderr
    assert "unknown" not in out.stderr, out.stderr
    assert said in " ".join(out.stderr.split()), out.stderr
    assert "listening" not in out.stdout + out.stderr


def _stopped_after_round_0(
    project: Path,
    env: dict[str, str],
    port_file: str,
    sets: list[str],
    how: signal.Signals = signal.SIGKILL,
) -> tuple[int, str]:
    """Serve ``covey run --federation local --set ...``, send ``how`` once round 0 is saved.

    Returns:
        The server's exit code and its output.
    """
    command = [sys.executable, "-m", "covey", "run", "--federation", "local"]
    for item in ("address='127.0.0.1:0'", f"port-file='{port_file}'", *sets):
        command += ["--set", item]
    server = subprocess.Popen(command, cwd=project, env=env, stdout=PIPE, stderr=STDOUT, text=True)
    try:
        until_listening(server, project / port_file)
        for _ in range(600):  # until round 0 is saved: then there is a run to resume
            runs = sorted((project / "runs").glob("local-*"), key=lambda p: p.stat().st_mtime)
            if runs and saved_round(runs[-1]):
                break
            time.sleep(0.1)
        server.send_signal(how)
        said = server.communicate(timeout=60)[0]
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=30)
    return server.returncode, said


@pytest.mark.slow
def test_an_interrupted_federation_resumes_with_the_command_it_prints(project: Path) -> None:
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": os.pathsep.join(sys.path)}
    code, said = _stopped_after_round_0(project, env, "int.port", ["rounds=2"], signal.SIGINT)
    assert code == 130, said
    hint = said.strip().splitlines()[-1].split("continue it with `")[1].rstrip("`")
    run = sorted((project / "runs").glob("local-*"))[-1]
    # It printed `covey server --resume` with the app's function of no arguments,
    # which reads pyproject.toml: an app setting given by --set was lost.
    assert hint == (
        f"covey run --federation local --resume {run} --set \"address='127.0.0.1:0'\" "
        "--set \"port-file='int.port'\" --set rounds=2"
    )
    # `covey runs show` said "failed" and neither why nor how to go on; Ctrl-C is no failure.
    code, shown = _cli("runs", "show", str(run))
    assert code == 0, shown
    assert f"{run}: interrupted" in " ".join(shown.split())
    assert (
        "interrupted (SIGINT); continue it from its start (no round of it finished) with "
        f"`covey run {project} --federation local --resume {run} --set \"address='127.0.0.1:0'\" "
        "--set \"port-file='int.port'\" --set rounds=2`"
    ) in " ".join(shown.split())
    args = shlex.split(hint)[1:]
    assert args[-2:] == ["--set", "rounds=2"]
    del args[-2:]  # kept in the run folder
    args += ["--set", "port-file='res.port'"]  # the last --set of a key wins
    code, out = serve_project(
        project, args, project / "res.port", "outside_fed.client_app:client_fn", env
    )
    assert code == 0, out
    assert f"resuming {run}" in " ".join(out.split())
    assert [r.round for r in covey.History.load(run).rounds] == [0, 1, 2]  # --set rounds=2 kept


def test_a_killed_federation_is_named_with_the_command_that_continues_it(
    project: Path,
) -> None:
    # `covey runs show` said `covey server --resume DIR` and an --app: the app's function
    # of no arguments reads pyproject.toml, and the run's --set lr=... was lost.
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": os.pathsep.join(sys.path)}
    code, _ = _stopped_after_round_0(project, env, "kill.port", ["rounds=2", "lr=0.25"])
    assert code == -signal.SIGKILL
    run = sorted((project / "runs").glob("local-*"), key=lambda p: p.stat().st_mtime)[-1]
    code, said = _cli("runs", "show", str(run))
    said = " ".join(said.split())
    assert code == 0, said
    # With the --set items it was started with: the federation's (the address, say)
    # are kept nowhere else, and a resume without them served on another port.
    expected = (
        f"covey run {project} --federation local --resume {run} "
        "--set \"address='127.0.0.1:0'\" --set \"port-file='kill.port'\" --set rounds=2 "
        "--set lr=0.25"
    )
    assert f"{run}: stopped" in said
    assert f"continue the run with `{expected}`" in said
    code, said = _cli("run", str(project), "--resume", str(run))  # without --federation
    assert code == 2, said
    assert f"holds a served run: continue it with `{expected}`" in " ".join(said.split())
    args = [*shlex.split(expected)[1:], "--set", "port-file='again.port'"]  # the last wins
    code, out = serve_project(
        project, args, project / "again.port", "outside_fed.client_app:client_fn", env
    )
    assert code == 0, out
    assert [r.round for r in covey.History.load(run).rounds] == [0, 1, 2]
    kept = json.loads((run / "project.json").read_text())
    assert kept["lr"] == 0.25  # the app was given the --set of the killed run


def test_every_guide_is_in_the_docs_sites_navigation() -> None:
    root = Path(__file__).resolve().parent.parent
    nav = (root / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:", 1)[1]
    for page in sorted((root / "docs").glob("*.md")):
        assert f" {page.name}" in nav, f"docs/{page.name} is not in mkdocs.yml's nav"
    assert "docs/projects.md" in (root / "README.md").read_text(encoding="utf-8")


def test_a_client_started_with_a_cid_beyond_the_sites_is_told_the_range(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)  # `covey client` imports the app from the folder it runs in
    code, said = _cli(
        "client",
        "--app",
        "outside_fed.client_app:client_fn",
        "--cid",
        "20",
        "--server",
        "127.0.0.1:1",
        "--insecure",
    )
    assert code == 2, said
    assert said.startswith("error: --app outside_fed.client_app:client_fn --cid 20:")
    assert "cid 20: the data is split into 10 sites" in said
    assert "a site's cid is 0 to 9" in said


def test_ctrl_c_before_round_0_is_saved_offers_no_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import types

    import numpy as np
    import typer

    import covey.deploy._server
    from covey.deploy._cli import _serve
    from covey.server._store import RunStore

    run = tmp_path / "run"

    def interrupted(*args: object, **kwargs: object) -> None:
        RunStore.create(run, config={"rounds": 1}).close()  # the run began, no round saved
        raise KeyboardInterrupt

    monkeypatch.setattr(covey.deploy._server, "serve", interrupted)
    app = types.SimpleNamespace(
        strategy=covey.FedAvg(), rounds=1, weights=lambda: {"w": np.zeros(1)}, evaluate_fn=None
    )
    app.seed, app.compression = 0, None
    flags = {"run": run, "resuming": False, "port_file": None, "address": "127.0.0.1:0"}
    flags |= {"certs": None, "insecure": True, "rounds": None, "plot": False}
    flags |= {"round_timeout": None, "wait_timeout": None, "heartbeat": None}
    flags |= {"compression": None, "keep_last": None}
    flags |= {"resume_hint": f"covey server --resume {run} --insecure"}
    with pytest.raises(typer.Exit) as info:
        _serve(app, {}, flags)
    assert info.value.exit_code == 130
    said = " ".join(undated(capsys.readouterr().err).split())
    # The run is resumed from step 0 (it saved no round), so the hint to resume it is given.
    assert said == (
        f"interrupted: the run in {run} is kept; continue it with "
        f"`covey server --resume {run} --insecure`"
    )


@pytest.mark.parametrize("spelled", ["warm-up", "warm_up"])
def test_set_overrides_an_app_setting_as_its_table_spells_it(project: Path, spelled: str) -> None:
    code, said = _cli(
        "run",
        str(project),
        "--set",
        "server-app=outside_fed.server_app:needs_warm_up",
        "--set",
        f"{spelled}=3",
        "--set",
        "rounds=0",
    )
    assert code == 0, said
