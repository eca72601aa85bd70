"""The ``covey`` command line.

This module loads nothing heavy: the ``covey`` command imports it first, and
Ctrl-C as the commands load (typer, rich and covey's own, about a second on a
busy machine) must end the command with status 130 and no traceback, as the
documentation says. The commands themselves are in ``covey.cli._app``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from covey.cli._app import app as app


def main() -> None:
    """Entry point of the ``covey`` command.

    An unexpected error ends in one line (exit code 1), with the notes covey added
    to it (the function that raised it, its client and round); its traceback is
    shown only with ``-v``/``--verbose``. An optional library that is missing ends in
    one line naming the extra that installs it (``pip install 'covey[analytics]'``).
    A mistake on the command line ends in one ``error:`` line (exit code 2).
    Ctrl-C ends it with exit code 130 and no traceback, even before a command runs
    (as the commands load, or as the command line is built); a command that has
    work to keep says what it kept.

    gRPC's own log lines (``I1207 13:21:04.391165 ... Handshake failed ...``, which
    gRPC writes to standard error at INFO before anything configures its log) are
    left out unless ``GRPC_VERBOSITY`` is set: covey's own line names each such
    failure, dated, and says what to do.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before gRPC is first imported
    try:
        from covey.cli import _app
    except KeyboardInterrupt:  # as the commands load: no traceback
        raise SystemExit(130) from None
    _app.main()


def _load(name: str) -> Any:
    """``app``, the typer application (for ``typer.testing.CliRunner``), loaded on first use."""
    if name == "app":
        from covey.cli._app import app as app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not TYPE_CHECKING:  # type checkers see the imports above: a misspelt name is an error
    __getattr__ = _load
