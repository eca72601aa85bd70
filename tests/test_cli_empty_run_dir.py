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
