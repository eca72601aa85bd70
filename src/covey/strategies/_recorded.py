"""Hyperparameters a preset records that runs of an older covey did not, and what they did then.

A resumed run is refused when a hyperparameter it recorded differs (see
``covey.server._resume.strategy_changes``). A setting a run of an older covey
did not record cannot be compared: such a run resumes whatever the setting is
now, and the resume warns naming it, with what the run did before.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["recorded_since", "unrecorded_before"]

_LATER: dict[str, dict[str, str]] = {}


def recorded_since(strategy: str, key: str, before: str) -> None:
    """Declare that the preset named ``strategy`` records ``key``, which older runs did not.

    Args:
        strategy: The preset's name (``Strategy.name``), e.g. ``"XGBoostBagging"``.
        key: The hyperparameter.
        before: What a run that recorded no ``key`` did, and how to resume it so.
    """
    _LATER.setdefault(strategy, {})[key] = before


def unrecorded_before(strategy: str) -> Mapping[str, str]:
    """The hyperparameters of ``strategy`` older runs did not record, each with what they did."""
    return dict(_LATER.get(strategy, {}))
