"""Paths as users write them: ``~`` in settings files, folders starting with a dash."""

from __future__ import annotations

from pathlib import Path

import pytest

from _clirun import covey, in_tmp  # noqa: F401 - in_tmp is a fixture
from _deeppath import deep_folder
from covey.cli._project import ProjectSettings
from covey.cli._runsdir import project_runs
from covey.deploy._cli import SERVER_KEYS
from covey.deploy._cli_client import CLIENT_KEYS
from covey.deploy._cli_errors import read_settings
from covey.server._rundb import DB_NAME, RunDB

PYPROJECT = """\
[tool.covey]
server-app = "app.server:make_server"
client-app = "app.client:make_client"
runs-dir = "~/experiments"
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.setenv("USERPROFILE", str(folder))  # Windows
    return folder


def test_a_projects_runs_dir_under_the_home_folder_is_not_a_folder_named_tilde(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # runs-dir = "~/experiments" (or --set runs-dir=~/x, which no shell expands) made a
    # folder named "~" in the project, which `rm -rf ~` then cleans up.
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    settings = ProjectSettings(project, [], None)
    assert settings.path(settings.run["runs_dir"]) == home / "experiments"
    assert settings.path("runs") == project / "runs"  # relative: the project's
    again = ProjectSettings(project, ["runs-dir=~/other"], None)
    assert again.path(again.run["runs_dir"]) == home / "other"
    monkeypatch.chdir(project)
    assert project_runs(Path("runs")) == home / "experiments"  # covey runs list looks there


@pytest.mark.parametrize("section", ["server", "client"])
def test_config_file_paths_under_the_home_folder_are_read_as_a_shell_would(
    tmp_path: Path, home: Path, section: str
) -> None:
    config = tmp_path / "fed.toml"
    server = ["run_dir", "port_file", "tensorboard", "mlflow"]
    keys = ["certs"] + (server if section == "server" else ["ca", "key"])
    config.write_text(f"[{section}]\n" + "".join(f'{k} = "~/{k}"\n' for k in keys))
    settings = read_settings(config, section, SERVER_KEYS if section == "server" else CLIENT_KEYS)
    for key in keys:
        assert Path(settings[key]) == home / key


def test_a_projects_tracker_folders_are_read_as_its_other_paths(tmp_path: Path, home: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    trackers = 'tensorboard = "~/tb"\nmlflow = "mlruns"\nmlflow-experiment = "~x"\n'
    (project / "pyproject.toml").write_text(PYPROJECT + trackers)
    settings = ProjectSettings(project, [], None)
    settings.take_trackers((None, None, None), None)
    given = settings.trackers["trackers"]
    assert given == {
        "tensorboard": str(home / "tb"),
        "mlflow": str(project / "mlruns"),  # relative: the project's
        "mlflow_experiment": "~x",  # a name, not a path
    }
    again = ProjectSettings(project, ["mlflow=file:./mlruns"], None)
    again.take_trackers((None, None, None), None)
    assert again.trackers["trackers"]["mlflow"] == "file:./mlruns"  # a URI, as it is
    settings.take_trackers(("tb", None, None), None)  # the command line's, as the shell gave it
    assert settings.trackers["trackers"]["tensorboard"] == "tb"
    assert settings.trackers["tracker_names"]["tensorboard"] == "--tensorboard"


def test_config_file_names_without_a_tilde_are_kept_as_written(tmp_path: Path) -> None:
    config = tmp_path / "fed.toml"
    config.write_text('[server]\ncerts = "fed ~x/é 中文"\n')
    settings = read_settings(config, "server", SERVER_KEYS)
    assert settings["certs"] == "fed ~x/é 中文"


@pytest.mark.usefixtures("in_tmp")
def test_new_prints_a_cd_that_a_folder_starting_with_a_dash_does_not_break() -> None:
    # `covey new proj --dir -x` printed `cd -x/proj`, which cd reads as its option -x.
    code, out = covey("new", "proj", "--dir", "-x y")
    assert code == 0, out
    assert "next: cd './-x y/proj' && covey run" in out
    assert (Path("-x y") / "proj" / "pyproject.toml").is_file()
    code, out = covey("new", "other", "--dir", "x")
    assert code == 0, out
    assert "next: cd x/other && covey run" in out


def test_a_run_folder_too_deep_for_sqlite_is_refused_saying_so(tmp_path: Path) -> None:
    # SQLite said only "unable to open database file" of a run folder ~480 bytes deep,
    # though every folder on the way was there and writable.
    deep = deep_folder(tmp_path / "a", 500)
    with pytest.raises(OSError, match=r"512 bytes or more.*500 bytes.*choose a shorter one"):
        RunDB.create(deep, "{}", "0.0.0")
    assert list(deep.iterdir()) == []  # no temporary file left
    near = deep_folder(tmp_path / "b", 400)
    RunDB.create(near, "{}", "0.0.0")
    assert (near / DB_NAME).is_file()
