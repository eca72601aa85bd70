"""Aggregation as composable pure steps: ``chain(clip_norm(1.0), weighted_mean(), ...)``."""

from covey.aggregate._base import (
    Aggregate,
    AggregationError,
    Begin,
    Contribution,
    End,
    Event,
    Step,
    chain,
    run_round,
)
from covey.aggregate._mean import mean, weighted_mean

__all__ = [
    "Aggregate",
    "AggregationError",
    "Begin",
    "Contribution",
    "End",
    "Event",
    "Step",
    "chain",
    "mean",
    "run_round",
    "weighted_mean",
]
