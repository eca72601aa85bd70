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
