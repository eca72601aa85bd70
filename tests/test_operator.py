"""What an operator gets wrong when deploying: each mistake is refused, naming what is wrong."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
import covey.deploy
from _procs import interrupt_tiny_server, undated
from covey.cli import app
from covey.deploy._revoked import RevocationList
from covey.deploy.certs import init_federation, issue_client, revoke
from covey.server import RunStore
from covey.transport.grpc._refusal import Refused

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served, WaitRunOut

APPS = Path(__file__).parent / "apps"


def _client_command(cwd: Path, *tls: str) -> tuple[int, str]:
    """``covey client`` with these TLS flags, in a process (gRPC may abort it), bounded."""
    args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--server", "127.0.0.1:9"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
    }
    env["COLUMNS"] = "250"
    run = subprocess.run(
        [sys.executable, "-m", "covey", *args, *tls, "--retry-for", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )
    return run.returncode, run.stderr


def test_a_port_held_by_another_covey_server_is_refused(tmp_path: Path) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    first = Served(strategy, 1, run_dir=tmp_path / "first")
    second = Served(
        strategy, 1, address=f"127.0.0.1:{first.port}", run_dir=tmp_path / "second", wait_timeout=2
    )
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
        second.join(30)  # a second server that listened would stop waiting for clients instead
    assert not (tmp_path / "second").exists()
    clients = [Joined(first.port, name=f"c{k}") for k in range(2)]
    assert [r.round for r in first.join().history.rounds] == [0, 1]
    for c in clients:
        c.join()


def test_a_run_folder_served_by_another_server_is_refused(tmp_path: Path) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    first = Served(strategy, 1, run_dir=tmp_path / "run")
    second = Served(
        strategy, 1, run_dir=tmp_path / "run", resume=True, address="127.0.0.1:0", wait_timeout=2
    )
    with pytest.raises(OSError, match=r"the run in .* is still running in pid \d+"):
        second.join(30)  # a second server on the run would wait for clients, then fail it
    clients = [Joined(first.port, name=f"c{k}") for k in range(2)]
    assert [r.round for r in first.join().history.rounds] == [0, 1]
    for c in clients:
        c.join()
    again = Served(strategy, 2, run_dir=tmp_path / "run", resume=True, address="127.0.0.1:0")
    clients = [Joined(again.port, name=f"c{k}") for k in range(2)]
    assert [r.round for r in again.join().history.rounds] == [0, 1, 2]  # the lock went with it
    for c in clients:
        c.join()


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    root = tmp_path / "fed"
    init_federation(root)
    for name in ("a", "b"):
        issue_client(root, name)
    return root


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            "--ca fed/ca.pem --cert fed/clients/a.pem",
            "a client certificate and its private key go together: give both (--cert and "
            "--key) or neither",
        ),
        (
            "--ca fed/ca.pem --cert fed/clients/a.pem --key fed/clients/b.key",
            "fed/clients/b.key is not the private key of fed/clients/a.pem",
        ),
        ("--ca fed/clients/a.key", "fed/clients/a.key is not a PEM certificate"),
        ("--certs broken --name a", "broken/ca.pem is not a PEM certificate"),
    ],
)
def test_a_client_with_bad_tls_files_names_the_file(fed: Path, flags: str, message: str) -> None:
    broken = fed.parent / "broken"
    broken.mkdir()
    (broken / "clients").symlink_to(fed / "clients")
    (broken / "ca.pem").write_text("not a certificate\n")
    code, err = _client_command(fed.parent, *flags.split())
    assert code == 2, err
    assert undated(err).strip().splitlines()[-1] == f"error: {message}"
    assert "connection to" not in err  # refused before any attempt to connect


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("server.key", "server.key is not a PEM private key"),
        ("swap", "server.key is not the private key of"),
        ("server.pem", "server.pem is not a PEM certificate"),
        ("revoked.json", "malformed revocation list"),
    ],
)
def test_a_server_with_bad_tls_files_names_the_file(
    fed: Path, tmp_path: Path, damage: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if damage == "swap":
        (fed / "server.key").write_bytes((fed / "clients" / "a.key").read_bytes())
    else:
        (fed / damage).write_text("{damaged")
    monkeypatch.syspath_prepend(str(APPS))
    monkeypatch.setenv("COLUMNS", "250")
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            *("server", "--app", "tiny_app:server_app", "--certs", str(fed)),
            *("--address", "127.0.0.1:0", "--run-dir", str(run), "--wait-timeout", "1"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "cannot listen" not in result.output
    assert not run.exists()


def test_a_revocation_list_damaged_mid_run_keeps_the_last_good_one(
    fed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    check = RevocationList(fed)
    a, b = ((fed / "clients" / f"{n}.pem").read_bytes() for n in ("a", "b"))
    revoke(fed, "b")
    assert (check(a), check(b)) == (False, True)
    (fed / "revoked.json").write_text('[{"serial": ')  # an edit saved half-way
    assert (check(a), check(b)) == (False, True)  # neither raises nor lets b back in
    assert (check(a), check(b)) == (False, True)
    errors = [r for r in caplog.records if "revoked.json" in r.getMessage()]
    assert len(errors) == 1  # said once, not at every message
    assert "keeping the revocation list read before" in errors[0].getMessage()
    (fed / "revoked.json").unlink()
    assert check(b)
    (fed / "revoked.json").write_text("[]\n")
    assert (check(a), check(b)) == (False, False)  # a good list again applies


def test_clients_are_told_why_a_failed_run_stopped(tmp_path: Path) -> None:
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)
    served = Served(strategy, 1, run_dir=tmp_path / "run", wait_timeout=2)
    client = Joined(served.port, name="lonely")
    with pytest.raises(covey.FederationError):
        served.join(30)
    client.join(30)
    assert client.result is not None, client.error
    assert client.result.reason.startswith("the run stopped: round 1: only 1 of the 2 clients")


def test_ctrl_c_on_the_server_says_how_to_resume(tmp_path: Path) -> None:
    code, err, run = interrupt_tiny_server(tmp_path, signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err
    assert undated(err).strip().splitlines()[-1] == (
        f"interrupted: the run in {run} is kept; continue it with "
        f"`covey server --resume {run} --app tiny_app:server_app --insecure --no-plot "
        "--wait-timeout 60`"
    )
    with RunStore.open(run) as store:
        assert store.status == "failed"
        assert store.events()[-1][2:] == ("stopped", "interrupted (SIGINT)")


def _start_server(tmp_path: Path, run: Path) -> subprocess.Popen[bytes]:
    """``covey server`` of tiny_app in a process, once it listens (waiting for its clients)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
    }
    port_file = tmp_path / "port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "covey", "server", "--app", "tiny_app:server_app"),
            *("--insecure", "--address", "127.0.0.1:0", "--port-file", str(port_file)),
            *("--run-dir", str(run), "--wait-timeout", "60", "--no-plot"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        if port_file.exists() or server.poll() is not None:
            break
        time.sleep(0.1)
    if not port_file.exists():
        server.kill()
        server.wait(10)
        raise AssertionError("the server did not start")
    return server


def test_a_killed_server_does_not_show_as_running(tmp_path: Path) -> None:
    from covey.dashboard._runs import read_run

    run = tmp_path / "runs" / "study"
    server = _start_server(tmp_path, run)
    try:
        assert read_run("study", run).status == "running"
        server.kill()  # SIGKILL: the run cannot record its end
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    shown = read_run("study", run)
    assert shown.status == "stopped"
    assert "resume" in shown.meta["stopped_reason"]
    listed = CliRunner().invoke(
        app, ["runs", "list", "--dir", str(tmp_path / "runs")], env={"COLUMNS": "250"}
    )
    assert listed.exit_code == 0, listed.output
    assert "stopped" in listed.output
    assert "running" not in listed.output


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


@pytest.mark.parametrize("columns", ["400", "60"])  # rich's table, and plain narrow help
def test_help_texts_show_their_brackets(columns: str) -> None:
    import typer.main

    checked = 0
    for path, command in _commands(typer.main.get_command(app)):
        shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": columns})
        text = " ".join(shown.output.replace("│", " ").split())
        for param in command.params:
            for word in (getattr(param, "help", None) or "").split():
                if "[" in word:  # e.g. "[policy]", which rich took for markup and dropped
                    shown_as = word.replace("\\[", "[")  # an escaped bracket shows as one
                    assert shown_as in text, f"covey {' '.join(path)} --help lost {word!r}"
                    checked += 1
        assert "\\[" not in text, f"covey {' '.join(path)} --help shows a backslash"
    assert checked >= 2


def _query_command(*args: str) -> tuple[int, str]:
    """``covey query`` in a process (it ends with os._exit), bounded."""
    run = subprocess.run(
        [sys.executable, "-m", "covey", "query", "--insecure", "--wait-timeout", "1", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )
    return run.returncode, run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--server", "127.0.0.1:0", "SELECT * FROM patients"],
            "SELECT * at line 1, column 8 is row-level output and is not supported",
        ),
        (
            ["--server", "127.0.0.1:0", "--epsilon", "-1", "SELECT COUNT(*) FROM patients"],
            "epsilon must be a positive number, got -1.0",
        ),
        (
            ["--server", "127.0.0.1:0", "--mechanism", "lapalce", "SELECT COUNT(*) FROM p"],
            "mechanism must be one of ('laplace', 'gaussian'), got 'lapalce'",
        ),
        (
            ["--server", "127.0.0.1", "SELECT COUNT(*) FROM patients"],
            "'127.0.0.1' has no port; give HOST:PORT (e.g. 127.0.0.1:9092)",
        ),
        (  # the defaults (--sites 1, secure) used to wait for a site, then fail
            ["--server", "127.0.0.1:0", "SELECT COUNT(*) FROM patients"],
            "--sites 1: secure aggregation needs at least two sites; "
            "give --sites 2 or more, or --no-secure",
        ),
    ],
)
def test_a_query_that_cannot_be_answered_is_refused_before_it_listens(
    args: list[str], message: str
) -> None:
    code, err = _query_command(*args)
    assert code == 2, err
    assert undated(err).strip().splitlines()[-1] == f"error: {message}"
    assert "waiting for" not in err  # no site was kept waiting on a doomed query


