"""Each example is importable without running: `covey client --app FILE:CLIENT` imports it.

The same client code runs simulated and deployed; a deployed client loads the
example's client class by importing its file, which must then run no
simulation and parse no command line (it would parse `covey client`'s).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.models import logistic_init

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("*.py"))
NEEDS = {
    "dashboard_and_trackers": ["mlflow", "tensorboard"],
    "privacy_hospitals": ["torch", "opacus"],
    "torch_digits": ["torch"],
    "xgboost_federated": ["xgboost"],
}


def _import(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for extra in NEEDS.get(name, []):
        pytest.importorskip(extra)

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"importing examples/{name}.py ran a simulation")

    monkeypatch.setattr(covey, "simulate", no_run)
    monkeypatch.setattr(sys, "argv", ["covey", "client", "--app", f"{name}:client_fn"])
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as an import does (dataclasses need it)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_listed() -> None:
    assert "quickstart" in SCRIPTS
    assert "dashboard_and_trackers" in SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_importing_an_example_runs_nothing(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _import(name, monkeypatch)


def test_the_quickstart_client_trains_as_a_deployed_client_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quickstart = _import("quickstart", monkeypatch)
    client = quickstart.DigitsClient(0)
    start = logistic_init(64, 10)
    fitted = client.fit(start, {"round": 1})
    assert fitted.weights is not None
    assert fitted.num_examples == len(client.y)
    assert not np.array_equal(fitted.weights["W"], start["W"])


def _fits_as_deployed(name: str, client: str, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``covey client --app NAME:CLIENT --cid 0`` trains ``covey server --app NAME:SERVER``'s model.

    Both are loaded as the commands load them, run from examples/; the server's
    ``evaluate_fn`` then judges the trained model.
    """
    from covey.deploy._cli import _server_app
    from covey.deploy._cli_client import _make_client

    for extra in NEEDS.get(name, []):
        pytest.importorskip(extra)

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"importing examples/{name}.py ran a simulation")

    monkeypatch.setattr(covey, "simulate", no_run)
    monkeypatch.chdir(EXAMPLES)  # the commands in the example's docstring run from there
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader puts the folder first
    known = name in sys.modules
    try:
        app = _server_app(f"{name}:{server}")
        deployed = _make_client(f"{name}:{client}", 0)
    finally:
        if not known:
            sys.modules.pop(name, None)
    assert isinstance(app, covey.deploy.ServerApp)
    start = app.weights()
    fitted = deployed.fit(start, {"round": 1})
    assert fitted.num_examples > 0
    if fitted.weights is None:  # a client may send its update as a delta from the model
        assert fitted.delta is not None
        trained = {n: start[n] + fitted.delta[n] for n in start}
    else:
        trained = dict(fitted.weights)
    assert sorted(trained) == sorted(start)
    assert any(not np.array_equal(trained[n], start[n]) for n in start)
    assert app.evaluate_fn is not None
    judged = app.evaluate_fn(1, trained)
    assert judged is not None
    _, metrics = judged
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


@pytest.mark.parametrize("model", ["sgd", "logistic", "mlp"])
def test_the_sklearn_hospitals_train_as_deployed_clients_would(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fits_as_deployed("sklearn_breast_cancer", model, f"{model}_server", monkeypatch)


@pytest.mark.parametrize("server", ["fedavg_server", "fedprox_server"])
def test_the_torch_digits_client_trains_as_a_deployed_client_would(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fits_as_deployed("torch_digits", "client_fn", server, monkeypatch)


@pytest.mark.parametrize("server", ["bagging_server", "cyclic_server"])
def test_the_xgboost_client_trains_as_a_deployed_client_would(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fits_as_deployed("xgboost_federated", "client_fn", server, monkeypatch)


def test_the_quickstart_trains_as_deployed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fits_as_deployed("quickstart", "DigitsClient", "server", monkeypatch)
