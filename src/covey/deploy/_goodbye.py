"""What a served run that stopped tells its clients, and records as the reason it stopped."""

from __future__ import annotations

import traceback
from typing import Final

from covey.core._interrupt import interrupt_in
from covey.server._base import FederationError
from covey.server._firstline import first_line as _first_line
from covey.transport.grpc._attempt import INTERRUPTED

__all__ = ["STOPPED", "describe", "goodbye_of", "reason_of"]

STOPPED: Final = "the run stopped: "
"""How the goodbye of a run that did not end normally begins (clients exit non-zero on it).

:data:`~covey.transport.grpc._attempt.INTERRUPTED`, a server stopped, is the exception:
its clients reconnect, for their ``retry_for``, to the server that resumes the run.
"""


def goodbye_of(exc: BaseException) -> str:
    """What the clients are told when the run stops on ``exc`` (no traceback leaves the server)."""
    if isinstance(exc, FederationError):
        lines = str(exc).strip().splitlines() or ["the run failed"]
        return f"{STOPPED}{lines[0][:300]}"
    if interrupt_in(exc) is not None:  # an error Ctrl-C caused (an ImportError, say) too
        return INTERRUPTED  # clients reconnect: the run is resumed, as a rule
    return f"{STOPPED}the server failed ({type(exc).__name__})"


def describe(exc: BaseException) -> str:
    """The reason a run stopped, with the traceback of an unexpected error."""
    if isinstance(exc, FederationError) and exc.history.stopped_reason:
        return exc.history.stopped_reason
    interrupt = interrupt_in(exc)  # KeyboardInterrupt("SIGTERM"): see covey server
    if interrupt is not None:  # or an error it caused (as a module imported, say)
        return f"interrupted ({interrupt.args[0] if interrupt.args else 'SIGINT'})"
    return "".join(traceback.format_exception(exc))


def reason_of(exc: BaseException) -> str:
    """The one line a run records for ``exc``, with the notes covey added (who raised it)."""
    line = _first_line(describe(exc))
    if isinstance(exc, FederationError) or interrupt_in(exc) is not None:
        return line
    notes = [n for n in getattr(exc, "__notes__", ()) if isinstance(n, str) and n.strip()]
    return line + "".join(f" ({' '.join(note.split())})" for note in notes)
