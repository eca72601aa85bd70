"""FedProx: the proximal helpers against their formulas, and mu=0 is exactly FedAvg."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import covey
from covey import clients
from covey.data import dirichlet, load_digits
from covey.models import logistic_evaluate, logistic_grad, logistic_init

DATA = load_digits(seed=0)
PARTS = dirichlet(DATA.y_train, 10, alpha=0.3, seed=1)


class ProxClient(covey.Client):
    """Local SGD; with ``prox`` it adds FedProx's proximal gradient with the server's mu."""

    def __init__(self, cid: int, prox: bool) -> None:
        self.cid, self.prox = cid, prox
        self.x, self.y = DATA.client(PARTS[cid])

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        mu = clients.proximal_mu(config) if self.prox else 0.0
        w = {k: np.array(v) for k, v in weights.items()}
        rng = np.random.default_rng([self.cid, config["round"]])
        for _ in range(3):
            order = rng.permutation(len(self.y))
            for start in range(0, len(order), 16):
                idx = order[start : start + 16]
                g = logistic_grad(w, self.x[idx], self.y[idx])
                if self.prox:
                    g = clients.proximal_grad(g, w, weights, mu)
                w = {k: w[k] - 0.3 * g[k] for k in w}
        drift = float(np.sqrt(sum(np.sum((w[k] - weights[k]) ** 2) for k in w)))
        return covey.FitResult(weights=w, num_examples=len(self.y), metrics={"drift": drift})


def run(strategy: covey.Strategy, prox: bool) -> covey.sim.SimulationResult:
    return covey.simulate(lambda cid: ProxClient(cid, prox), 10, 4, strategy, logistic_init(64, 10))


def test_fedprox_with_mu_zero_is_fedavg_exactly() -> None:
    fedavg = run(covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0), prox=False)
    fedprox0 = run(covey.FedProx(proximal_mu=0.0, fraction_fit=0.5, fraction_evaluate=0.0), True)
    for name in fedavg.weights:
        np.testing.assert_array_equal(fedprox0.weights[name], fedavg.weights[name])


def test_a_positive_mu_keeps_local_models_near_the_global_one() -> None:
    free = run(covey.FedProx(proximal_mu=0.0, fraction_evaluate=0.0), True)
    held = run(covey.FedProx(proximal_mu=1.0, fraction_evaluate=0.0), True)
    drift_free = [v for _, v in free.history.metric("drift", source="fit")]
    drift_held = [v for _, v in held.history.metric("drift", source="fit")]
    assert all(h < f for h, f in zip(drift_held, drift_free, strict=True))
    accuracy = logistic_evaluate(held.weights, DATA.x_test, DATA.y_test)[1]
    assert accuracy > 0.6


def random_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "W": rng.normal(size=(3, 2)),
        "b": rng.normal(size=2).astype(np.float32),
        "n": np.arange(2),
    }


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), mu=st.sampled_from([0.0, 0.01, 1.0, 10.0]))
def test_proximal_grad_and_term_match_their_formulas(seed: int, mu: float) -> None:
    rng = np.random.default_rng(seed)
    w, w0, g = random_weights(rng), random_weights(rng), random_weights(rng)
    out = clients.proximal_grad(g, w, w0, mu)
    for k in ("W", "b"):
        np.testing.assert_allclose(out[k], g[k] + mu * (w[k] - w0[k]), rtol=1e-6)
        assert out[k].dtype == g[k].dtype
    np.testing.assert_array_equal(out["n"], g["n"])  # integer arrays have no gradient
    expected = 0.5 * mu * sum(np.sum((w[k] - w0[k]).astype(np.float64) ** 2) for k in ("W", "b"))
    assert clients.proximal_term(w, w0, mu) == pytest.approx(expected, rel=1e-6)


def test_proximal_grad_is_the_terms_derivative() -> None:
    rng = np.random.default_rng(0)
    w, w0 = random_weights(rng), random_weights(rng)
    zero = {k: np.zeros_like(v) for k, v in w.items()}
    grad = clients.proximal_grad(zero, w, w0, 0.7)
    eps = 1e-6
    bumped = {k: v.copy() for k, v in w.items()}
    bumped["W"][1, 0] += eps
    numeric = (clients.proximal_term(bumped, w0, 0.7) - clients.proximal_term(w, w0, 0.7)) / eps
    assert numeric == pytest.approx(grad["W"][1, 0], rel=1e-4)


def test_mu_comes_from_the_config() -> None:
    assert clients.proximal_mu({"round": 1, "proximal_mu": 0.5}) == 0.5
    assert clients.proximal_mu({"round": 1}) == 0.0
    assert clients.proximal_mu({"round": 1}, default=0.1) == 0.1
    with pytest.raises(ValueError, match="proximal_mu"):
        clients.proximal_mu({"proximal_mu": -1})
    assert clients.MU_KEY == "proximal_mu"


@pytest.mark.parametrize(
    ("value", "error", "shown"),
    [
        ("x", TypeError, "str 'x'"),
        ("0.1", TypeError, "str '0.1'"),
        (None, TypeError, "NoneType None"),
        (True, TypeError, "bool True"),
        (float("nan"), ValueError, "nan"),
        (float("inf"), ValueError, "inf"),
        (-0.5, ValueError, "-0.5"),
    ],
)
def test_a_bad_mu_is_refused_naming_the_entry_and_the_value(
    value: object, error: type[Exception], shown: str
) -> None:
    # Before: "x" failed with float()'s bare "could not convert string to float: 'x'",
    # "0.1" and True were taken as numbers.
    with pytest.raises(error) as raised:
        clients.proximal_mu({"proximal_mu": value})
    message = str(raised.value)
    assert "fit config entry 'proximal_mu'" in message
    assert "finite number >= 0" in message
    assert shown in message


def test_numpy_numbers_are_taken_as_mu() -> None:
    assert clients.proximal_mu({"proximal_mu": np.float32(0.25)}) == 0.25
    assert clients.proximal_mu({"proximal_mu": 2}) == 2.0


def test_the_torch_helpers_need_torch_only_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"torch==2\.13\.0"):
        clients.torch_snapshot(object())
    with pytest.raises(ImportError, match="pip install"):
        clients.torch_add_correction(object(), {})


@pytest.mark.parametrize(
    ("mu", "error"),
    [
        ("abc", TypeError),
        (None, TypeError),
        (True, TypeError),
        (-0.1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
    ],
)
def test_fedprox_names_a_proximal_mu_that_is_no_number(mu: object, error: type[Exception]) -> None:
    # "abc" gave "could not convert string to float", None a float() TypeError,
    # and True was taken as mu = 1.0.
    with pytest.raises(error, match="proximal_mu must be a finite number >= 0"):
        covey.FedProx(proximal_mu=mu)  # type: ignore[arg-type]


def test_the_proximal_term_of_a_float16_model_is_summed_without_overflow() -> None:
    # Squared and summed in float16, a million entries 0.3 from the global model
    # (a term of 45,000, its sum of squares 90,000) overflowed to inf.
    w: dict[str, np.ndarray] = {"W": np.full(10**6, 0.3, np.float16), "n": np.array([3])}
    w0: dict[str, np.ndarray] = {"W": np.zeros(10**6, np.float16), "n": np.array([1])}
    expected = 0.5 * float(np.sum(w["W"].astype(np.float64) ** 2))
    assert clients.proximal_term(w, w0, 1.0) == pytest.approx(expected, rel=1e-6)


def test_the_proximal_gradient_of_a_0d_array_is_an_array() -> None:
    w, w0 = {"s": np.array(3.0)}, {"s": np.array(1.0)}
    out = clients.proximal_grad({"s": np.array(0.5)}, w, w0, 2.0)
    assert isinstance(out["s"], np.ndarray)
    assert out["s"].shape == ()
    assert float(out["s"]) == 4.5


def test_a_proximal_mu_set_by_the_round_or_client_config_too_is_refused() -> None:
    # The round config's was dropped (clients got FedProx's), and a client config's won
    # while the run recorded FedProx's value.
    def round_config(rnd: int) -> dict[str, Any]:
        return {"proximal_mu": 0.9}

    def client_config(rnd: int, client: Any) -> dict[str, Any]:
        return {"proximal_mu": 0.9}

    for options in ({"on_fit_config": round_config}, {"on_client_fit_config": client_config}):
        strategy = covey.FedProx(proximal_mu=0.3, fraction_evaluate=0.0, **options)
        with pytest.raises(ValueError, match=r"'proximal_mu'.*covey sets that entry"):
            covey.simulate(lambda cid: Seen(), 2, 1, strategy, {"w": np.zeros(2)}, progress=False)


def test_fedprox_sends_its_mu_beside_the_round_config() -> None:
    seen.clear()

    def round_config(rnd: int) -> dict[str, Any]:
        return {"lr": 0.5}

    strategy = covey.FedProx(proximal_mu=0.3, fraction_evaluate=0.0, on_fit_config=round_config)
    covey.simulate(lambda cid: Seen(), 2, 1, strategy, {"w": np.zeros(2)}, progress=False)
    assert seen == [{"round": 1, "lr": 0.5, "proximal_mu": 0.3}] * 2


seen: list[dict[str, Any]] = []


class Seen(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        seen.append(dict(config))
        return covey.FitResult(weights=dict(weights), num_examples=1)
