"""A ``--config`` file is read as the flags are: every mistake in it is named, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from _clirun import (
    covey,
    in_tmp,  # noqa: F401 - the fixture, used by pytestmark
    last_line,
)
from covey.core._messages import MAX_ROUNDS

MAX_CONFIG_BYTES = 1 << 20  # covey.deploy._cli_errors.MAX_CONFIG_BYTES

pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.mark.parametrize("command", ["server", "client"])
def test_a_file_that_is_not_text_is_named(tmp_path: Path, command: str) -> None:
    # It ended in "error: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff", exit 1.
    (tmp_path / "settings.toml").write_bytes(b"\xff\xfe[server]\n")
    code, out = covey(command, "--config", "settings.toml")
    assert code == 2, out
    assert last_line(out) == (
        "error: --config settings.toml: not a TOML file (byte 0 is not UTF-8 text); give the "
        "TOML file of the command's settings"
    )


def test_a_file_too_large_for_settings_is_refused_unread(tmp_path: Path) -> None:
    # It was read whole: `--config /dev/zero` filled the memory.
    (tmp_path / "big.toml").write_text("#" * MAX_CONFIG_BYTES + "\n[server]\n")
    code, out = covey("server", "--config", "big.toml")
    assert code == 2, out
    assert last_line(out) == (
        f"error: --config big.toml: larger than {MAX_CONFIG_BYTES:,} bytes; give the TOML file "
        "of the command's settings"
    )


def test_a_setting_above_the_table_is_named(tmp_path: Path) -> None:
    # rounds = 0 above [server] was passed over: the app's own rounds ran.
    (tmp_path / "server.toml").write_text('rounds = 0\n[server]\napp = "digits_app:server_app"\n')
    code, out = covey("server", "--config", "server.toml", "--insecure")
    assert code == 2, out
    assert last_line(out) == (
        "error: --config server.toml: setting rounds above [server]; the settings go under [server]"
    )


def test_a_misspelled_table_beside_the_right_one_is_named(tmp_path: Path) -> None:
    # [sevrer] was passed over whenever the file had a [server] table too.
    (tmp_path / "fed.toml").write_text(
        '[server]\napp = "digits_app:server_app"\n[sevrer]\nrounds = 0\n[client]\ncid = 1\n'
    )
    code, out = covey("server", "--config", "fed.toml", "--insecure")
    assert code == 2, out
    assert last_line(out) == (
        "error: --config fed.toml: unknown table [sevrer]; the settings go under [server]"
    )


def test_one_file_holds_the_server_and_the_client_settings(tmp_path: Path) -> None:
    (tmp_path / "fed.toml").write_text(
        '[server]\napp = "digits_app:client_fn"\n[client]\ncid = 1\n'
    )
    code, out = covey("server", "--config", "fed.toml", "--insecure")
    assert code == 2, out
    said = "error: server.app in fed.toml digits_app:client_fn is a function taking arguments"
    assert said in out


@pytest.mark.parametrize(
    ("command", "settings"),
    [
        ("server", '[server]\napp = "digits_app:server_app"\ninsecure = true\n'),
        (
            "client",
            '[client]\napp = "digits_app:client_fn"\ncid = 0\nserver = "127.0.0.1:1"\n'
            "insecure = true\n",
        ),
    ],
)
def test_no_insecure_on_the_command_line_overrides_the_file(
    tmp_path: Path, command: str, settings: str
) -> None:
    # --no-insecure was taken as no flag at all: the file's insecure = true served without TLS.
    (tmp_path / "fed.toml").write_text(settings)
    # Served or dialled (as before), it ends at once: no round to run, one attempt.
    at_once = ["--rounds", "0", "--address", "127.0.0.1:0"] if command == "server" else []
    at_once += ["--max-attempts", "1"] if command == "client" else []
    code, out = covey(command, "--config", "fed.toml", "--no-insecure", *at_once)
    assert code == 2, out
    assert last_line(out).startswith("error: no --certs: give --certs DIR")


def test_demo_rounds_beyond_the_most_are_a_usage_error(tmp_path: Path) -> None:
    # It printed the demo's header, then "error: ValueError: rounds must be ..." with exit 1.
    code, out = covey("demo", "--rounds", str(MAX_ROUNDS + 1))
    assert code == 2, out
    assert last_line(out) == f"error: --rounds {MAX_ROUNDS + 1}: at most {MAX_ROUNDS:,} rounds"
    assert not (tmp_path / "runs").exists()


def test_a_project_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    # `covey run` ended in "error: UnicodeDecodeError: ..." with exit status 1.
    (tmp_path / "pyproject.toml").write_bytes(b"\xff\xfe[tool.covey]\n")
    code, out = covey("run")
    assert code == 2, out
    assert " ".join(out.split()) == (
        f"error: {tmp_path / 'pyproject.toml'}: cannot read it (byte 0 is not UTF-8 text); a "
        "TOML file is UTF-8"
    )


def test_the_resume_command_gives_a_huge_deadline_as_written() -> None:
    # --wait-timeout 1e300 was repeated as its 301 digits.
    from covey.deploy._cli_resume import resume_hint

    hint = resume_hint(Path("run"), insecure=True, timing={"wait_timeout": 1e300, "heartbeat": 5})
    assert hint == "covey server --resume run --insecure --wait-timeout 1e+300 --heartbeat 5"


def test_the_demo_says_how_many_clients_a_round_takes_below_two() -> None:
    # --fraction 0 printed "with 0% of clients per round", and each round trained two.
    code, out = covey("demo", "--fraction", "0", "--rounds", "0", "--no-plot", "--run-dir", "d")
    assert code == 0, out
    assert "with 2 of the 100 clients (the fewest; --fraction 0 gives fewer) per round" in (
        " ".join(out.split())
    )


def test_a_policy_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    # It ended in "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff", exit 1.
    (tmp_path / "policy.toml").write_bytes(b"\xff\xfe[policy]\n")
    code, out = covey(
        "site", "--table", "t=t.csv", "--server", "127.0.0.1:1", "--policy", "policy.toml"
    )
    assert code == 2, out
    said = " ".join(out.replace("│", " ").split())
    assert "policy.toml: not a TOML file (byte 0 is not UTF-8 text)" in said, out
    assert "UnicodeDecodeError" not in out


def test_a_policy_file_too_large_is_refused_unread(tmp_path: Path) -> None:
    # It was read whole: `--policy /dev/zero` filled the memory.
    (tmp_path / "big.toml").write_text("#" * MAX_CONFIG_BYTES + "\n[policy]\n")
    code, out = covey(
        "site", "--table", "t=t.csv", "--server", "127.0.0.1:1", "--policy", "big.toml"
    )
    assert code == 2, out
    said = " ".join(out.replace("│", " ").split())
    assert f"big.toml: larger than {MAX_CONFIG_BYTES:,} bytes" in said, out


@pytest.mark.parametrize(
    ("command", "settings", "said"),
    [
        (
            "server",
            '[server]\napp = "digits_app:server_app"\ninsecure = true\nrounds = "ten"\n',
            "error: server.rounds in fed.toml must be a whole number 0 or more, got 'ten'",
        ),
        (
            "server",
            '[server]\napp = "digits_app:server_app"\ninsecure = true\nround-timeout = -1\n',
            "error: server.round-timeout in fed.toml must be a finite number of seconds, above 0, "
            "got -1",
        ),
        (
            "server",
            'app = "digits_app:server_app"\ninsecure = true\nkeep_last = 0\n',
            "error: keep_last in fed.toml must be a whole number above 0, got 0",
        ),
        (
            "client",
            '[client]\napp = "digits_app:client_fn"\nserver = "127.0.0.1:1"\ninsecure = true\n'
            "cid = 0\nmax_task_mb = -5\n",
            "error: client.max_task_mb in fed.toml must be a number above 0, got -5",
        ),
        (
            "client",
            '[client]\napp = "digits_app:client_fn"\nserver = "127.0.0.1"\ninsecure = true\n',
            "error: client.server in fed.toml '127.0.0.1' has no port; give HOST:PORT "
            "(e.g. 127.0.0.1:9092)",
        ),
        (
            "server",
            '[server]\napp = "digits_app:server_app"\ninsecure = true\nport_file = "no/p"\n',
            "error: server.port_file in fed.toml no/p: the folder no does not exist",
        ),
        (
            "server",
            '[server]\napp = "digits_app:server_app"\ncerts = "nofed"\n',
            "error: server.certs in fed.toml nofed is not a federation folder (missing ca.pem, "
            "server.pem, server.key); make one with `covey certs init --dir nofed`",
        ),
        (
            "server",
            '[server]\napp = "digits_app:nothing"\ninsecure = true\n',
            "error: server.app in fed.toml digits_app:nothing: module 'digits_app' has no "
            "attribute 'nothing'",
        ),
        (
            "server",
            '[server]\napp = "digits_app"\ninsecure = true\n',
            "error: server.app in fed.toml 'digits_app': expected MODULE:OBJECT, e.g. "
            "'myfed:server_app'",
        ),
        (
            "client",
            '[client]\napp = "digits_app:server_app"\nserver = "127.0.0.1:1"\ninsecure = true\n',
            "error: client.app in fed.toml digits_app:server_app returned a ServerApp, not a "
            "covey client (no fit)",
        ),
    ],
)
def test_a_bad_value_in_the_file_names_its_key_and_the_file(
    tmp_path: Path, command: str, settings: str, said: str
) -> None:
    # It named the flag (--rounds, --port-file, --certs, --app), which the user had never typed.
    (tmp_path / "fed.toml").write_text(settings)
    code, out = covey(command, "--config", "fed.toml")
    assert code == 2, out
    assert last_line(out) == said


def test_a_bad_value_on_the_command_line_names_its_flag_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "fed.toml").write_text(
        '[server]\napp = "digits_app:server_app"\ninsecure = true\nrounds = 3\n'
    )
    code, out = covey("server", "--config", "fed.toml", "--rounds", "-1")
    assert code == 2, out
    assert last_line(out) == "error: --rounds must be a whole number 0 or more, got -1"


def test_insecure_on_the_command_line_overrides_the_file_s_certificates(tmp_path: Path) -> None:
    # The file's certs (or ca/cert/key) and --insecure were refused as "not both".
    (tmp_path / "fed.toml").write_text(
        '[client]\napp = "digits_app:client_fn"\ncid = 0\nserver = "127.0.0.1:1"\n'
        'certs = "fed"\nname = "a"\nca = "ca.pem"\nserver_name = "fed.example"\n'
    )
    code, out = covey("client", "--config", "fed.toml", "--insecure", "--max-attempts", "1")
    assert "not both" not in out
    assert code == 1, out  # it dialled, without TLS: nothing listens there
    (tmp_path / "fed.toml").write_text(
        '[client]\napp = "digits_app:client_fn"\ncid = 0\nserver = "127.0.0.1:1"\ninsecure = true\n'
    )
    code, out = covey("client", "--config", "fed.toml", "--certs", "fed", "--name", "a")
    assert code == 2, out  # --certs is read, not the file's insecure = true
    assert last_line(out).startswith("error: fed/ca.pem not found")
    assert "not both" not in out


def test_the_resume_command_repeats_the_plot_choice_of_the_command_line() -> None:
    # A server started with --no-plot was told to resume without it, and drew plot.png.
    from covey.deploy._cli_resume import resume_hint

    assert resume_hint(Path("run"), insecure=True, plot=False) == (
        "covey server --resume run --insecure --no-plot"
    )
    assert (
        resume_hint(Path("run"), insecure=True, plot=True) == "covey server --resume run --insecure"
    )
    with_file = resume_hint(Path("run"), config=Path("s.toml"), plot=True)
    assert with_file == "covey server --resume run --config s.toml --plot"
    assert (
        resume_hint(Path("run"), config=Path("s.toml"))
        == "covey server --resume run --config s.toml"
    )
