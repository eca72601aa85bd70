"""What a round says at its end of the failures it did not log one by one.

A fleet of hundreds of clients dropping out would log a line each: the first
:data:`MOST_LOGGED` of a stage are logged, one line at the round's end counts
the rest. The clients that did not report their properties are also counted in
the round's record, as ``aggregate_info["unreported"]``: under ``where=`` they
were left out of the round's sample (not asked to train, so in neither
``fit_participants`` nor ``fit_failures``), and are asked again the next round.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from covey.core._text import clients

logger = logging.getLogger("covey")

MOST_LOGGED = 10
"""Failures of one stage of a round logged one by one; one line at the round's end counts
the rest (a fleet of hundreds of clients dropping out would log a line each)."""

PROPERTIES = "properties"
"""The stage counted in ``_LoopBase._logged`` for clients that did not report their properties."""

UNREPORTED = "unreported"
"""The ``aggregate_info`` entry counting a round's clients that did not report their properties."""


def note_unreported(record: Any, logged: Mapping[str, int]) -> None:
    """Count in ``record.aggregate_info`` the clients that did not report their properties."""
    count = logged.get(PROPERTIES, 0)
    if count:
        record.aggregate_info[UNREPORTED] = count


def said_at_end(step: str, record: Any, logged: Mapping[str, int], last_error: str) -> None:
    """Log how many failures of each stage of ``logged`` went unlogged; note the unreported.

    ``last_error``: why the last client not named in the log failed to report its properties.
    """
    note_unreported(record, logged)
    for stage, count in logged.items():
        more = clients(count - MOST_LOGGED).replace(" ", " more ", 1)  # "3 more clients"
        if count > MOST_LOGGED and stage == PROPERTIES:
            logger.warning(
                "%s %d: %s did not report %s properties; the last: %s",
                *(step, record.round, more, "its" if count == MOST_LOGGED + 1 else "their"),
                last_error,
            )
        elif count > MOST_LOGGED:
            logger.warning(
                "%s %d: %s failed in %s; every failure is in the history",
                *(step, record.round, more, stage),
            )
