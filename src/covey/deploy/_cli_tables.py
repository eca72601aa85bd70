"""Command-line output: whole lines and tables when piped, folded rather than cut in a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from covey.deploy._shown import BriefHighlighter

__all__ = ["TEXT_FLOOR", "output_console", "print_table"]


#: The narrowest a folded text column (a run's name, its kind) gets in a narrow terminal.
TEXT_FLOOR = 12


def output_console(*, stderr: bool = False, highlight: bool = True) -> Console:
    """A console for a command's output: word-wrapped in a terminal, whole lines when piped.

    Piped to a file, a log or another program, a line is never cut at 80
    columns (a path or a command split in two cannot be pasted or grepped).

    Args:
        stderr: Write to standard error rather than standard output.
        highlight: Let rich colour numbers and paths.
    """
    # names are no :emoji:; a long line (a client's error) is not coloured (see BriefHighlighter)
    out = Console(stderr=stderr, highlight=highlight, emoji=False, highlighter=BriefHighlighter())
    out.soft_wrap = not out.is_terminal
    return out


def print_table(table: Table, out: Console | None = None) -> None:
    """Print ``table`` without ever cutting a figure short (``0.3…``).

    Piped output gets the table at its full width. In a terminal too narrow for
    it, the text columns (those not ``no_wrap``) fold down to :data:`TEXT_FLOOR`
    characters; if it is still too narrow, the lines run past its edge and the
    terminal wraps them, rather than any number being cut.

    Args:
        table: A rich table whose number columns are ``no_wrap``.
        out: The console to print on (default: standard output).
    """
    out = out or Console()
    wide = out.options.update_width(1 << 14)
    width = Measurement.get(out, wide, table).maximum
    if out.is_terminal:
        for column in table.columns:
            if not column.no_wrap:
                cells = [column.header, *column.cells]
                widest = max(Measurement.get(out, wide, cell).maximum for cell in cells)
                width -= max(0, widest - TEXT_FLOOR)
    if width <= out.width:
        out.print(table)
        return
    # Console.print never goes wider than the console: a console of the width needed does.
    # rich holds a dumb terminal (TERM=dumb) to 80 columns whatever width it is given, so
    # one is written to as a plain file: it shows no escape codes either way.
    Console(
        file=out.file,
        width=width,
        color_system=out.color_system,  # type: ignore[arg-type]
        force_terminal=out.is_terminal and not out.is_dumb_terminal,
        no_color=out.no_color,
        legacy_windows=out.legacy_windows,
        emoji=False,
    ).print(table)
