"""Aggregation as composable pure steps: ``chain(clip_norm(1.0), weighted_mean(), ...)``.

Reducers combine a round's contributions into one ``Aggregate``: ``weighted_mean``
(FedAvg), ``mean``, ``median``, ``trimmed_mean``, ``krum``, ``multi_krum``,
``bulyan``, ``geometric_median`` and ``qfedavg``; ``reducer(fn)`` makes one from
a function of the whole round (like Flower's ``aggregate_fit``). Per-client steps
come before a reducer: ``clip_norm``, ``skip_nonfinite``, ``staleness_weight`` and ``scaffold``.
Server optimizers come after it: ``server_sgd``, ``server_adam``, ``server_yogi``
and ``server_adagrad``.
"""

from covey.aggregate._base import (
    Aggregate,
    AggregationError,
    Begin,
    Broadcast,
    Contribution,
    Dropped,
    End,
    Event,
    Step,
)
from covey.aggregate._chain import chain, run_round
from covey.aggregate._clip import (
    clip_norm,
    polynomial_staleness,
    skip_nonfinite,
    staleness_weight,
)
from covey.aggregate._function import reducer
from covey.aggregate._krum import bulyan, krum, multi_krum
from covey.aggregate._mean import mean, weighted_mean
from covey.aggregate._opt import server_adagrad, server_adam, server_sgd, server_yogi
from covey.aggregate._qfedavg import qfedavg
from covey.aggregate._robust import geometric_median, median, trimmed_mean
from covey.aggregate._scaffold import scaffold

__all__ = [
    "Aggregate",
    "AggregationError",
    "Begin",
    "Broadcast",
    "Contribution",
    "Dropped",
    "End",
    "Event",
    "Step",
    "bulyan",
    "chain",
    "clip_norm",
    "geometric_median",
    "krum",
    "mean",
    "median",
    "multi_krum",
    "polynomial_staleness",
    "qfedavg",
    "reducer",
    "run_round",
    "scaffold",
    "server_adagrad",
    "server_adam",
    "server_sgd",
    "server_yogi",
    "skip_nonfinite",
    "staleness_weight",
    "trimmed_mean",
    "weighted_mean",
]
