"""Flower's simulation, server and client keywords get errors that name covey's way."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import covey
from covey import EvaluateResult, FitResult


class Same(covey.Client):
    """Returns the weights it was given."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights=dict(weights), num_examples=1)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=0.0, num_examples=1)


def _args() -> dict[str, Any]:
    return {
        "client_fn": lambda cid: Same(),
        "num_clients": 2,
        "rounds": 1,
        "strategy": None,
        "initial_weights": {"w": np.zeros(2)},
    }


@pytest.mark.parametrize(
    ("flower", "covey_name"),
    [
        ("num_rounds", "rounds"),
        ("num_supernodes", "num_clients"),
        ("backend_config", "client_resources"),
        ("backend_name", "backend"),
        ("config", "rounds"),
        ("ray_init_args", "ray_address"),
        # the keywords of Flower's message API Strategy.start(...)
        ("train_config", "on_fit_config"),
        ("evaluate_config", "on_evaluate_config"),
        ("initial_arrays", "initial_weights"),
        ("grid", "num_clients"),
    ],
)
def test_flower_simulate_keywords_point_to_covey_s(flower: str, covey_name: str) -> None:
    args = _args()
    if flower == "num_rounds":
        del args["rounds"]
    if flower == "num_supernodes":
        del args["num_clients"]
    args[flower] = 3
    with pytest.raises(
        TypeError, match=rf"Flower's {flower} is covey's .*\b{covey_name}\b"
    ) as info:
        covey.simulate(**args)
    assert "did you mean" not in str(info.value)  # evaluate_config is no evaluate_fn


def test_flower_s_keyword_beside_another_unknown_one_names_both() -> None:
    # Before, the error listed num_rounds alone, and the misspelt keyword failed next.
    args = _args()
    del args["rounds"]
    said = (
        "simulate() got unexpected keyword arguments: ['client_resource', 'num_rounds']; "
        "client_resource: did you mean client_resources?; Flower's num_rounds is covey's rounds"
    )
    args.update(num_rounds=3, client_resource={"num_cpus": 1})
    with pytest.raises(TypeError, match=re.escape(said)):
        covey.simulate(**args)


@pytest.mark.parametrize(
    ("flower", "covey_name"),
    [
        ("num_rounds", "rounds"),
        ("config", "rounds"),
        ("server_address", "address"),
        ("certificates", "certs"),
        ("initial_parameters", "initial_weights"),
    ],
)
def test_flower_start_server_keywords_point_to_covey_s_serve(flower: str, covey_name: str) -> None:
    # Flower's start_server(server_address=..., config=ServerConfig(num_rounds=3), ...);
    # serve() refuses them before it listens (before, Python's bare unexpected keyword).
    from covey.deploy import serve

    options: dict[str, Any] = {flower: 3}
    with pytest.raises(TypeError, match=rf"Flower's {flower} is covey's .*\b{covey_name}\b"):
        serve(covey.FedAvg(), 1, {"w": np.zeros(2)}, **options)


@pytest.mark.parametrize(
    ("flower", "covey_name"),
    [
        ("server_address", "address"),
        ("root_certificates", "tls"),
        ("client_fn", "client"),
        ("max_retries", "max_attempts"),
        ("max_wait_time", "retry_for"),
    ],
)
def test_flower_start_client_keywords_point_to_covey_s_connect(
    flower: str, covey_name: str
) -> None:
    # Flower's start_client(server_address=..., client=..., root_certificates=...);
    # refused before any connection (before, Python's bare unexpected keyword).
    options: dict[str, Any] = {flower: 3}
    with pytest.raises(TypeError, match=rf"Flower's {flower} is covey's .*\b{covey_name}\b"):
        covey.connect(Same(), **options)


@pytest.mark.parametrize(
    ("flower", "covey_name"),
    [("server_fn", "strategy"), ("config", "rounds"), ("num_rounds", "rounds")],
)
def test_flower_server_app_options_point_to_covey_s(flower: str, covey_name: str) -> None:
    # Flower's ServerApp(server_fn=...) or ServerApp(config=ServerConfig(...), strategy=...)
    # (before, Python's bare unexpected keyword argument).
    from covey.deploy import ServerApp

    options: dict[str, Any] = {"strategy": covey.FedAvg(), flower: 3}
    with pytest.raises(TypeError, match=rf"Flower's {flower} is covey's .*\b{covey_name}\b"):
        ServerApp(**options)
    with pytest.raises(TypeError, match=r"\['round'\]; did you mean rounds\?"):
        ServerApp(covey.FedAvg(), {"w": np.zeros(2)}, round=2)  # type: ignore[call-arg]
    app = ServerApp(covey.FedAvg(), {"w": np.zeros(2)}, rounds=2)  # covey's own still work
    assert (app.rounds, replace(app, rounds=4).rounds) == (2, 4)


def test_client_resources_is_covey_s_own_keyword() -> None:
    # The same name in both: covey's check for the backend applies, not a translation.
    with pytest.raises(ValueError, match="backend='ray' only"):
        covey.simulate(**_args(), client_resources={"num_cpus": 1})


def test_other_unknown_simulate_keywords_keep_python_s_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'") as info:
        covey.simulate(**_args(), no_such_option=1)  # type: ignore[call-arg]
    assert "Flower" not in str(info.value)
