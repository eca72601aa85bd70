"""An empty run folder (``--run-dir ""``) is refused by name: it meant the current folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from _clirun import (
    covey,
    in_tmp,  # noqa: F401 - the fixture, used by pytestmark
    last_line,
)

pytestmark = pytest.mark.usefixtures("in_tmp")

SERVER = ["server", "--app", "digits_app:server_app", "--insecure", "--address", "127.0.0.1:0"]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        ([*SERVER, "--rounds", "0", "--run-dir", ""], "--run-dir"),
        ([*SERVER, "--resume", ""], "--resume"),
        (["demo", "--rounds", "0", "--no-plot", "--run-dir", ""], "--run-dir"),
    ],
)
def test_an_empty_folder_flag_is_refused_by_name(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    # Path("") is ".": the run's files went into the current folder without a word.
    code, out = covey(*args)
    assert code == 2, out
    assert last_line(out) == f'error: {flag} is empty (""); give a folder, or leave it out'
    assert list(tmp_path.iterdir()) == []


def test_the_current_folder_given_as_such_is_still_a_folder(tmp_path: Path) -> None:
    code, out = covey("demo", "--rounds", "0", "--no-plot", "--run-dir", ".")
    assert code == 0, out
    assert (tmp_path / "history.json").is_file()


@pytest.mark.parametrize("key", ["run_dir", "run-dir", "resume"])
def test_an_empty_folder_in_a_config_file_is_refused_by_its_key(tmp_path: Path, key: str) -> None:
    (tmp_path / "fed.toml").write_text(
        f'[server]\napp = "digits_app:server_app"\ninsecure = true\n{key} = ""\n'
    )
    code, out = covey("server", "--config", "fed.toml", "--rounds", "0")
    assert code == 2, out
    assert last_line(out) == (
        f'error: server.{key} in fed.toml is empty (""); give a folder, or leave it out'
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fed.toml"]


def test_an_empty_runs_dir_of_a_project_is_refused() -> None:
    # It was taken relative to the project: its own folder held the runs' folders.
    assert covey("new", "fed")[0] == 0
    code, out = covey("run", "fed", "--set", "runs-dir=''")
    assert code == 2, out
    assert last_line(out).startswith("error: runs-dir = '' ([tool.covey] in ")
    assert "give a folder" in last_line(out)
    # A federation's run-dir = "" was refused already, as no path.
    code, out = covey("run", "fed", "--federation", "local", "--set", "run-dir=''")
    assert code == 2, out
    assert last_line(out).startswith("error: run-dir = '' ([tool.covey.federations.local]")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["runs", "list", "--dir", ""],
            'error: --dir is empty (""); give a folder, or leave it out',
        ),
        (["runs", "list", ""], 'error: FOLDER is empty (""); give a folder, or leave it out'),
        (
            ["runs", "show", ""],
            'error: RUN is empty (""); give a run folder, or a run\'s name under --dir',
        ),
    ],
)
def test_an_empty_runs_folder_is_refused_by_name(args: list[str], said: str) -> None:
    # The current folder was read as the folder of runs (or as the run).
    code, out = covey(*args)
    assert code == 2, out
    assert last_line(out) == said


def test_the_dashboard_refuses_an_empty_runs_folder() -> None:
    # (An empty --host too, which the old code refused at once instead of serving ".".)
    code, out = covey("dashboard", "", "--host", "")
    assert code == 2, out
    assert 'empty (""); give a folder of runs, or leave RUNS_DIR out' in out


CLIENT = ["client", "--app", "digits_app:client_fn", "--cid", "0", "--server", "127.0.0.1:1"]
SITE = ["site", "--table", "t=t.csv", "--server", "127.0.0.1:1"]
QUERY = ["query", "SELECT COUNT(*) FROM t", "--server", "127.0.0.1:0"]


@pytest.mark.parametrize(
    ("args", "flag", "kind"),
    [
        (["certs", "init", "--dir", ""], "--dir", "folder"),
        (["certs", "issue", "alice", "-d", ""], "--dir", "folder"),
        (["certs", "list", "--dir", ""], "--dir", "folder"),
        (["server", "--app", "digits_app:server_app", "--certs", ""], "--certs", "folder"),
        ([*CLIENT, "--certs", "", "--name", "a"], "--certs", "folder"),
        ([*SITE, "--certs", "", "--name", "a"], "--certs", "folder"),
        ([*QUERY, "--certs", ""], "--certs", "folder"),
        (["run", "--resume", ""], "--resume", "folder"),
        ([*SERVER, "--config", ""], "--config", "file"),
        ([*CLIENT, "--config", ""], "--config", "file"),
        ([*SERVER, "--port-file", ""], "--port-file", "file"),
        ([*QUERY, "--insecure", "--port-file", ""], "--port-file", "file"),
        ([*QUERY, "--insecure", "--json", ""], "--json", "file"),
        ([*CLIENT, "--ca", "", "--cert", "c.pem", "--key", "c.key"], "--ca", "file"),
        ([*SITE, "--insecure", "--ledger", ""], "--ledger", "file"),
        ([*SITE, "--insecure", "--policy", ""], "--policy", "file"),
        (["demo", "--rounds", "0", "--no-plot", "--out", ""], "--out", "file"),
    ],
)
def test_an_empty_file_or_federation_folder_is_refused_by_name(
    tmp_path: Path, args: list[str], flag: str, kind: str
) -> None:
    # Path("") is ".": `covey certs init --dir ""` wrote the CA's key into the current folder,
    # `--certs ""` said to make a federation there, `--config ""` named a folder `.` never
    # given, and `covey site --ledger ""` said only "PosixPath('.') has an empty name".
    (tmp_path / "t.csv").write_text("a\n1\n")
    code, out = covey(*args)
    assert code == 2, out
    assert last_line(out) == f'error: {flag} is empty (""); give a {kind}, or leave it out'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


@pytest.mark.parametrize(
    ("section", "key", "kind"),
    [
        ("server", "certs", "folder"),
        ("server", "port_file", "file"),
        ("client", "certs", "folder"),
        ("client", "ca", "file"),
        ("client", "key", "file"),
    ],
)
def test_an_empty_file_or_federation_folder_in_a_config_file_is_refused_by_its_key(
    tmp_path: Path, section: str, key: str, kind: str
) -> None:
    # certs = "" said `. is not a federation folder ...; make one with covey certs init --dir .`,
    # port_file = "" that `.` is a folder, ca = "" that "the CA certificate " could not be read.
    app = "digits_app:server_app" if section == "server" else "digits_app:client_fn"
    more = 'cid = 0\nserver = "127.0.0.1:1"\n' if section == "client" else ""
    more += "insecure = true\n" if key == "port_file" else ""
    (tmp_path / "fed.toml").write_text(f'[{section}]\napp = "{app}"\n{more}{key} = ""\n')
    code, out = covey(section, "--config", "fed.toml")
    assert code == 2, out
    assert last_line(out) == (
        f'error: {section}.{key} in fed.toml is empty (""); give a {kind}, or leave it out'
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fed.toml"]
