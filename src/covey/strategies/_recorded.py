"""Hyperparameters a preset records that runs of an older covey did not, and what they did then.

A resumed run is refused when a hyperparameter it recorded differs (see
``covey.server._resume.strategy_changes``). A setting a run of an older covey
did not record cannot be compared: such a run resumes whatever the setting is
now, and the resume warns naming it, with what the run did before. An older
covey may also have recorded a preset's aggregator by another text (its
function's name, where covey records its call now): such a run resumes too.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["described_since", "formerly_described", "recorded_since", "unrecorded_before"]

_LATER: dict[str, dict[str, str]] = {}
_FORMER: dict[str, dict[str, str]] = {}


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


def described_since(strategy: str, before: str, step: str) -> None:
    """Declare that runs of an older covey recorded the aggregator ``step`` as ``before``.

    ``strategy`` is the preset's name (``Strategy.name``), ``step`` its step's
    (``"bagging"``), ``before`` the text such runs recorded.

    Such a run resumes with the preset's ``step`` (recorded now by its call,
    ``step(...)``, whose settings are compared as its hyperparameters), not with
    another aggregator.
    """
    _FORMER.setdefault(strategy, {})[before] = step


def formerly_described(strategy: str) -> Mapping[str, str]:
    """The aggregators of ``strategy`` runs of an older covey recorded: ``{text: step}``."""
    return dict(_FORMER.get(strategy, {}))
