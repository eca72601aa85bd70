"""The commands printed to resume a run repeat the tracker flags it was given.

A resume pasted without ``--tensorboard`` or ``--mlflow`` logged nowhere.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from covey.cli import app

TRACKERS = [
    "--tensorboard",
    "tb logs/run 1",
    "--mlflow",
    "ml runs",
    "--mlflow-experiment",
    "my exp",
]
"""Tracker flags with values a shell would split if pasted unquoted."""


def _words_after(command: str, start: str) -> list[str]:
    words = shlex.split(command)
    return words[words.index(start) :]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project made by ``covey new`` in ``tmp_path``, the current folder."""
    monkeypatch.chdir(tmp_path)
    made = CliRunner().invoke(app, ["new", "demo"])
    assert made.exit_code == 0, made.output
    monkeypatch.syspath_prepend(str(tmp_path / "demo"))
    return tmp_path / "demo"


def test_a_served_project_s_resume_command_repeats_the_tracker_flags(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.deploy import _cli
    from covey.server._served import project_command

    seen: dict[str, Any] = {}
    monkeypatch.setattr(_cli, "_serve", lambda server_app, s, flags: seen.update(flags))
    given = ["run", "demo", "--federation", "local", "--set", "round-timeout=30", *TRACKERS]
    result = CliRunner().invoke(app, given)
    assert result.exit_code == 0, result.output
    hint = seen["resume_hint"]
    assert _words_after(hint, "--set") == ["--set", "round-timeout=30", *TRACKERS]
    # The run folder keeps them too, for `covey runs` and the dashboard, as absolute folders.
    kept = project_command(seen["run"])
    assert kept is not None
    words = _words_after(kept, "--tensorboard")
    assert words == [
        *("--tensorboard", str(Path("tb logs/run 1").resolve())),
        *("--mlflow", str(Path("ml runs").resolve())),
        *("--mlflow-experiment", "my exp"),
    ]
    # Without tracker flags, none are repeated (the table's own are read again).
    seen.clear()
    result = CliRunner().invoke(app, ["run", "demo", "--federation", "local"])
    assert result.exit_code == 0, result.output
    assert "--tensorboard" not in seen["resume_hint"]
    assert "--mlflow" not in (project_command(seen["run"]) or "--mlflow")


def test_a_served_run_of_an_older_covey_is_continued_without_trackers(tmp_path: Path) -> None:
    from covey.server._served import FEDERATION_FILE, project_command

    (tmp_path / FEDERATION_FILE).write_text('{"project": "/p", "federation": "f", "set": []}')
    assert project_command(tmp_path) == f"covey run /p --federation f --resume {tmp_path}"
    (tmp_path / FEDERATION_FILE).write_text(
        '{"project": "/p", "federation": "f", "set": [], "trackers": {"tensorboard": 3}}'
    )
    assert project_command(tmp_path) is None  # damaged: the generic hint is given


def test_covey_server_s_resume_command_repeats_the_tracker_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.deploy import _cli

    seen: dict[str, Any] = {}
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    monkeypatch.setattr(_cli, "_serve", lambda server_app, s, flags: seen.update(flags))
    given = ["server", "--app", "tiny_app:server_app", "--insecure", "--run-dir", "run"]
    result = CliRunner().invoke(app, [*given, *TRACKERS])
    assert result.exit_code == 0, result.output
    assert _words_after(seen["resume_hint"], "--tensorboard") == TRACKERS


def test_an_interrupted_simulation_s_resume_command_repeats_the_tracker_flags(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import covey
    from covey.cli import _project_sim
    from covey.deploy._cli_trackers import Trackers

    def interrupted(*args: object, **kwargs: Any) -> None:
        kwargs["run_dir"].mkdir(parents=True, exist_ok=True)
        raise KeyboardInterrupt

    opened: list[dict[str, Any]] = []

    def no_trackers(flags: dict[str, Any], refused: Any = None) -> Trackers:
        opened.append(flags)  # TensorBoard and MLflow are not needed to print the command
        return Trackers([], flags["run"], None)

    monkeypatch.setattr(covey, "simulate", interrupted)
    monkeypatch.setattr(_project_sim, "open_trackers", no_trackers)
    monkeypatch.setenv("COLUMNS", "400")
    result = CliRunner().invoke(app, ["run", "demo", *TRACKERS])
    assert result.exit_code == 130, result.output
    assert opened[0]["trackers"]["tensorboard"] == "tb logs/run 1"
    said = " ".join(result.output.split("\n"))
    command = said[said.index("`covey run") + 1 :]
    command = command[: command.index("`")]
    assert _words_after(command, "--tensorboard") == TRACKERS
    assert shlex.split(command)[:4] == ["covey", "run", str(project), "--resume"]
