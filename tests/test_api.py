"""The public API: exact export lists, and every exported name resolves."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

import pytest

import covey

EXPECTED = {
    "covey": [
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
    ],
    "covey.aggregate": [
        "Aggregate",
        "AggregationError",
        "Begin",
        "Broadcast",
        "Contribution",
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
    ],
    "covey.data": [
        "Dataset",
        "dirichlet",
        "iid",
        "load_breast_cancer",
        "load_digits",
        "natural",
        "shards",
    ],
    "covey.sim": [
        "ProcessTransport",
        "SimulationResult",
        "inline_transport",
        "simulate",
    ],
    "covey.transport": [
        "MemoryTransport",
        "Transport",
    ],
    "covey.models": [
        "LogisticClient",
        "logistic_evaluate",
        "logistic_grad",
        "logistic_init",
        "logistic_sgd_epoch",
    ],
    "covey.fedprox": [
        "MU_KEY",
        "proximal_grad",
        "proximal_mu",
        "proximal_term",
        "torch_add_proximal_grad",
        "torch_proximal_term",
        "torch_snapshot",
    ],
    "covey.scaffold": [
        "CLIENT_DELTA",
        "ControlVariate",
        "SERVER_CONTROL",
        "torch_add_correction",
        "torch_tensors",
    ],
    "covey.testing": ["check_aggregator", "random_contributions", "random_params"],
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_all_is_exactly_the_expected_sorted_list(name: str) -> None:
    module = _module(name)
    assert list(module.__all__) == EXPECTED[name]
    assert EXPECTED[name] == sorted(EXPECTED[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_exported_name_resolves(name: str) -> None:
    module = _module(name)
    for attr in module.__all__:
        assert getattr(module, attr, None) is not None, f"{name}.{attr} does not resolve"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_star_import_gives_exactly_all(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(EXPECTED[name])


def test_version_is_a_version_string() -> None:
    assert isinstance(covey.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", covey.__version__)


def test_reexports_are_the_same_objects() -> None:
    import covey.sim

    assert covey.simulate is covey.sim.simulate
    assert covey.SimulationResult is covey.sim.SimulationResult
    assert covey.aggregate is _module("covey.aggregate")
    assert covey.data is _module("covey.data")
    assert covey.transport is _module("covey.transport")


def test_errors_have_useful_bases() -> None:
    from covey.aggregate import AggregationError

    assert issubclass(covey.CodecError, ValueError)
    assert issubclass(covey.WeightsError, ValueError)
    assert issubclass(AggregationError, ValueError)
    assert issubclass(covey.FederationError, RuntimeError)
