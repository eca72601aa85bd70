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

from collections.abc import Mapping
from typing import Any

__all__ = ["step_of_settings"]


def step_of_settings(config: Mapping[str, Any]) -> str:
    """``"update"`` if the run with these settings is asynchronous, else ``"round"``."""
    strategy = config.get("strategy")
    options = strategy.get("options") if isinstance(strategy, Mapping) else None
    asynchronous = isinstance(options, Mapping) and options.get("buffer_size") is not None
    return "update" if asynchronous else "round"
