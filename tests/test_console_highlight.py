"""A client's long text is printed plain: rich's colouring takes time growing with its square.

A server printed each failing client's error (up to 16 KiB) on its console and in
its log, coloured by rich: 16 Ki digits took 24 s, and the round loop (with the
heartbeats of every client) waited meanwhile.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from covey.deploy._cli import console as server_console
from covey.deploy._cli_logs import setup_logging
from covey.deploy._cli_tables import output_console
from covey.deploy._shown import HIGHLIGHTED

LONG = "client 1 failed in fit: " + "1" * 2000


def _coloured(highlighter: Callable[[Text], Text], line: str) -> bool:
    return bool(highlighter(Text(line)).spans)


def test_the_command_consoles_colour_short_lines_only() -> None:
    for console in (server_console, output_console()):
        assert _coloured(console.highlighter, "round 3: took fit 0.50 s")
        assert not _coloured(console.highlighter, LONG)
        assert not _coloured(console.highlighter, "1" * (HIGHLIGHTED + 1))


def test_the_server_log_in_a_terminal_colours_short_records_only() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("covey").level)
    try:
        setup_logging(Console(file=io.StringIO(), force_terminal=True), verbose=False)
        (handler,) = root.handlers
        assert isinstance(handler, RichHandler)
        assert handler.highlighter is not None
        assert _coloured(handler.highlighter, "round 3 took 0.5 s")
        assert not _coloured(handler.highlighter, LONG)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("covey").setLevel(saved[2])
