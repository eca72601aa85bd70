"""covey: federated learning and federated analytics for Python.

Move the computation to the data: a server holds a global model, sends it to
clients, each client trains on data that never leaves it, and the server
combines what comes back.

The names here are what a user writes in a script. Everything else lives in
its layer: :mod:`covey.core` (weights, codec, messages, history),
:mod:`covey.aggregate` (aggregation steps), :mod:`covey.strategies`,
:mod:`covey.clients` (the task runtime and client helpers), :mod:`covey.transport`,
:mod:`covey.server` (round loops, run store), :mod:`covey.sim`, :mod:`covey.deploy` and
:mod:`covey.secagg` (secure aggregation, whose task kinds every client performs).
Each name is imported the first time it is used, so ``import covey`` is quick and
gRPC, cryptography and the simulator load only in a program that uses them.

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

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covey.core._lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each loads on first use
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
    from covey import compress as compress  # a subpackage, not in __all__
    from covey.aggregate import AggregationError
    from covey.clients import Client
    from covey.core import (
        CodecError,
        Config,
        EvaluateResult,
        FitResult,
        History,
        Metrics,
        Weights,
        WeightsError,
    )
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

    __version__: str
    """The installed covey's version (``"0.0.0"`` when run from a source tree not installed).

    What ``covey --version`` prints, and what a run's record keeps as ``covey_version``.
    """

__all__ = [
    "AggregationError",
    "Bulyan",
    "Client",
    "CodecError",
    "Config",
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
    "Metrics",
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

_WHERE = {
    "AggregationError": "aggregate",
    "Client": "clients",
    **dict.fromkeys(
        (
            *("CodecError", "Config", "EvaluateResult", "FitResult", "History", "Metrics"),
            *("Weights", "WeightsError"),
        ),
        "core",
    ),
    **dict.fromkeys(["ServerApp", "connect", "serve"], "deploy"),
    "FederationError": "server",
    "simulate": "sim",
    **dict.fromkeys(
        (
            *("Bulyan", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedBuff", "FedMedian"),
            *("FedProx", "FedRFA", "FedTrimmedAvg", "FedYogi", "Krum", "MultiKrum", "QFedAvg"),
            *("Scaffold", "Strategy"),
        ),
        "strategies",
    ),
}
"""The subpackage defining each public name, imported when the name is first read."""

_SUBPACKAGES = [
    *(n for n in __all__ if n.islower() and not n.startswith("_") and n not in _WHERE),
    "compress",  # not exported, but an attribute of covey since covey imported it
]
"""The subpackages in ``__all__`` (its lower-case names no subpackage defines), and compress."""

_load, __dir__ = lazy_exports(__name__, _WHERE, _SUBPACKAGES)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("covey")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


if not TYPE_CHECKING:  # type checkers see the imports above

    def __getattr__(name: str) -> Any:
        """A public name, imported on first use (PEP 562), so ``import covey`` stays fast."""
        if name == "__version__":
            globals()[name] = value = _version()
            return value
        return _load(name)
