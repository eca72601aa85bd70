"""Differential privacy: accounted DP-FedAvg, adaptive clipping, local DP, DP-SGD, DP-FTRL.

Accounting is Google's ``dp-accounting`` (RDP by default, PLD on request):
:func:`epsilon` and :func:`calibrate` answer the usual questions; a DP strategy
(:func:`central`, :func:`dp_ftrl`) keeps one ledger of its events, records the
budget spent in every round (``RoundRecord.privacy``), stops before a round that
would exceed ``target_epsilon`` and prints a privacy statement at the end.
See ``docs/privacy.md``.
"""

from covey.privacy._accounting import Ledger, calibrate, epsilon, event_from_json, event_to_json
from covey.privacy._central import PrivacyHook, central
from covey.privacy._clipping import AdaptiveClipping
from covey.privacy._dpsgd import DPSGD
from covey.privacy._ftrl import dp_ftrl
from covey.privacy._local import ClipUpdates, LocalDP, analytic_gaussian_sigma
from covey.privacy._sampling import poisson_selector
from covey.privacy._step import ClippedSum

__all__ = [
    "DPSGD",
    "AdaptiveClipping",
    "ClipUpdates",
    "ClippedSum",
    "Ledger",
    "LocalDP",
    "PrivacyHook",
    "analytic_gaussian_sigma",
    "calibrate",
    "central",
    "dp_ftrl",
    "epsilon",
    "event_from_json",
    "event_to_json",
    "poisson_selector",
]
