"""A command's help that stays readable on a terminal narrower than 80 columns.

rich lays a command's options out as a table in a box; below 80 columns it has
no room for the table's columns and cuts option names to fit (``--round-time…``
for ``--round-timeout``). There a command's help is click's plain text instead,
which wraps each option's description beside its name and never cuts a name.
From 80 columns on, the help is rich's as before. Every ``covey`` command is
built with :class:`HelpCommand` (``app.command(..., cls=HelpCommand)``). A
group's help stays rich's at any width: its few options fit, and rich wraps its
commands' descriptions where click's plain text would cut them short.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from typer.core import TyperCommand

__all__ = ["NARROW", "HelpCommand", "width"]

#: Terminals narrower than this many columns get plain help.
NARROW = 80


def width() -> int:
    """The columns of the terminal the help goes to, as rich finds them.

    ``COLUMNS`` if set, else the terminal's (80 when the output is no terminal,
    a file or a pipe).
    """
    return Console().width


class HelpCommand(TyperCommand):
    """A command whose help is plain text on a narrow terminal (see the module)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The command's help, laid out for the terminal's width."""
        mode, columns = self.rich_markup_mode, width()
        if mode is None or columns >= NARROW:
            super().format_help(ctx, formatter)
            return
        # typer's plain help, click's, wrapped to the width rich found (a margin of 2);
        # a bracket escaped from rich's markup (``\\[policy]``) is shown as a bracket.
        escaped = [p for p in self.params if "\\[" in (getattr(p, "help", None) or "")]
        helps = [p.help for p in escaped]  # type: ignore[attr-defined]
        self.rich_markup_mode, formatter.width = None, max(columns - 2, 30)
        try:
            for param in escaped:
                param.help = param.help.replace("\\[", "[")  # type: ignore[attr-defined]
            super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = mode
            for param, text in zip(escaped, helps, strict=True):
                param.help = text  # type: ignore[attr-defined]
