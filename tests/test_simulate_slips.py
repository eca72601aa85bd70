"""The slips a first simulation makes are refused before round 1, naming the fix."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult


class PlusOne(covey.Client):
    """Adds one to every weight."""

    def __init__(self, cid: int = 0) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def _simulate(client_fn: Any = PlusOne, **options: Any) -> covey.sim.SimulationResult:
    simulate: Any = covey.simulate
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    result: covey.sim.SimulationResult = simulate(
        client_fn, 3, 1, strategy, {"w": np.zeros(2)}, **options
    )
    return result


@pytest.mark.parametrize(
    ("options", "call"),
    [
        ({"on_fit_config": lambda: {"lr": 0.1}}, "on_fit_config(round)"),
        ({"on_evaluate_config": lambda rnd, cid: {}}, "on_evaluate_config(round)"),
        ({"fit_metrics": lambda: {}}, "fit_metrics(results)"),
        ({"evaluate_metrics": lambda a, b: {}}, "evaluate_metrics(results)"),
        ({"on_client_fit_config": lambda rnd: {}}, "on_client_fit_config(round, client)"),
        ({"on_client_evaluate_config": lambda: {}}, "on_client_evaluate_config(round, client)"),
        ({"selector": lambda candidates, rnd: candidates}, "selector(candidates, round, rng)"),
    ],
)
def test_a_strategy_function_of_the_wrong_arguments_is_refused_when_made(
    options: dict[str, Any], call: str
) -> None:
    # Before, on_fit_config=lambda: {...} was taken, and the run failed once started
    # with Python's bare "<lambda>() takes 0 positional arguments but 1 was given".
    attr = next(iter(options))
    with pytest.raises(TypeError, match=re.escape(f"covey calls {call} but {attr} ")) as info:
        covey.FedAvg(**options)
    assert "cannot be called so: give it" in str(info.value)


def _any_config(*args: Any) -> dict[str, Any]:
    return {}


def _scaled(rnd: int, extra: float = 1.0) -> dict[str, Any]:
    return {"lr": 0.1 * extra}


def test_strategy_functions_that_can_be_called_so_are_taken() -> None:
    # Defaults and *args may take the call; only a mismatch is refused.
    strategy = covey.FedAvg(
        on_fit_config=_scaled,
        on_evaluate_config=_any_config,
        fit_metrics=covey.strategies.weighted_metrics,
        selector=lambda candidates, rnd, rng: list(candidates)[:2],
        fraction_evaluate=0.0,
    )
    result = covey.simulate(PlusOne, 3, 1, strategy, {"w": np.zeros(2)})
    assert result.history.rounds[1].fit_participants == [0, 1]


def test_an_evaluate_fn_of_one_argument_is_told_to_take_round_and_weights() -> None:
    # Before, it was told that "Flower's third argument, config, has no counterpart",
    # though it takes no config at all.
    with pytest.raises(TypeError, match=r"evaluate_fn\(round, weights\)") as info:
        _simulate(evaluate_fn=lambda weights: (0.0, {}))
    said = str(info.value)
    assert "give it those two parameters, e.g. def evaluate_fn(round, weights)" in said
    assert "Flower" not in said


def test_flower_s_evaluate_fn_still_hears_of_its_config() -> None:
    def evaluate_fn(server_round: int, parameters: Any, config: dict[str, Any]) -> Any:
        return 0.0, {}

    with pytest.raises(TypeError, match="Flower's third argument, config, has no counterpart"):
        _simulate(evaluate_fn=evaluate_fn)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("evaluate_func", "evaluate_fn"),
        ("eval_fn", "evaluate_fn"),
        ("progres", "progress"),
        ("backnd", "backend"),
        ("seeds", "seed"),
    ],
)
def test_a_misspelt_simulate_keyword_names_the_closest_one(typo: str, meant: str) -> None:
    # Before, Python's "got an unexpected keyword argument 'evaluate_func'" alone.
    expected = f"simulate() got an unexpected keyword argument '{typo}'; did you mean {meant}?"
    with pytest.raises(TypeError, match=re.escape(expected)):
        _simulate(**{typo: 1})


@pytest.mark.parametrize("backend", ["inline", "process"])
@pytest.mark.parametrize(
    "client_fn", [lambda: PlusOne(), lambda cid, config: PlusOne()], ids=["none", "two"]
)
def test_a_client_fn_that_takes_no_client_id_is_refused_before_any_client_runs(
    client_fn: Any, backend: str
) -> None:
    # Before, every sampled client failed in round 1 (a warning each), then the run
    # stopped with a FederationError: the same hint, once per client.
    with pytest.raises(TypeError, match=r"cannot be called as client_fn\(cid\)") as info:
        _simulate(client_fn, backend=backend, num_workers=1)
    assert "covey calls it with the client id" in str(info.value)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("random_seed", "random_seed is covey's seed (an int seeding the sampling of clients)"),
        ("random_state", "random_state is covey's seed"),
        ("n_rounds", "n_rounds is covey's rounds"),
        ("num_round", "num_round is covey's rounds"),  # it was told "did you mean on_round?"
        ("model", "model is covey's initial_weights (the model's weights, a dict of names"),
        ("num_gpus", "num_gpus is given as client_resources={'num_gpus': ...} with backend='ray'"),
        ("checkpoint_dir", "checkpoint_dir is covey's run_dir"),
        ("fraction_fit", "fraction_fit is the strategy's option: strategy=covey.FedAvg("),
        ("min_fit_clients", "min_fit_clients is the strategy's option"),  # not num_clients
        ("lr", "lr is the clients' setting: send it to them each round with strategy="),
        # an option of some presets alone: Python's plain error before
        (
            "proximal_mu",
            "proximal_mu is an option of covey.FedProx: strategy=covey.FedProx(proximal_mu=...)",
        ),
        ("server_lr", "server_lr is an option of covey.FedAvgM, covey.Scaffold, covey.FedBuff"),
        ("beta1", "beta1 is an option of covey.FedAdam, covey.FedYogi, covey.FedAdagrad"),
    ],
)
def test_another_name_for_a_simulate_keyword_names_covey_s(given: str, said: str) -> None:
    # Before, Python's "got an unexpected keyword argument 'random_seed'" alone.
    expected = f"simulate() got unexpected keyword arguments: [{given!r}]; {said}"
    with pytest.raises(TypeError, match=re.escape(expected)):
        _simulate(**{given: 1})
