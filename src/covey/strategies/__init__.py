"""Strategies: which clients take part, what they are told, and how their replies combine.

A :class:`Strategy` is data plus one aggregation step; the presets (FedAvg,
FedProx, FedAdam, Krum, ...) are short functions that fill one in.
"""

from covey.strategies._clients import ClientConfigFn, ClientInfo
from covey.strategies._fedbuff import FedBuff
from covey.strategies._fitround import FitOutcome, FitRound
from covey.strategies._metrics import MetricsFn, weighted_metrics
from covey.strategies._options import StrategyOptions
from covey.strategies._presets import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedRFA,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Scaffold,
)
from covey.strategies._strategy import ConfigFn, Selector, Strategy, Where

__all__ = [
    "Bulyan",
    "ClientConfigFn",
    "ClientInfo",
    "ConfigFn",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedMedian",
    "FedProx",
    "FedRFA",
    "FedTrimmedAvg",
    "FedYogi",
    "FitOutcome",
    "FitRound",
    "Krum",
    "MetricsFn",
    "MultiKrum",
    "QFedAvg",
    "Scaffold",
    "Selector",
    "Strategy",
    "StrategyOptions",
    "Where",
    "weighted_metrics",
]
