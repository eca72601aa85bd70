"""Named presets: each builds the documented chain, takes the Strategy options, and trains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import covey
from covey.aggregate import (
    Step,
    bulyan,
    chain,
    geometric_median,
    krum,
    mean,
    median,
    multi_krum,
    qfedavg,
    run_round,
    scaffold,
    server_adagrad,
    server_adam,
    server_sgd,
    server_yogi,
    staleness_weight,
    trimmed_mean,
    weighted_mean,
)
from covey.data import iid, load_digits
from covey.models import LogisticClient, logistic_evaluate, logistic_init
from covey.testing import random_contributions

PRESETS: dict[str, tuple[Callable[[], covey.Strategy], Callable[[], Step]]] = {
    "FedAvg": (covey.FedAvg, lambda: chain(weighted_mean())),
    "FedAvgM": (
        lambda: covey.FedAvgM(server_lr=0.7, server_momentum=0.5),
        lambda: chain(weighted_mean(), server_sgd(0.7, 0.5)),
    ),
    "FedProx": (lambda: covey.FedProx(proximal_mu=0.1), lambda: chain(weighted_mean())),
    "FedAdam": (
        lambda: covey.FedAdam(eta=0.05, beta1=0.8, beta2=0.9, tau=0.01),
        lambda: chain(weighted_mean(), server_adam(0.05, 0.8, 0.9, 0.01)),
    ),
    "FedYogi": (covey.FedYogi, lambda: chain(weighted_mean(), server_yogi())),
    "FedAdagrad": (covey.FedAdagrad, lambda: chain(weighted_mean(), server_adagrad())),
    "FedMedian": (covey.FedMedian, lambda: chain(median())),
    "FedTrimmedAvg": (lambda: covey.FedTrimmedAvg(beta=0.3), lambda: chain(trimmed_mean(0.3))),
    "Krum": (lambda: covey.Krum(f=2), lambda: chain(krum(2))),
    "MultiKrum": (lambda: covey.MultiKrum(f=2, m=3), lambda: chain(multi_krum(2, 3))),
    "Bulyan": (lambda: covey.Bulyan(f=1), lambda: chain(bulyan(1))),
    "FedRFA": (covey.FedRFA, lambda: chain(geometric_median())),
    "QFedAvg": (
        lambda: covey.QFedAvg(q=0.5, client_lr=0.2),
        lambda: chain(qfedavg(0.5, 0.2)),
    ),
    "Scaffold": (
        lambda: covey.Scaffold(num_clients=50, server_lr=0.5),
        lambda: chain(scaffold(50), mean(), server_sgd(0.5)),
    ),
    "FedBuff": (
        lambda: covey.FedBuff(buffer_size=4, server_lr=0.5),
        lambda: chain(staleness_weight(), weighted_mean(), server_sgd(0.5)),
    ),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_is_its_documented_chain(name: str) -> None:
    make_preset, make_chain = PRESETS[name]
    strategy = make_preset()
    assert strategy.name == name
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
    got_state = strategy.aggregator.init(params)
    want_step = make_chain()
    want_state = want_step.init(params)
    x = params
    for rnd in (1, 2, 3):
        contributions = random_contributions(x, 9, rng)
        got_state, got = run_round(strategy.aggregator, got_state, rnd, x, contributions)
        want_state, want = run_round(want_step, want_state, rnd, x, contributions)
        assert got is not None
        assert want is not None
        new, expected = got.apply(x), want.apply(x)
        for k in x:
            np.testing.assert_array_equal(new[k], expected[k])
        x = new


def test_presets_take_the_strategy_options() -> None:
    def config(rnd: int) -> dict[str, Any]:
        return {"lr": 0.1}

    strategy = covey.FedAdam(
        fraction_fit=0.3,
        min_fit_clients=4,
        fraction_evaluate=0.0,
        on_fit_config=config,
        where={"site": "hospital"},
        accept_failures=False,
    )
    assert (strategy.fraction_fit, strategy.min_fit_clients, strategy.fraction_evaluate) == (
        0.3,
        4,
        0.0,
    )
    assert strategy.on_fit_config is config
    assert strategy.where == {"site": "hospital"}
    assert strategy.accept_failures is False
    with pytest.raises(TypeError, match="unexpected keyword"):
        covey.FedMedian(aggregator=chain(mean()))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword"):
        covey.Krum(f=1, fraction=0.5)  # type: ignore[call-arg]


def test_fedavg_keeps_its_signature_and_chain() -> None:
    strategy = covey.FedAvg(
        fraction_fit=0.5,
        min_fit_clients=3,
        fraction_evaluate=0.2,
        min_evaluate_clients=1,
        min_available_clients=3,
        on_fit_config=lambda r: {"epochs": 1},
        on_evaluate_config=lambda r: {},
        accept_failures=False,
        fit_metrics=covey.strategies.weighted_metrics,
        evaluate_metrics=covey.strategies.weighted_metrics,
    )
    assert strategy.name == "FedAvg"
    assert strategy.fit_config(1) == {"epochs": 1}
    assert not strategy.asynchronous


def test_fedprox_sends_mu_with_the_users_config() -> None:
    strategy = covey.FedProx(proximal_mu=0.25, on_fit_config=lambda r: {"lr": 0.1 / r})
    assert strategy.fit_config(2) == {"lr": 0.05}  # the user's; mu is a fixed entry
    assert strategy.fit_task_config(2) == {"lr": 0.05, "proximal_mu": 0.25}
    assert covey.FedProx(proximal_mu=0).fit_task_config(1) == {"proximal_mu": 0.0}
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="proximal_mu"):
            covey.FedProx(proximal_mu=bad)


def test_fedbuff_is_asynchronous_without_federated_evaluation() -> None:
    strategy = covey.FedBuff()
    assert strategy.asynchronous
    assert strategy.buffer_size == 10
    assert strategy.fraction_evaluate == 0.0
    assert strategy.max_staleness is None


DATA = load_digits(seed=0)
PARTS = iid(DATA.y_train, 20, seed=0)


class Digits(LogisticClient):
    """Logistic regression that also reports the loss before training (for q-FedAvg)."""

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        loss, _ = logistic_evaluate(weights, self.x, self.y)
        result = super().fit(weights, config)
        return covey.FitResult(
            weights=result.weights,
            num_examples=result.num_examples,
            metrics={**result.metrics, "loss": loss},
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda: covey.FedAvgM(server_momentum=0.5, fraction_evaluate=0.0),
        lambda: covey.FedAdam(eta=0.05, fraction_evaluate=0.0),
        lambda: covey.FedYogi(eta=0.05, fraction_evaluate=0.0),
        lambda: covey.FedAdagrad(eta=0.1, fraction_evaluate=0.0),
        lambda: covey.FedMedian(fraction_evaluate=0.0),
        lambda: covey.FedTrimmedAvg(fraction_evaluate=0.0),
        lambda: covey.Krum(f=2, fraction_evaluate=0.0),
        lambda: covey.MultiKrum(f=2, fraction_evaluate=0.0),
        lambda: covey.Bulyan(f=2, fraction_evaluate=0.0),
        lambda: covey.FedRFA(fraction_evaluate=0.0),
        lambda: covey.QFedAvg(q=0.1, client_lr=0.1, fraction_evaluate=0.0),
        lambda: covey.FedBuff(buffer_size=5, concurrency=10),
    ],
)
def test_presets_train_a_model(make: Callable[[], covey.Strategy]) -> None:
    def client(cid: int) -> Digits:
        x, y = DATA.client(PARTS[cid])
        return Digits(cid, x, y, lr=0.1, batch_size=16)

    result = covey.simulate(client, 20, 6, make(), logistic_init(64, 10))
    accuracy = logistic_evaluate(result.weights, DATA.x_test, DATA.y_test)[1]
    assert accuracy > 0.6, accuracy


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"batch_size": 0}, "'batch_size' must be an int >= 1"),
        ({"batch_size": -1}, "'batch_size' must be an int >= 1"),
        ({"epochs": 0}, "'epochs' must be an int >= 1"),
        ({"lr": float("nan")}, "'lr' must be a finite number > 0"),
        ({"lr": 2**1100}, "'lr' must be a finite number > 0"),
    ],
)
def test_logistic_client_refuses_settings_that_train_nothing(
    setting: dict[str, Any], named: str
) -> None:
    # batch_size=0 failed in range(); batch_size=-1 and epochs=-1 silently trained
    # nothing; a config override is checked the same way.
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=named):
        LogisticClient(0, x, y, **setting)
    client = LogisticClient(0, x, y)
    with pytest.raises(ValueError, match="config " + named):
        client.fit(logistic_init(2, 2), {"round": 1, **setting})


def test_logistic_client_refuses_labels_that_are_not_class_indices() -> None:
    # -1/1 labels trained both classes into column 1 (loss 0.13, accuracy 0.47);
    # strings and indices past the weights' classes failed in NumPy indexing.
    x = np.random.default_rng(0).normal(size=(8, 3))
    with pytest.raises(ValueError, match="got label -1"):
        LogisticClient(0, x, np.array([-1, 1] * 4))
    with pytest.raises(ValueError, match="integer class indices"):
        LogisticClient(0, x, np.array(["a", "b"] * 4))
    with pytest.raises(ValueError, match="y_val must hold class indices"):
        LogisticClient(0, x, np.array([0, 1] * 4), x, np.array([0, -1] * 4))
    client = LogisticClient(0, x, np.array([0, 2] * 4))
    with pytest.raises(ValueError, match="'W' has 2 classes, but y has label 2"):
        client.fit(logistic_init(3, 2), {"round": 1})
    with pytest.raises(ValueError, match="'W' has 2 classes, but y_val has label 2"):
        client.evaluate(logistic_init(3, 2), {})
    assert client.fit(logistic_init(3, 3), {"round": 1}).num_examples == 8


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: covey.FedAvgM(server_lr=-1), "FedAvgM server_lr must be"),
        (lambda: covey.FedAvgM(server_momentum=1.0), "FedAvgM server_momentum must be"),
        (lambda: covey.QFedAvg(client_lr=0), "QFedAvg client_lr must be"),
        # Before: "server_adam eta ...", "trimmed_mean beta ...", "qfedavg q ..."
        (lambda: covey.FedAdam(eta=0), "^FedAdam eta must be"),
        (lambda: covey.FedYogi(tau=0), "^FedYogi tau must be"),
        (lambda: covey.FedAdagrad(beta1=1), "^FedAdagrad beta1 must be"),
        (lambda: covey.FedTrimmedAvg(beta=0.6), "^FedTrimmedAvg beta must be"),
        (lambda: covey.QFedAvg(q=-1), "^QFedAvg q must be"),
    ],
)
def test_a_preset_names_its_own_argument_when_refusing_it(make: Any, named: str) -> None:
    # Before: "server_sgd momentum must be in [0, 1)", "qfedavg lr must be ...": names
    # of the steps inside, which the caller never wrote.
    with pytest.raises(ValueError, match=named):
        make()
