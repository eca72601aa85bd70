"""What a run's round numbers count, read from the settings it keeps.

A synchronous run counts rounds; an asynchronous one (FedBuff) counts global
updates. The run's settings (``history.json``'s ``config``, ``run.sqlite``'s)
say which: an asynchronous strategy records its ``buffer_size`` among its options.

Example:
    >>> step_of_settings({"strategy": {"name": "FedBuff", "options": {"buffer_size": 4}}})
    'update'
    >>> step_of_settings({"strategy": "FedAvg"})
    'round'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["STOPPED_IN", "last_finished_step", "step_of_settings"]

STOPPED_IN = re.compile(r"(round|update) (\d+):")
"""How a run stopped by an error in a round begins its reason: ``round 3: ...``."""


def step_of_settings(config: Mapping[str, Any]) -> str:
    """``"update"`` if the run with these settings is asynchronous, else ``"round"``."""
    strategy = config.get("strategy")
    options = strategy.get("options") if isinstance(strategy, Mapping) else None
    asynchronous = isinstance(options, Mapping) and options.get("buffer_size") is not None
    return "update" if asynchronous else "round"


def last_finished_step(steps: Sequence[int], stopped_reason: object) -> int | None:
    """The last of a run's round (or update) numbers ``steps`` that finished; None if none.

    A run stopped by an error in round r keeps that round's record (its failures)
    and says so at the start of its ``stopped_reason`` (``round r: ...``): that
    round did not finish.

    Example:
        >>> last_finished_step([0, 1, 2], "round 2: the test set is gone")
        1
        >>> last_finished_step([0, 1, 2], None)
        2
    """
    done = list(steps)
    stopped = STOPPED_IN.match(stopped_reason) if isinstance(stopped_reason, str) else None
    if done and stopped is not None and done[-1] == int(stopped.group(2)):
        done.pop()
    return done[-1] if done else None
