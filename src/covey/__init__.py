"""covey: federated learning and federated analytics for Python.

Move the computation to the data: a server holds a global model, sends it to
clients, each client trains on data that never leaves it, and the server
combines what comes back.

The names here are what a user writes in a script. Everything else lives in
its layer: :mod:`covey.core` (weights, codec, messages, history),
:mod:`covey.aggregate` (aggregation steps), :mod:`covey.strategies`,
:mod:`covey.clients` (the task runtime and client helpers), :mod:`covey.transport`,
:mod:`covey.server` (round loops, run store), :mod:`covey.sim`, :mod:`covey.deploy` and
:mod:`covey.secagg` (secure aggregation; importing covey registers its task kinds).

Example:
    >>> import numpy as np, covey
    >>> class Client(covey.Client):
    ...     def fit(self, weights, config):
    ...         return covey.FitResult(delta={"w": np.ones(2)}, num_examples=5)
    >>> result = covey.simulate(lambda cid: Client(), num_clients=10, rounds=3,
    ...                         strategy=covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
    ...                         initial_weights={"w": np.zeros(2)})
    >>> result.weights["w"].tolist()
    [3.0, 3.0]
"""

from importlib.metadata import PackageNotFoundError, version

from covey import (
    aggregate,
    clients,
    core,
    data,
    deploy,
    models,
    privacy,
    secagg,
    server,
    sim,
    strategies,
    transport,
)
from covey.aggregate import AggregationError
from covey.clients import Client
from covey.core import CodecError, EvaluateResult, FitResult, History, Weights, WeightsError
from covey.deploy import ServerApp, connect, serve
from covey.server import FederationError
from covey.sim import simulate
from covey.strategies import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedBuff,
    FedMedian,
    FedProx,
    FedRFA,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Scaffold,
    Strategy,
)

try:
    __version__ = version("covey")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AggregationError",
    "Bulyan",
    "Client",
    "CodecError",
    "EvaluateResult",
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
    "FederationError",
    "FitResult",
    "History",
    "Krum",
    "MultiKrum",
    "QFedAvg",
    "Scaffold",
    "ServerApp",
    "Strategy",
    "Weights",
    "WeightsError",
    "__version__",
    "aggregate",
    "clients",
    "connect",
    "core",
    "data",
    "deploy",
    "models",
    "privacy",
    "secagg",
    "serve",
    "server",
    "sim",
    "simulate",
    "strategies",
    "transport",
]
