"""Each common command-line mistake ends in one line naming the flag or file and the fix, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _clirun import (
    covey,
    in_tmp,  # noqa: F401 - the fixture, used by pytestmark
    last_line,
)
from _procs import run_one_round

pytestmark = pytest.mark.usefixtures("in_tmp")


def test_a_client_function_given_to_the_server() -> None:
    code, out = covey("server", "--app", "digits_app:client_fn", "--insecure")
    assert code == 2
    line = last_line(out)
    assert line.startswith("error: --app digits_app:client_fn is a function taking arguments")
    assert "ServerApp" in line
    assert "covey client --app" in line
    assert "Traceback" not in out


def test_a_client_given_certificates_and_insecure_names_its_flags(tmp_path: Path) -> None:
    # It said "give tls= or insecure=True, not both" (the Python API's words) and exited 1,
    # the status that asks a service manager to start it again.
    base = ["client", "--app", "digits_app:client_fn", "--cid", "0", "--server", "127.0.0.1:1"]
    code, out = covey(*base, "--certs", str(tmp_path), "--name", "a", "--insecure")
    assert code == 2, out
    assert last_line(out) == "error: give --certs DIR or --insecure, not both"
    code, out = covey(*base, "--ca", "ca.pem", "--cert", "c.pem", "--key", "c.key", "--insecure")
    assert code == 2, out
    assert last_line(out) == "error: give --ca/--cert/--key or --insecure, not both"
    # --cert and --key were passed over for the files in --certs without a word.
    code, out = covey(*base, "--certs", "fed", "--name", "a", "--cert", "c.pem", "--key", "c.key")
    assert code == 2, out
    assert last_line(out) == (
        "error: give --certs DIR --name NAME or --ca/--cert/--key, not both: --cert --key "
        "would be passed over for the files in fed"
    )


def test_a_client_certificate_without_its_ca_is_refused_naming_the_flags() -> None:
    # With --insecure and no --ca, --cert and --key were ignored without a word.
    base = ["client", "--app", "digits_app:client_fn", "--cid", "0", "--server", "127.0.0.1:1"]
    base += ["--retry-for", "0"]  # were they used, nothing would be there to connect to
    code, out = covey(*base, "--insecure", "--cert", "c.pem", "--key", "c.key")
    assert code == 2, out
    assert last_line(out) == (
        "error: --cert --key without --ca: --insecure connects without TLS, so they would be "
        "passed over; give --ca CA.pem with them (mutual TLS), or --certs DIR --name NAME, "
        "or leave them out with --insecure"
    )
    code, out = covey(*base, "--key", "c.key")
    assert code == 2, out
    assert last_line(out).startswith(
        "error: --key without --ca: a client certificate is used only under TLS, which needs "
        "the CA; give --ca CA.pem"
    )


def test_a_client_function_without_cid() -> None:
    code, out = covey("client", "--app", "digits_app:client_fn", "--server", "127.0.0.1:1")
    assert code == 2
    assert last_line(out) == (
        "error: --app digits_app:client_fn is a client function of a client id: give --cid N "
        "(which part of the data this client holds, e.g. --cid 0)"
    )


def test_a_client_function_reading_a_flower_context_is_told_it_gets_the_cid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flower_context_app.py").write_text(
        "def client_fn(context):\n    return context.node_config['partition-id']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out = covey(
        "client", "--app", "flower_context_app:client_fn", "--cid", "0",
        "--server", "127.0.0.1:1", "--insecure",
    )  # fmt: skip
    assert code == 2
    line = last_line(out)
    assert line.startswith("error: --app flower_context_app:client_fn --cid 0: ")
    assert "not a context: use cid as the partition id" in line
    assert "Traceback" not in out


def test_a_server_app_with_flower_s_evaluate_fn_is_refused_before_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flower_evaluate_app.py").write_text(
        "import numpy as np\n"
        "import covey\n"
        "from covey.deploy import ServerApp\n"
        "def evaluate(server_round, parameters, config):\n"
        "    return 0.0, {}\n"
        "def server_app():\n"
        "    return ServerApp(covey.FedAvg(), {'w': np.zeros(2)}, evaluate_fn=evaluate)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out = covey(
        "server", "--app", "flower_evaluate_app:server_app", "--insecure",
        "--address", "127.0.0.1:0", "--wait-timeout", "1",
    )  # fmt: skip
    assert code == 2
    line = last_line(out)
    assert line.startswith("error: --app flower_evaluate_app:server_app: ")
    assert "Flower's third argument, config" in line
    assert "listening" not in out
    assert not Path("runs").exists()


def test_demo_with_more_clients_than_the_data_allows() -> None:
    code, out = covey("demo", "--clients", "5000")
    assert code == 2
    line = last_line(out)
    assert line.startswith("error: --clients 5000: the digits training set gives at most")
    assert "choose --clients" in line
    assert not Path("runs").exists()  # nothing was started


def test_demo_with_more_clients_than_the_label_skew_can_feed() -> None:
    # 300 clients passed the check of the data's size, then the split failed after
    # the run had started: exit 1, an empty run folder, and a hint at min_size and
    # max_retries, which the demo has no flags for.
    code, out = covey("demo", "--clients", "300", "--no-plot")
    assert code == 2
    line = last_line(out)
    assert line.startswith("error: --clients 300 --alpha 0.5: no Dirichlet(0.5) split of the")
    assert "raise --alpha or lower --clients" in line
    assert "max_retries" not in line
    assert not Path("runs").exists()  # nothing was started
    code, out = covey("demo", "--clients", "300", "--alpha", "100", "--rounds", "1", "--no-plot")
    assert code == 0, out


@pytest.mark.parametrize("lr", ["0", "-0.5", "nan", "inf"])
def test_demo_with_a_learning_rate_that_trains_nothing(lr: str) -> None:
    code, out = covey("demo", "--lr", lr)
    assert code == 2
    assert last_line(out).startswith(f"error: --lr {float(lr)}: the learning rate must be")
    assert not Path("runs").exists()  # nothing was started


def test_demo_with_an_infinite_alpha_is_refused_as_such() -> None:
    # Dirichlet(inf) was refused by the split and said as "raise --alpha or lower --clients".
    code, out = covey("demo", "--alpha", "inf")
    assert code == 2, out
    assert last_line(out) == (
        "error: --alpha inf: the Dirichlet concentration must be a finite number above 0"
    )
    assert not Path("runs").exists()  # nothing was started


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--fraction", "nan", "the fraction of clients per round must be a number in [0, 1]"),
        ("--fraction", "1.5", "the fraction of clients per round must be a number in [0, 1]"),
        ("--fraction", "-0", None),  # 0: two clients a round, as before
        ("--alpha", "nan", "the Dirichlet concentration must be a number of at least 1e-06"),
        ("--alpha", "0", "the Dirichlet concentration must be a number of at least 1e-06"),
    ],
)
def test_demo_refuses_a_nan_fraction_or_alpha_as_no_number_in_range(
    flag: str, value: str, said: str | None
) -> None:
    # nan was refused as "Input should be less than or equal to 1" (--fraction) or
    # "greater than or equal to 0.000001" (--alpha): the range check found it on no side.
    code, out = covey("demo", flag, value, "--rounds", "0", "--no-plot", "--run-dir", "d")
    if said is None:
        assert code == 0, out
        return
    assert code == 2, out
    assert last_line(out) == f"error: {flag} {value}: {said}"
    assert not Path("d").exists()  # nothing was started


@pytest.mark.parametrize("command", ["demo", "server"])
def test_run_dir_on_an_existing_file(tmp_path: Path, command: str) -> None:
    (tmp_path / "taken").write_text("not a folder")
    extra = ["--app", "digits_app:server_app", "--insecure"] if command == "server" else []
    code, out = covey(command, *extra, "--run-dir", "taken")
    assert code == 2
    line = last_line(out)
    assert line.startswith("error: --run-dir taken is a file; give a")
    assert "leave --run-dir out" in line
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_server_without_certs() -> None:
    code, out = covey("server", "--app", "digits_app:server_app")
    assert code == 2
    assert last_line(out) == (
        "error: no --certs: give --certs DIR (a folder made by `covey certs init --dir DIR`), "
        "or --insecure for a local experiment without TLS"
    )


def test_certs_folder_that_is_not_a_federation(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out = covey("server", "--app", "digits_app:server_app", "--certs", "empty")
    assert code == 2
    assert "covey certs init --dir empty" in last_line(out)


def test_unknown_toml_keys_are_rejected_by_name(tmp_path: Path) -> None:
    (tmp_path / "server.toml").write_text(
        '[server]\napp = "digits_app:server_app"\ninsecure = true\nport_fil = "p"\nrouns = 3\n'
    )
    code, out = covey("server", "--config", "server.toml")
    assert code == 2
    line = last_line(out)
    assert line.startswith(
        "error: --config server.toml: unknown settings port_fil, rouns in [server]"
    )
    assert "port_file" in line  # the known keys are listed


def test_unknown_client_toml_key(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[client]\napp = "digits_app:client_fn"\ncert_dir = "x"\n')
    code, out = covey("client", "--config", "c.toml", "--server", "127.0.0.1:1")
    assert code == 2
    assert "unknown setting cert_dir in [client]" in last_line(out)


def test_port_file_in_the_toml_file_is_used(tmp_path: Path) -> None:
    """port_file (like every flag) is read from the file; here the run then fails fast."""
    (tmp_path / "server.toml").write_text(
        "[server]\n"
        'app = "digits_app:server_app"\n'
        'address = "127.0.0.1:0"\n'
        "insecure = true\n"
        'port_file = "the-port"\n'
        "wait_timeout = 0.2\n"
        'run_dir = "run"\n'
    )
    code, out = covey("server", "--config", "server.toml")
    assert code == 1, out  # no client ever joins: the run stops after the wait
    assert int((tmp_path / "the-port").read_text()) > 0
    assert "clients needed" in out


def test_client_certs_without_name(tmp_path: Path) -> None:
    code, out = covey(
        "client",
        "--app",
        "digits_app:client_fn",
        "--cid",
        "0",
        "--server",
        "127.0.0.1:1",
        "--certs",
        str(tmp_path),
    )
    assert code == 2
    assert last_line(out).startswith("error: --certs needs --name NAME")


def test_a_client_name_its_certificate_does_not_hold_is_refused(tmp_path: Path) -> None:
    # The server knows a client by its certificate's name: --name hospital-a with the
    # certificate of hospital-b joined as hospital-b without a word.
    from covey.deploy.certs import init_federation, issue_client

    fed = tmp_path / "fed"
    init_federation(fed)
    issued = issue_client(fed, "hospital-b")
    base = ["client", "--app", "digits_app:client_fn", "--cid", "0", "--server", "127.0.0.1:1"]
    base += ["--retry-for", "0"]
    files = ["--ca", str(fed / "ca.pem"), "--cert", str(issued.cert), "--key", str(issued.key)]
    copied = fed / "clients" / "hospital-a"  # the files of one site copied under another's name
    copied.with_suffix(".pem").write_bytes(issued.cert.read_bytes())
    copied.with_suffix(".key").write_bytes(issued.key.read_bytes())
    copied.with_suffix(".key").chmod(0o600)
    for tls in (files, ["--certs", str(fed)]):
        code, out = covey(*base, *tls, "--name", "hospital-a")
        assert code == 2, out
        assert last_line(out) == (
            "error: --name 'hospital-a', but this client's certificate was issued to "
            "'hospital-b', the name the server knows it by: give --name 'hospital-b', "
            "or the certificate issued to 'hospital-a'"
        )


def test_unexpected_errors_are_one_line_unless_verbose(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text(
        "def client_fn(cid):\n    raise RuntimeError('the data folder is missing')\n"
    )
    args = ["client", "--app", "broken_app:client_fn", "--cid", "0", "--server", "127.0.0.1:1"]
    env = {**os.environ, "COLUMNS": "250"}
    run = [sys.executable, "-m", "covey", *args]
    quiet = subprocess.run(run, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert quiet.returncode == 1
    assert "Traceback" not in quiet.stderr
    assert last_line(quiet.stderr) == (
        "error: RuntimeError: the data folder is missing (run with -v for the traceback)"
    )
    loud = subprocess.run(
        [*run, "-v"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr
    assert "the data folder is missing" in loud.stderr


@pytest.mark.parametrize("taken", [True, False])
def test_an_address_the_server_cannot_listen_on_is_a_usage_error(taken: bool) -> None:
    # A port in use exited 1 (as a failed run), and an address of another machine
    # ended in gRPC's "Failed to bind" naming no cause.
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}" if taken else "192.0.2.1:9092"
        code, out = covey(
            "server", "--app", "digits_app:server_app", "--insecure", "--address", address
        )
    line = last_line(out)
    assert code == 2, out
    assert line.startswith(f"error: --address: cannot listen on {address}: "), line
    assert line.endswith(
        "is in use (another server listens there): stop it, or choose another port"
        if taken
        else "192.0.2.1 is not an address of this machine"
    ), line
    assert "Traceback" not in out
    assert not Path("runs").exists() or not any(Path("runs").iterdir())  # no run was left


def test_a_project_federation_on_a_taken_port_names_its_setting(tmp_path: Path) -> None:
    import socket

    assert covey("new", "fed-port")[0] == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        code, out = covey(
            "run", "fed-port", "--federation", "local", "--set", f'address="{address}"'
        )
    assert code == 2, out
    assert last_line(out).startswith(
        f"error: address ([tool.covey.federations.local] or --set): cannot listen on {address}: "
        f"{address} is in use"
    )
    # The run folder made for it goes, with the app settings kept in it as it started.
    assert list((tmp_path / "fed-port" / "runs").iterdir()) == []


def test_an_app_with_a_syntax_error_is_named_with_its_line(tmp_path: Path) -> None:
    # It ended as an unexpected error (exit 1) naming the file's base name only.
    (tmp_path / "typo_app.py").write_text("import covey\n\ndef client_fn(cid:\n    pass\n")
    code, out = covey("client", "--app", "typo_app:client_fn", "--cid", "0", "--server", "x:1")
    assert code == 2, out
    line = last_line(out)
    assert line.startswith(f"error: --app typo_app:client_fn: {tmp_path / 'typo_app.py'}, line 3: ")
    assert line.endswith("(SyntaxError); fix that line"), line
    assert "Traceback" not in out


def test_an_error_raised_as_an_app_is_imported_says_where(tmp_path: Path) -> None:
    (tmp_path / "raising_app.py").write_text("import covey\n\nSETTINGS = undefined_name\n")
    run = [sys.executable, "-m", "covey", "server", "--app", "raising_app:server_app"]
    out = subprocess.run(
        [*run, "--insecure"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
        cwd=tmp_path,
    )
    assert out.returncode == 1, out.stderr
    assert last_line(out.stderr) == (
        "error: NameError: name 'undefined_name' is not defined (importing raising_app for "
        f"--app raising_app:server_app (at {tmp_path / 'raising_app.py'}:3)) "
        "(run with -v for the traceback)"
    )


def test_a_project_federation_prints_a_client_command_to_paste(tmp_path: Path) -> None:
    import shlex
    import socket

    assert covey("new", "fed-certs")[0] == 0
    project = tmp_path / "fed-certs"
    assert covey("certs", "init", "--dir", str(project / "my fed"))[0] == 0
    settings = ["--set", 'certs="my fed"', "--set", "insecure=false"]
    with socket.socket() as busy:  # the command is printed, then the taken port stops it
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        code, out = covey(
            "run", str(project), "--federation", "local", *settings, "--set", f'address="{address}"'
        )
    assert code == 2, out
    (line,) = [line for line in out.splitlines() if line.strip().startswith("covey client")]
    assert shlex.split(line)[-2:] == ["--certs", str(project / "my fed")], line


def test_a_start_method_that_does_not_exist_is_refused_with_the_inline_backend(
    tmp_path: Path,
) -> None:
    # With backend = "inline" any start-method passed unchecked, and the run started.
    assert covey("new", "inline-start")[0] == 0
    project = tmp_path / "inline-start"
    code, out = covey("run", str(project), "--set", "start-method='forkk'", "--set", "rounds=1")
    assert code == 2, out
    assert last_line(out).startswith("error: start-method = 'forkk' ([tool.covey] or --set): ")
    assert not (project / "runs").exists()
    # A real start method was taken and left unused; a wrong one was told "must be None".
    code, out = covey("run", str(project), "--set", "start-method='spawn'", "--set", "rounds=1")
    assert code == 2, out
    assert last_line(out) == (
        "error: start-method = 'spawn' ([tool.covey] or --set): applies to backend = "
        "\"process\" only (the backend is 'inline')"
    )
    code, out = covey("run", str(project), "--set", "backend='process'", "--set", "start-method=1")
    assert code == 2, out
    assert last_line(out) == (
        "error: start-method = 1 ([tool.covey] or --set): choose 'fork', 'forkserver' or "
        "'spawn', or leave it out (covey picks)"
    )
    assert not (project / "runs").exists()


def test_a_malformed_app_is_refused_with_an_example_of_its_kind(tmp_path: Path) -> None:
    # `covey client --app x` was told "e.g. --app myfed:server_app", a server's app;
    # `--set server-app=5` was told "[tool.covey] needs server-app", though it was given.
    code, out = covey("client", "--app", "x", "--cid", "0", "--server", "127.0.0.1:1")
    assert code == 2
    assert last_line(out) == "error: --app 'x': expected MODULE:OBJECT, e.g. --app myfed:client_fn"
    assert covey("new", "app-kinds")[0] == 0
    code, out = covey("run", "app-kinds", "--set", "server-app=5")
    assert code == 2
    assert last_line(out) == (
        f"error: server-app = 5 ([tool.covey] in {tmp_path / 'app-kinds' / 'pyproject.toml'}, "
        'or --set): give MODULE:FUNCTION as text, e.g. server-app = "myfed.server_app:make_server"'
    )
    code, out = covey("run", "app-kinds", "--set", "client-app='x'")
    assert code == 2
    assert last_line(out).endswith("e.g. client-app myfed.client_app:make_client")


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ('insecure = "false"', 'insecure = "false" in [server]: must be true or false'),
        ('plot = "no"', 'plot = "no" in [server]: must be true or false'),
        ("run-dir = 5", 'run_dir = 5 in [server]: must be text in quotes, e.g. run_dir = "5"'),
        ("port_file = 3", "port_file = 3 in [server]: must be text in quotes"),
    ],
)
def test_a_config_file_setting_of_the_wrong_type_is_refused(
    tmp_path: Path, setting: str, why: str
) -> None:
    # insecure = "false" is text, which Python holds true: the server ran without TLS.
    (tmp_path / "server.toml").write_text(
        f'[server]\napp = "digits_app:server_app"\ncerts = "fed"\nwait_timeout = 1\n{setting}\n'
    )
    code, out = covey("server", "--config", "server.toml", "--address", "127.0.0.1:0")
    assert code == 2, out
    assert last_line(out).startswith(f"error: --config server.toml: {why}"), out
    assert "WITHOUT TLS" not in out


def test_a_client_config_file_switch_in_quotes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "client.toml").write_text('[client]\ninsecure = "true"\n')
    args = ["--app", "digits_app:client_fn", "--cid", "0", "--server", "127.0.0.1:1"]
    code, out = covey("client", "--config", "client.toml", *args)
    assert code == 2, out
    assert last_line(out) == (
        'error: --config client.toml: insecure = "true" in [client]: must be true or false, '
        "without quotes"
    )


def test_covey_server_refuses_to_resume_a_simulated_run(tmp_path: Path) -> None:
    # It served the simulation's folder on as a deployed run: `covey runs show` then
    # gave the simulation's old stop reason for a run the server had stopped since.
    assert covey("new", "sim-then-serve")[0] == 0
    project = tmp_path / "sim-then-serve"
    code, out = covey("run", str(project), "--set", "rounds=1")
    assert code == 0, out
    (run,) = (project / "runs").iterdir()
    before = sorted(p.name for p in run.iterdir())
    app_spec = "digits_app:server_app"
    code, out = covey("server", "--app", app_spec, "--insecure", "--resume", str(run))
    assert code == 2, out
    assert last_line(out).startswith(
        f"error: --resume {run} holds a simulated run; `covey server` continues deployed "
        f"runs only: continue it with `covey run {project} --resume {run}`"
    ), out
    assert sorted(p.name for p in run.iterdir()) == before
    # A federation's run-dir holding it was told to go on with `covey server --resume`.
    code, out = covey("run", str(project), "--federation", "local", "--set", f'run-dir="{run}"')
    assert code == 2, out
    assert "holds a simulated run; give another folder" in last_line(out), out
    assert "covey server --resume" not in out


def test_an_app_setting_set_to_another_kind_is_refused_before_the_run(tmp_path: Path) -> None:
    # `--set lr=0,1` (a comma) gave the app the text "0,1": every client failed once
    # the run had started, and the run stopped with exit status 1.
    assert covey("new", "kinds")[0] == 0
    project = tmp_path / "kinds"
    code, out = covey("run", str(project), "--set", "lr=0,1")
    assert code == 2, out
    assert last_line(out) == (
        "error: --set lr=0,1: lr is a number in [tool.covey.config] (0.5), not text; give a "
        "number, e.g. --set lr=0.5, or change its kind in pyproject.toml first"
    )
    code, out = covey("run", str(project), "--set", "epochs=true")
    assert code == 2, out
    assert "epochs is a number in [tool.covey.config] (2), not true or false" in out
    for given, kind in (("lr=[1,2]", "a list"), ("lr={a=1}", "a table")):  # they were taken
        code, out = covey("run", str(project), "--set", given)
        assert code == 2, out
        assert f"lr is a number in [tool.covey.config] (0.5), not {kind}; give a number" in out
    assert not (project / "runs").exists()
    code, out = covey("run", str(project), "--set", "lr=1", "--set", "rounds=1")  # whole: a number
    assert code == 0, out


def test_demo_with_a_negative_seed_is_a_usage_error() -> None:
    # It ran, then stopped with "error: ValueError: seed must be a non-negative integer"
    # and exit status 1, as a failure of the work.
    code, out = covey("demo", "--seed", "-1", "--clients", "4", "--rounds", "1", "--no-plot")
    assert code == 2, out
    assert "--seed" in out
    assert not Path("runs").exists()


def test_a_project_federation_names_its_settings_for_certs_and_insecure() -> None:
    # They were refused with the flags of `covey server` ("give --certs DIR or --insecure,
    # not both"), though the user had given neither flag, only the table's settings.
    assert covey("new", "tls-fed")[0] == 0
    code, out = covey("run", "tls-fed", "--federation", "local", "--set", "certs='fed'")
    assert code == 2, out
    assert last_line(out).startswith(
        "error: certs = 'fed' and insecure = true ([tool.covey.federations.local] or --set): "
        "give one of them"
    ), out
    code, out = covey("run", "tls-fed", "--federation", "local", "--set", "insecure=false")
    assert code == 2, out
    assert last_line(out).startswith(
        'error: no certs ([tool.covey.federations.local] or --set): give certs = "DIR"'
    ), out


def test_covey_run_inside_a_project_s_subfolder_names_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said only "run in a project made by `covey new NAME`", from inside one.
    assert covey("new", "nested fed")[0] == 2  # not a name: no project
    assert covey("new", "nested-fed")[0] == 0
    monkeypatch.chdir(tmp_path / "nested-fed" / "nested_fed")
    code, out = covey("run")
    assert code == 2, out
    assert last_line(out) == (
        f"error: no pyproject.toml in {tmp_path / 'nested-fed' / 'nested_fed'}; this folder "
        "is inside the project "
        f"{tmp_path / 'nested-fed'}: run `covey run {tmp_path / 'nested-fed'}`, or run "
        "`covey run` there"
    )


def test_resuming_without_the_app_says_the_run_folder_keeps_no_code(tmp_path: Path) -> None:
    # Before, the same words as for a new run: "give --app MODULE:OBJECT naming a ServerApp".
    run = tmp_path / "stopped"
    code, out = covey("server", "--resume", str(run), "--insecure")
    assert code == 2, out
    assert f"--resume {run} needs the run's app too" in " ".join(out.split())
    assert "keeps the state, not the code" in " ".join(out.split())
    code, out = covey("server", "--insecure")
    assert code == 2, out
    assert "needs the run's app" not in out
    assert "give --app MODULE:OBJECT" in out


def test_a_misspelled_table_is_named_as_a_table(tmp_path: Path) -> None:
    # "[sever]" was "unknown setting sever in [server]".
    (tmp_path / "server.toml").write_text('[sever]\napp = "digits_app:server_app"\n')
    code, out = covey("server", "--config", "server.toml", "--insecure")
    assert code == 2, out
    assert last_line(out) == (
        "error: --config server.toml: unknown table [sever]; the settings go under [server]"
    )


@pytest.mark.parametrize(
    ("setting", "unquoted"), [('rounds = "20"', "rounds = 20"), ('cid = " 3"', "cid = 3")]
)
def test_a_number_in_quotes_names_the_file_and_the_key(
    tmp_path: Path, setting: str, unquoted: str
) -> None:
    # It read "--rounds must be a whole number 0 or more, got '20'", naming no file.
    section = "client" if setting.startswith("cid") else "server"
    (tmp_path / "f.toml").write_text(f'[{section}]\napp = "digits_app:x"\n{setting}\n')
    args = ["--insecure"] + (["--server", "127.0.0.1:1"] if section == "client" else [])
    code, out = covey(section, "--config", "f.toml", *args)
    assert code == 2, out
    assert last_line(out) == (
        f"error: --config f.toml: {setting} in [{section}]: must be a number, without quotes: "
        f"{unquoted}"
    )


def test_a_run_folder_below_a_file_is_refused_by_flag(tmp_path: Path) -> None:
    # It failed with "[Errno 20] Not a directory: 'afile/sub'", exit status 1.
    (tmp_path / "afile").write_text("")
    code, out = covey(
        "server", "--app", "digits_app:server_app", "--insecure", "--run-dir", "afile/sub"
    )
    assert code == 2, out
    assert last_line(out) == (
        "error: --run-dir afile/sub: afile is a file, not a folder; give a folder's path"
    )


def test_resuming_where_run_sqlite_is_a_folder_says_so(tmp_path: Path) -> None:
    (tmp_path / "run" / "run.sqlite").mkdir(parents=True)
    code, out = covey("server", "--app", "digits_app:server_app", "--insecure", "--resume", "run")
    assert code == 2, out
    assert last_line(out) == (
        "error: --resume run: its run.sqlite is not a file (a folder?); no run to continue"
    )


def test_a_run_folder_that_cannot_be_made_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both stopped with "error: FileNotFoundError: [Errno 2] No such file or directory",
    # exit status 1, naming neither the flag nor the setting.
    monkeypatch.chdir(tmp_path)
    code, out = covey("demo", "--run-dir", "/proc/covey-nowhere", "--rounds", "1")
    assert code == 2, out
    assert last_line(out) == (
        "error: --run-dir /proc/covey-nowhere: cannot make the folder (No such file or directory)"
    )
    assert covey("new", "nowhere")[0] == 0
    code, out = covey("run", str(tmp_path / "nowhere"), "--set", "runs-dir=/proc/covey-nowhere")
    assert code == 2, out
    assert " ".join(out.split()).endswith(
        "error: runs-dir = '/proc/covey-nowhere' ([tool.covey] or --set): cannot make a run "
        "folder in /proc/covey-nowhere (No such file or directory)"
    )


def test_a_misspelled_federation_setting_is_refused_on_a_simulated_run_too(
    tmp_path: Path,
) -> None:
    # Read only by `covey run --federation local`: a simulated run ran, and the
    # typo waited for the day the federation was served.
    assert covey("new", "typo")[0] == 0
    project = tmp_path / "typo"
    toml = project / "pyproject.toml"
    text = toml.read_text()
    assert "insecure = true\n" in text
    toml.write_text(text.replace("insecure = true\n", 'insecure = true\nadress = "x"\n'))
    code, out = covey("run", str(project), "--set", "rounds=1")
    assert code == 2, out
    assert "unknown setting adress in [tool.covey.federations.local]" in " ".join(out.split())
    assert not (project / "runs").exists()


def test_an_error_of_the_server_apps_own_names_the_server_app(tmp_path: Path) -> None:
    # A SafetensorError from a checkpoint make_server loaded read as covey's own.
    assert covey("new", "ownerr")[0] == 0
    project = tmp_path / "ownerr"
    server = project / "ownerr" / "server_app.py"
    text = server.read_text()
    head = '    """The server app (``covey run`` calls this with the project settings)."""\n'
    assert head in text
    server.write_text(text.replace(head, head + '    raise OSError("header too large")\n'))
    done = run_one_round(project)
    assert done.returncode == 1, done.stdout + done.stderr
    assert " ".join(done.stderr.split()) == (
        "error: OSError: header too large (raised by server-app "
        "ownerr.server_app:make_server(config)) (run with -v for the traceback)"
    )


@pytest.mark.parametrize(
    ("value", "said"),
    [
        # The run folder was made before this flag was checked, and left behind.
        ("0", "error: --keep-last must be a whole number above 0, got 0"),
        # Above 2**63 - 1 the run's database refused it at round 1.
        ("10000000000", "keep_last must be None or a whole number from 1 to 1,000,000,000"),
    ],
)
def test_a_server_refuses_a_keep_last_out_of_range_before_making_its_run_folder(
    value: str, said: str
) -> None:
    base = ["server", "--app", "digits_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    code, out = covey(*base, "--keep-last", value, "--wait-timeout", "1")
    assert code == 2, out
    assert said in last_line(out)
    assert not list(Path().glob("runs/*"))


def test_a_server_losing_the_race_for_a_new_run_dir_exits_2_as_when_it_was_taken_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another server created the run between this one's check and its own: it said
    # "a run already exists" and exited 1, the status that asks for a restart.
    from covey.deploy import _server

    def raced(*args: object, **kwargs: object) -> None:
        raise FileExistsError("run.sqlite")

    monkeypatch.setattr(_server, "serve", raced)
    base = ["server", "--app", "digits_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    code, out = covey(*base, "--run-dir", "taken")
    assert code == 2, out
    assert last_line(out).startswith(
        "error: --run-dir taken already holds a run (another server started it meanwhile); "
        "continue it with `covey server --resume taken"
    )


def test_a_projects_server_factory_given_to_covey_server_points_at_its_server_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project names make_server(config) as its server-app: given to covey server, it
    # was taken for a client_fn.
    (tmp_path / "proj_app.py").write_text(
        "def make_server(config):\n    raise AssertionError('not to be called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out = covey("server", "--app", "proj_app:make_server", "--insecure")
    assert code == 2, out
    line = last_line(out)
    assert line.startswith("error: --app proj_app:make_server is a project's server factory")
    assert "give --app proj_app:server_app" in line
    assert "client_fn" not in line


def test_an_app_in_a_folder_that_an_installed_package_shadows_names_both(tmp_path: Path) -> None:
    # A folder json/ here holding myapp.py: `json` is the standard library's, which has no
    # myapp; the error said only "No module named 'json.myapp'", as if the file were not there.
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "myapp.py").write_text("client_fn = None\n")
    base = ["--cid", "0", "--server", "127.0.0.1:1", "--insecure"]
    code, out = covey("client", "--app", "json.myapp:client_fn", *base)
    assert code == 2, out
    line = last_line(out)
    assert line.startswith("error: --app json.myapp:client_fn: cannot import 'json.myapp'")
    assert line.endswith("not the folder json/ here: rename that folder)")
    assert json.__file__ in line  # where the other json is
    # A package of one's own that lacks the module is not said to be another one.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "__init__.py").write_text("")
    code, out = covey("client", "--app", "mine.nothere:client_fn", *base)
    assert code == 2, out
    assert "rename" not in last_line(out)


@pytest.mark.parametrize(
    ("module", "example"),
    [
        ("./digits_app", ", e.g. digits_app:server_app"),
        (".digits_app", ", e.g. digits_app:server_app"),
        ("apps/digits_app.py", ", e.g. apps.digits_app:server_app"),
        ("..", ""),
    ],
)
def test_an_app_given_as_a_path_or_a_relative_name_is_refused_naming_the_flag(
    module: str, example: str
) -> None:
    # A relative name made import_module raise TypeError: "error: TypeError: the 'package'
    # argument is required to perform a relative import", exit 1, as for a bug of covey's.
    code, out = covey("server", "--app", f"{module}:server_app", "--insecure")
    assert code == 2, out
    assert last_line(out) == (
        f"error: --app {module}:server_app: MODULE is a module's dotted name, not a path or a "
        f"relative name{example}; run from the folder holding it or add that folder to PYTHONPATH"
    )
    assert "TypeError" not in out


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (["--heartbeat", "0.001"], "--heartbeat must be between 0.01 and 600 seconds"),
        (["--config", "fed.toml"], "server.heartbeat in fed.toml must be between 0.01 and 600"),
    ],
)
def test_a_heartbeat_out_of_range_names_its_flag_or_key(
    tmp_path: Path, given: list[str], said: str
) -> None:
    # It said "heartbeat must be between 0.01 and 600 seconds", naming no flag or file.
    (tmp_path / "fed.toml").write_text("[server]\nheartbeat = 1000\n")
    base = ["server", "--app", "digits_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    code, out = covey(*base, *given)
    assert code == 2, out
    assert last_line(out).startswith(f"error: {said}")
    assert not Path("runs").exists()


def test_a_run_folder_held_elsewhere_read_only_or_not_made_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both exited 1, the status of a run that failed and is to be resumed: a supervisor
    # restarting on 1 restarted a command that no restart mends.
    import errno

    from covey.server import _runlock
    from covey.server._store import RunStore

    run = tmp_path / "run"
    RunStore.create(run, config={"rounds": 1, "address": "127.0.0.1:0"}).close()
    command = ("server", "--app", "digits_app:server_app", "--insecure", "--resume", str(run))
    held = _runlock.hold_run(run)  # another open of run.lock: as another server's
    try:
        code, out = covey(*command)
    finally:
        if held is not None:
            os.close(held)
    assert code == 2, out
    assert f"the run in {run} is still running in pid {os.getpid()}" in last_line(out), out

    def read_only(lock: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(lock))

    monkeypatch.setattr(_runlock, "hold_lock", read_only)
    code, out = covey(*command)
    assert code == 2, out
    assert f"cannot open the run in {run} to serve or resume it" in last_line(out), out
    # A new run's --run-dir that cannot be made: refused the same way.
    code, out = covey(*command[:-2], "--run-dir", "/proc/covey-nowhere/run")
    assert code == 2, out
    assert "cannot make the run folder /proc/covey-nowhere/run: " in last_line(out), out
