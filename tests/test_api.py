"""The public API: exact export lists, and every exported name resolves."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

import pytest

import covey

EXPECTED = {
    "covey": [
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
    ],
    "covey.aggregate": [
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
    ],
    "covey.clients": [
        "CLIENT_DELTA",
        "Client",
        "ClientFn",
        "ClientLike",
        "ControlVariate",
        "MU_KEY",
        "SERVER_CONTROL",
        "TaskHandler",
        "proximal_grad",
        "proximal_mu",
        "proximal_term",
        "register_task",
        "run_task",
        "task_kinds",
        "torch_add_correction",
        "torch_add_proximal_grad",
        "torch_proximal_term",
        "torch_snapshot",
        "torch_tensors",
    ],
    "covey.core": [
        "CodecError",
        "RunHook",
        "Config",
        "EvaluateResult",
        "Failure",
        "FitResult",
        "History",
        "Metrics",
        "MissingExtraError",
        "Reply",
        "RoundRecord",
        "Task",
        "Weights",
        "WeightsError",
        "WeightsSpec",
        "decode",
        "encode",
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
    "covey.deploy": [
        "ClientTLS",
        "ConnectResult",
        "ServeResult",
        "ServerApp",
        "ServerTLS",
        "client_tls",
        "connect",
        "serve",
        "tls_from_certs",
        "tls_from_dir",
    ],
    "covey.models": [
        "LogisticClient",
        "logistic_evaluate",
        "logistic_grad",
        "logistic_init",
        "logistic_sgd_epoch",
    ],
    "covey.privacy": [
        "AdaptiveClipping",
        "ClipUpdates",
        "ClippedSum",
        "DPSGD",
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
    ],
    "covey.server": [
        "AsyncLoop",
        "StateError",
        "EvaluateFn",
        "FederationError",
        "Loop",
        "RoundCallback",
        "RoundLoop",
        "RunStore",
        "in_cid_order",
        "open_loop",
        "run_config",
    ],
    "covey.sim": [
        "ClientClock",
        "ClientState",
        "ClockedTransport",
        "ProcessTransport",
        "RayTransport",
        "SimulationResult",
        "inline_transport",
        "simulate",
    ],
    "covey.strategies": [
        "Bulyan",
        "ClientConfigFn",
        "ClientInfo",
        "FitOutcome",
        "FitRound",
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
    ],
    "covey.testing": [
        "ThreadedAsyncTransport",
        "check_aggregator",
        "random_contributions",
        "random_params",
    ],
    "covey.transport": [
        "AsyncTransport",
        "Durations",
        "MemoryTransport",
        "SimulatedAsyncTransport",
        "Transport",
    ],
    "covey.secagg": [
        "GraphPlan",
        "Identity",
        "Noise",
        "ProtocolAbort",
        "RangeError",
        "SecAggAbort",
        "SecureSumResult",
        "ThreatModel",
        "complete_threshold",
        "forget",
        "harary_parameters",
        "identities",
        "new_signing_key",
        "plan",
        "register_input",
        "register_task_input",
        "ring_bits",
        "secure",
        "secure_sum",
    ],
    "covey.transport.grpc": [
        "AddressError",
        "ClientTLS",
        "ConnectResult",
        "GrpcServerTransport",
        "Refused",
        "ServerTLS",
        "WireError",
        "WireLimits",
        "connect",
    ],
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_all_is_exactly_the_expected_list(name: str) -> None:
    module = _module(name)
    assert sorted(module.__all__) == sorted(EXPECTED[name])
    assert len(set(module.__all__)) == len(module.__all__)


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
    assert covey.sim.SimulationResult is covey.sim.SimulationResult
    assert covey.aggregate is _module("covey.aggregate")
    assert covey.data is _module("covey.data")
    assert covey.transport is _module("covey.transport")
    assert covey.Strategy is covey.strategies.Strategy
    assert covey.Client is covey.clients.Client
    assert covey.History is covey.core.History


def test_no_public_name_differs_from_another_only_by_case() -> None:
    for name in EXPECTED:
        module = _module(name)
        public = [attr for attr in dir(module) if not attr.startswith("_")]
        seen: dict[str, str] = {}
        for attr in public:
            other = seen.setdefault(attr.lower(), attr)
            assert other == attr, f"{name}.{attr} and {name}.{other} differ only by case"


def test_the_top_level_holds_no_plumbing() -> None:
    for plumbing in ("Task", "Reply", "run_task", "encode", "RoundLoop", "AsyncLoop"):
        assert not hasattr(covey, plumbing), f"covey.{plumbing} belongs in its layer"


@pytest.mark.parametrize(
    "name", ["covey", "covey.analytics", "covey.dashboard", "covey.trackers", *sorted(EXPECTED)]
)
def test_dir_shows_what_a_user_writes_not_the_package_s_helpers(name: str) -> None:
    # Before, covey.<TAB> offered Any, TYPE_CHECKING, annotations and lazy_exports, and
    # covey.trackers.<TAB> (analytics, dashboard) none of its public names.
    module = _module(name)
    shown = dir(module)
    assert set(shown) >= set(module.__all__)
    for helper in ("Any", "TYPE_CHECKING", "annotations", "importlib", "lazy_exports"):
        assert helper not in shown or helper in module.__all__
    if name == "covey":
        assert "compress" in shown  # a public subpackage outside __all__
        assert "__version__" in shown


def test_errors_have_useful_bases() -> None:
    from covey.aggregate import AggregationError

    assert issubclass(covey.CodecError, ValueError)
    assert issubclass(covey.WeightsError, ValueError)
    assert issubclass(AggregationError, ValueError)
    assert issubclass(covey.FederationError, RuntimeError)