def test_a_query_on_a_busy_port_says_so() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _query_command(
            "--server", f"127.0.0.1:{port}", "--sites", "2", "SELECT COUNT(*) FROM p"
        )
    assert code == 2, err  # a mistake in --server, as an address of another machine
    last = undated(err).strip().splitlines()[-1]
    assert last.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["server", "--rounds", "-2"], "--rounds must be a whole number 0 or more, got -2"),
        (
            ["server", "--round-timeout", "-1"],
            "--round-timeout must be a finite number of seconds, above 0, got -1.0",
        ),
        (
            ["server", "--heartbeat", "0"],
            "--heartbeat must be a finite number of seconds, above 0, got 0.0",
        ),
        (
            ["server", "--wait-timeout", "nan"],
            "--wait-timeout must be a finite number of seconds, above 0, got nan",
        ),
        (
            ["server", "--config", "bad.toml"],
            "server.rounds in bad.toml must be a whole number 0 or more, got 'ten'",
        ),
        (
            ["client", "--retry-for", "nan"],
            "--retry-for must be a finite number of seconds, 0 or more, got nan",
        ),
        # "inf" is a float to the command line; it read "must be a number 0 or more, got inf".
        (
            ["client", "--retry-for", "inf"],
            "--retry-for must be a finite number of seconds, 0 or more, got inf",
        ),
        (["client", "--max-attempts", "0"], "--max-attempts must be a whole number above 0, got 0"),
        (
            ["client", "--config", "bad.toml"],
            "client.cid in bad.toml must be a whole number 0 or more, got 'x'",
        ),
    ],
)
def test_numbers_that_would_hang_or_misbehave_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(APPS))
    (tmp_path / "bad.toml").write_text('[server]\nrounds = "ten"\n[client]\ncid = "x"\n')
    command, *rest = args
    app_flags = ["--app", f"tiny_app:{'server_app' if command == 'server' else 'client_fn'}"]
    where = (
        ["--address", "127.0.0.1:0", "--run-dir", "run", "--no-plot", "--wait-timeout", "2"]
        if command == "server"
        else ["--server", "127.0.0.1:9", *([] if "--config" in rest else ["--cid", "0"])]
    )
    result = CliRunner().invoke(
        app, [command, *app_flags, "--insecure", *where, *rest], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == f"error: {message}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"rounds": -1}, "rounds must be an int from 0 to 1,000,000,000, got -1"),
        ({"rounds": 2**70}, "rounds must be an int from 0 to 1,000,000,000, got 11805916"),
        ({"wait_timeout": float("nan")}, "wait_timeout must be a number of seconds above 0"),
        ({"round_timeout": 0}, "round_timeout must be a number of seconds above 0, got 0"),
        # math.isfinite(10**400) raised a bare OverflowError
        (
            {"round_timeout": 10**400},
            "round_timeout must be a number of seconds above 0, got an int of 1329 bits, too "
            "large for a float",
        ),
        ({"heartbeat": -1.0}, "heartbeat must be a number of seconds above 0, got -1.0"),
    ],
)
def test_serve_refuses_numbers_that_would_hang_or_misbehave(
    tmp_path: Path, setting: dict[str, Any], message: str
) -> None:
    kwargs: dict[str, Any] = {"rounds": 1, "wait_timeout": 2.0, **setting}
    rounds = kwargs.pop("rounds")
    with pytest.raises(ValueError, match=re.escape(message)):
        covey.deploy.serve(
            covey.FedAvg(),
            rounds,
            {"w": np.zeros(2)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=tmp_path / "run",
            **kwargs,
        )
    assert not (tmp_path / "run").exists()


def test_a_run_resumed_with_another_strategy_is_refused(tmp_path: Path) -> None:
    first = Served(covey.FedAvg(fraction_evaluate=0.0), 1, run_dir=tmp_path / "run")
    clients = [Joined(first.port, name=f"c{k}") for k in range(2)]
    first.join()
    for c in clients:
        c.join()
    adam = covey.FedAdam(fraction_evaluate=0.0)
    again = Served(adam, 2, run_dir=tmp_path / "run", resume=True, address="127.0.0.1:0")
    with pytest.raises(
        ValueError, match="was started with FedAvg; it cannot be resumed with FedAdam"
    ) as refused:
        again.join(30)  # it used to fail at the first reply, on FedAvg's saved state
    # Not "with --run-dir", a flag covey run and simulate() do not have.
    assert str(refused.value).endswith("or start a new run in another folder")
    with RunStore.open(tmp_path / "run", exclusive=True) as store:  # the refusal let go of it
        assert store.last_round() == 1
        assert store.status == "finished"


def test_a_run_resumed_with_other_hyperparameters_is_refused_before_listening(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Served(covey.FedAdam(fraction_evaluate=0.0, eta=0.1), 1, run_dir=tmp_path / "run")
    clients = [Joined(first.port, name=f"c{k}") for k in range(2)]
    first.join()
    for c in clients:
        c.join()
    slower = covey.FedAdam(fraction_evaluate=0.0, eta=0.01)
    with pytest.raises(
        ValueError, match=r"other strategy settings.*eta 0\.1 \(the run's\) is 0\.01"
    ):
        covey.deploy.serve(
            slower,
            2,
            {"w": np.zeros(2)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=tmp_path / "run",
            resume=True,
        )  # it used to listen and go on with the other rate on the saved moments
    with RunStore.open(tmp_path / "run", exclusive=True) as store:  # not marked failed
        assert store.last_round() == 1
        assert store.status == "finished"
    # fewer clients a round is an operator's choice: said, and the run goes on
    fewer = covey.FedAdam(fraction_evaluate=0.0, eta=0.1, fraction_fit=0.5, min_fit_clients=1)
    again = Served(fewer, 2, run_dir=tmp_path / "run", resume=True, address="127.0.0.1:0")
    clients = [Joined(again.port, name=f"c{k}") for k in range(2)]
    assert again.join().history.rounds[-1].round == 2
    for c in clients:
        c.join()
    said = [r.getMessage() for r in caplog.records]
    assert any("fraction_fit 1.0 (the run's) is 0.5 now" in m for m in said), said


def test_secure_aggregation_s_graph_is_part_of_its_settings() -> None:
    from covey.secagg import secure
    from covey.server._resume import strategy_changes

    def make(complete: bool | None) -> covey.Strategy:
        with pytest.warns(UserWarning, match="honest-but-curious"):
            return secure(covey.FedAvg(), clip_range=1.0, complete=complete)

    full, sparse = make(True), make(False)
    stored = full.describe()
    assert strategy_changes(stored, full, ("hyperparameters",)) == []
    assert strategy_changes(stored, sparse, ("hyperparameters",)) == [
        "secagg.complete True (the run's) is False now"
    ]
    del stored["hyperparameters"]["secagg"]["complete"]  # a run started by an older covey
    assert strategy_changes(stored, make(None), ("hyperparameters",)) == []


@pytest.mark.parametrize("damaged", ["ca.key", "ca.pem"])
def test_issuing_with_a_damaged_ca_names_the_file(fed: Path, damaged: str) -> None:
    (fed / damaged).write_text("junk\n")
    result = CliRunner().invoke(
        app, ["certs", "issue", "c", "--dir", str(fed)], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 2, result.output
    assert str(fed / damaged) in result.output
    assert "Traceback" not in result.output


def test_the_wait_for_clients_is_not_counted_as_training() -> None:
    served = Served(covey.FedAvg(fraction_evaluate=0.0), 2)
    clients = [Joined(served.port, name=f"c{k}") for k in range(2)]
    result = served.join()
    for c in clients:
        c.join()
    for record in result.history.rounds[1:]:
        took = record.durations
        # no federated evaluation (fraction_evaluate=0) nor evaluate_fn: neither is timed
        assert set(took) == {"wait", "fit", "aggregate", "total"}
        assert min(took["fit"], took["wait"]) >= 0
        assert took["wait"] + took["fit"] <= took["total"]


def test_a_second_process_with_the_same_identity_ends_the_first_for_good() -> None:
    joined = threading.Event()

    def on_event(name: str, event: str, detail: str) -> None:
        if name == "twin" and event == "join":
            joined.set()

    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)
    served = Served(strategy, 1, on_event=on_event)
    first = Joined(served.port, name="twin")
    assert joined.wait(30)
    second = Joined(served.port, name="twin")
    first.join(30)  # it used to reconnect and replace the second, and so on without end
    assert isinstance(first.error, Refused), first.error
    assert "another client connected as twin" in first.error.cause
    # An insecure run names its clients by connect(name=...): that is what must differ.
    assert "needs its own name (connect(name=...)" in first.error.cause
    assert "certificate" not in first.error.cause
    other = Joined(served.port, name="other")
    assert [r.round for r in served.join().history.rounds] == [0, 1]
    for c in (second, other):
        c.join()
        assert c.result is not None
        assert c.result.tasks == 1


def _dashboard(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "covey", "dashboard", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
    )


def test_the_dashboard_on_port_0_prints_the_port_it_listens_on(tmp_path: Path) -> None:
    import urllib.request

    page = _dashboard(str(tmp_path), "--port", "0")
    try:
        assert page.stdout is not None
        line = page.stdout.readline()  # printed once it listens
        match = re.search(r"on http://127\.0\.0\.1:(\d+)/ ", line)
        assert match is not None, line
        port = int(match.group(1))
        assert port != 0, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
            assert answer.status == 200
    finally:
        page.kill()
        page.communicate(timeout=30)


def test_the_dashboard_on_a_busy_port_or_with_damaged_certs_says_so(fed: Path) -> None:
    (fed / "server.key").write_bytes((fed / "clients" / "a.key").read_bytes())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args, code, message in [
            ([], 2, f"error: --host/--port: cannot listen on 127.0.0.1:{port}: "),
            (["--certs", str(fed)], 2, f"error: --certs {fed}: {fed}/server.key is not the"),
        ]:
            page = _dashboard(str(fed.parent), "--port", str(port), *args)
            try:
                out, err = page.communicate(timeout=60)
            finally:
                if page.poll() is None:
                    page.kill()
                    page.communicate(timeout=30)
            assert page.returncode == code, err
            assert err.strip().splitlines()[-1].startswith(message), err
            assert "covey dashboard of" not in out  # it never listened


def test_a_server_certificate_for_another_host_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.deploy import tls_from_certs

    fed = tmp_path / "fed"
    init_federation(fed, hosts=("server.example.org",))  # not the 127.0.0.1 clients dial
    issue_client(fed, "a")
    run_out = WaitRunOut(monkeypatch)
    served = Served(covey.FedAvg(fraction_evaluate=0.0), 1, certs=fed, wait_timeout=30)
    client = Joined(served.port, tls=tls_from_certs(fed, "a"), retry_for=5)
    client.join(30)  # it used to retry for --retry-for (600 s by default), then say 'lost'
    run_out.now()
    assert isinstance(client.error, Refused), client.error
    assert "not issued for the address dialled" in client.error.cause
    with pytest.raises(covey.FederationError):
        served.join(30)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_run_stopped_before_its_first_round_resumes(tmp_path: Path, asynchronous: bool) -> None:
    def strategy() -> covey.Strategy:
        if asynchronous:
            return covey.FedBuff(buffer_size=2, min_available_clients=2, fraction_evaluate=0.0)
        return covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)

    first = Served(strategy(), 1, run_dir=tmp_path / "run", wait_timeout=1)
    with pytest.raises(covey.FederationError):  # no client came: only round 0 is saved
        first.join(30)
    again = Served(
        strategy(),
        1,
        run_dir=tmp_path / "run",
        resume=True,
        address="127.0.0.1:0",
        round_timeout=20,
    )
    clients = [Joined(again.port, name=f"c{k}") for k in range(2)]
    result = again.join()  # round 0 was saved a second time, which the store refused
    assert [r.round for r in result.history.rounds] == [0, 1]
    for c in clients:
        c.join()
    with RunStore.open(tmp_path / "run") as store:
        assert store.status == "finished"
        assert store.last_round() == 1


def test_resume_and_another_run_dir_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(APPS))
    first = Served(covey.FedAvg(fraction_evaluate=0.0), 1, run_dir=tmp_path / "old")
    clients = [Joined(first.port, name=f"c{k}") for k in range(2)]
    first.join()
    for c in clients:
        c.join()
    result = CliRunner().invoke(
        app,
        [
            *("server", "--app", "tiny_app:server_app", "--insecure", "--no-plot"),
            *("--resume", "old", "--run-dir", "new", "--address", "127.0.0.1:0"),
            *("--wait-timeout", "2"),
        ],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 2, result.output  # --run-dir was silently ignored
    assert result.output.strip().splitlines()[-1] == (
        "error: give --run-dir new (a new run) or --resume old (continue that one), not both"
    )


def test_the_dashboard_over_mtls_refuses_a_revoked_certificate(fed: Path, tmp_path: Path) -> None:
    import ssl
    import urllib.error
    import urllib.request

    from covey.dashboard import DashboardServer

    def get(url: str, name: str) -> int:
        context = ssl.create_default_context(cafile=str(fed / "ca.pem"))
        context.load_cert_chain(fed / "clients" / f"{name}.pem", fed / "clients" / f"{name}.key")
        with urllib.request.urlopen(url + "api/runs", timeout=30, context=context) as answer:  # noqa: S310 - https to 127.0.0.1
            return int(answer.status)

    runs = tmp_path / "runs"
    runs.mkdir()
    revoke(fed, "b")
    with DashboardServer(runs, port=0, certs=fed) as page:
        assert get(page.url, "a") == 200
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            get(page.url, "b")  # a revoked site or analyst used to see every run
        revoke(fed, "a")  # revoked while the page runs: the next connection is refused
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            get(page.url, "a")


def test_sites_are_told_when_a_query_failed(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    query = subprocess.Popen(
        [
            *(sys.executable, "-m", "covey", "query", "--insecure", "--sites", "1", "--no-secure"),
            *("--server", "127.0.0.1:0", "--port-file", str(port_file)),
            *("--wait-timeout", "30", "--timeout", "20", "SELECT COUNT(*) FROM patients"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
    )
    try:
        for _ in range(600):
            if port_file.exists() or query.poll() is not None:
                break
            time.sleep(0.1)
        assert port_file.exists(), query.communicate(timeout=10)
        trainer = Joined(int(port_file.read_text()), name="not-a-site")  # answers no 'analyze'
        _, err = query.communicate(timeout=60)
    finally:
        if query.poll() is None:
            query.kill()
            query.communicate(timeout=10)
    assert query.returncode == 1, err
    trainer.join(30)
    assert trainer.result is not None, trainer.error
    assert trainer.result.reason.startswith("the query failed: no site answers this query")


def test_a_port_file_that_cannot_be_written_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(APPS))
    result = CliRunner().invoke(
        app,
        [
            *("server", "--app", "tiny_app:server_app", "--insecure", "--no-plot"),
            *("--address", "127.0.0.1:0", "--run-dir", "run", "--port-file", "nodir/port"),
            *("--wait-timeout", "2"),
        ],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: --port-file nodir/port: the folder nodir does not exist"
    )
    assert not (tmp_path / "run").exists()  # it used to be left as a run with no round
    code, err = _query_command("--server", "127.0.0.1:0", "--json", "nodir/a.json", "SELECT 1")
    assert code == 2, err
    assert (
        err.strip().splitlines()[-1]
        == "error: --json nodir/a.json: the folder nodir does not exist"
    )


def test_resuming_a_run_with_no_saved_round_says_what_to_do(tmp_path: Path) -> None:
    RunStore.create(tmp_path / "run", config={"strategy": {"name": "FedAvg"}}).close()
    again = Served(covey.FedAvg(), 1, run_dir=tmp_path / "run", resume=True, address="127.0.0.1:0")
    # Without the app's initial weights, a run that saved no round cannot start again.
    with pytest.raises(ValueError, match="before round 0 was saved: give the app's initial"):
        again.join(30)
    RunStore.open(tmp_path / "run", exclusive=True).close()  # the refusal let go of the run


def test_a_refused_resume_lets_go_of_the_run(fed: Path, tmp_path: Path) -> None:
    first = Served(covey.FedAvg(fraction_evaluate=0.0), 1, run_dir=tmp_path / "run")
    clients = [Joined(first.port, name=f"c{k}") for k in range(2)]
    first.join()
    for c in clients:
        c.join()
    (fed / "server.key").write_text("damaged\n")
    with pytest.raises(ValueError, match=r"server\.key is not a PEM private key"):
        covey.deploy.serve(
            covey.FedAvg(), 2, None, certs=fed, run_dir=tmp_path / "run", resume=True
        )
    RunStore.open(tmp_path / "run", exclusive=True).close()  # its lock was kept until GC


def test_runs_list_shows_a_damaged_run_database_as_unreadable(tmp_path: Path) -> None:
    served = Served(covey.FedAvg(fraction_evaluate=0.0), 1, run_dir=tmp_path / "runs" / "study")
    clients = [Joined(served.port, name=f"c{k}") for k in range(2)]
    served.join()
    for c in clients:
        c.join()
    (tmp_path / "runs" / "study" / "run.sqlite").write_bytes(b"not a database" * 100)
    listed = CliRunner().invoke(
        app, ["runs", "list", "--dir", str(tmp_path / "runs")], env={"COLUMNS": "250"}
    )
    assert listed.exit_code == 0, listed.output
    assert "unreadable" in listed.output
    assert "finished" not in listed.output  # its history.json said so; it cannot be resumed
