"""Every command's help names each of its options in full on a 60-column terminal.

rich's boxed help cut option names to fit below 80 columns (``--round-time…``
for ``--round-timeout``, ``--no-insec…``); there a command's help is plain text now.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from covey.cli import app


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _help(path: tuple[str, ...], columns: int) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda path: " ".join(path) or "covey")
def test_help_names_every_option_in_full_at_60_columns(path: tuple[str, ...]) -> None:
    shown = _help(path, 60)
    names = [
        name
        for param in COMMANDS[path].params
        for name in ("--help", *param.opts, *param.secondary_opts)
        if name.startswith("-")
    ]
    assert [name for name in names if name not in shown] == []
    assert "…" not in shown
    assert max(len(line) for line in shown.splitlines()) <= 60


def test_help_keeps_its_boxes_on_a_wide_terminal() -> None:
    assert "╭─ Options" in _help(("server",), 120)
    assert "╭─ Options" not in _help(("server",), 60)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "covey")
def test_usage_brackets_an_optional_argument_once(path: tuple[str, ...]) -> None:
    # `covey runs list` gave its metavar with brackets, which the usage line adds:
    # "Usage: covey runs list [OPTIONS] [[FOLDER]]".
    usage = next(line for line in _help(path, 100).splitlines() if "Usage:" in line)
    assert "[[" not in usage, usage
