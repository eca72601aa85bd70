"""`covey runs show` of an unreadable run says why as `covey runs report` does, and exits 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covey import History
from covey.cli import app
from covey.core._history import RoundRecord


def _good(folder: Path) -> Path:
    folder.mkdir(parents=True)
    History([RoundRecord(0, central_loss=1.0), RoundRecord(1, [0, 1], fit_examples=2)]).save(
        folder / History.FILE_NAME
    )
    return folder


def test_runs_show_says_an_empty_run_database_is_empty_as_report_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: "run.sqlite cannot be read: no such table: run" in its status line.
    monkeypatch.setenv("COLUMNS", "400")
    folder = _good(tmp_path / "r")
    (folder / "run.sqlite").write_bytes(b"")
    said = f"{folder / 'run.sqlite'} is empty (0 bytes), not a covey run database"
    shown = CliRunner().invoke(app, ["runs", "show", str(folder)])
    assert said in "".join(shown.output.split("\n")), shown.output
    assert "no such table" not in shown.output
    report = CliRunner().invoke(app, ["runs", "report", str(folder), "-o", str(tmp_path / "x")])
    assert said in "".join(report.output.split("\n")), report.output


def _not_utf8(folder: Path) -> None:
    (folder / "run.json").write_bytes(b'{"status": "\xff\xfe"}')


def _cut(folder: Path) -> None:
    (folder / "run.json").write_text('{"status": "fini')


def _list(folder: Path) -> None:
    (folder / "run.json").write_text("[1]")


def _empty_store(folder: Path) -> None:
    (folder / "run.sqlite").write_bytes(b"")


def _garbage_store(folder: Path) -> None:
    (folder / "run.sqlite").write_bytes(b"garbage" * 100)


@pytest.mark.parametrize("damage", [_not_utf8, _cut, _list, _empty_store, _garbage_store])
def test_runs_show_of_an_unreadable_run_exits_2_as_report_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Callable[[Path], None]
) -> None:
    # Before: show printed the run as unreadable and exited 0; report exited 2.
    monkeypatch.setenv("COLUMNS", "400")
    folder = _good(tmp_path / "r")
    damage(folder)
    shown = CliRunner().invoke(app, ["runs", "show", str(folder)])
    assert shown.exit_code == 2, shown.output
    assert f"{folder}: unreadable" in shown.output
    report = CliRunner().invoke(app, ["runs", "report", str(folder), "-o", str(tmp_path / "x")])
    assert report.exit_code == 2, report.output
