"""What a log record says of itself to the command line that writes it."""

from __future__ import annotations

from typing import Final

__all__ = ["ON_CONSOLE", "ON_CONSOLE_KEY"]

ON_CONSOLE_KEY: Final = "covey_on_console"
"""The record attribute that marks a record :data:`ON_CONSOLE`."""

ON_CONSOLE: Final = {ON_CONSOLE_KEY: True}
"""``extra=`` of a record the ``covey server`` console writes a line of itself (the
server listening, a client joining or leaving): that command leaves the record out, a
program serving with :func:`covey.serve` logs it as any other."""
