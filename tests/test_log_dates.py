"""The time a served run's lines begin with: the time of day on a terminal, dated elsewhere."""

from __future__ import annotations

import io
import re

from rich.console import Console

from _procs import DATED_STAMP, undated
from covey.deploy._console import ServerConsole
from covey.deploy._shown import stamped

TIME_ONLY = r"\d\d:\d\d:\d\d "


def test_a_line_on_a_terminal_keeps_the_short_time() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True)
    line = stamped("done", terminal)
    assert re.fullmatch(r"\[dim\]\d\d:\d\d:\d\d\[/\] done", line), line


def test_a_line_to_a_file_or_a_pipe_is_dated() -> None:
    piped = Console(file=io.StringIO(), force_terminal=False)
    line = stamped("done", piped)
    assert re.fullmatch(r"\[dim\]\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4}\[/\] done", line), line


def test_the_server_console_dates_its_lines_when_told() -> None:
    lines: list[str] = []
    ServerConsole(lines.append, 1, {}, dated=True).line("listening")
    ServerConsole(lines.append, 1, {}).line("listening")
    plain = [re.sub(r"\[(?:dim|/)\]", "", line) for line in lines]
    assert re.fullmatch(DATED_STAMP + "listening", plain[0]), plain
    assert re.fullmatch(TIME_ONLY + "listening", plain[1]), plain


def test_undated_strips_either_form() -> None:
    text = "2026-12-07 23:59:59+0100 round 1\n00:00:01 round 2\nround 3 at 10:00:00\n"
    assert undated(text) == "round 1\nround 2\nround 3 at 10:00:00\n"
