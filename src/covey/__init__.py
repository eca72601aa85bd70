"""covey: federated learning and federated analytics for Python.

Move the computation to the data: a server holds a global model, sends it to
clients, each client trains on data that never leaves it, and the server
combines what comes back.

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

from covey import aggregate, data, deploy, fedprox, scaffold, transport
from covey._async import AsyncLoop
from covey._asynctransport import AsyncTransport, SimulatedAsyncTransport, ThreadedAsyncTransport
from covey._client import Client, register_task, run_task, task_kinds
from covey._codec import CodecError, decode, encode
from covey._history import Failure, History, RoundRecord
from covey._loop import FederationError, RoundLoop
from covey._messages import EvaluateResult, FitResult, Reply, Task
from covey._presets import (
    Bulyan,
    FedAdagrad,
    FedAdam,
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
)
from covey._strategy import FedAvg, Strategy, weighted_metrics
from covey._weights import Weights, WeightsError, WeightsSpec
from covey.deploy import ServerApp, connect, serve
from covey.sim import SimulationResult, simulate

try:
    __version__ = version("covey")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AsyncLoop",
    "AsyncTransport",
    "Bulyan",
    "Client",
    "CodecError",
    "EvaluateResult",
    "Failure",
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
    "Reply",
    "RoundLoop",
    "RoundRecord",
    "Scaffold",
    "ServerApp",
    "SimulatedAsyncTransport",
    "SimulationResult",
    "Strategy",
    "Task",
    "ThreadedAsyncTransport",
    "Weights",
    "WeightsError",
    "WeightsSpec",
    "__version__",
    "aggregate",
    "connect",
    "data",
    "decode",
    "deploy",
    "encode",
    "fedprox",
    "register_task",
    "run_task",
    "scaffold",
    "serve",
    "simulate",
    "task_kinds",
    "transport",
    "weighted_metrics",
]
