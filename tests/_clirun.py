"""The ``covey`` command run in-process from a scratch folder, as the CLI tests call it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from covey.cli import app

APPS = Path(__file__).parent / "apps"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in ``tmp_path``, the test apps importable, lines wide enough to read whole."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(APPS))
    monkeypatch.setenv("COLUMNS", "250")


def covey(*args: str) -> tuple[int, str]:
    """The exit code and output of ``covey ARGS``."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]
