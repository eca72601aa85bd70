"""Server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad) against Reddi et al.'s update rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import covey
from covey.aggregate import (
    Aggregate,
    AggregationError,
    Begin,
    Contribution,
    End,
    chain,
    mean,
    run_round,
    server_adagrad,
    server_adam,
    server_sgd,
    server_yogi,
    weighted_mean,
)
from covey.core._weights import WeightsSpec
from covey.strategies._fold import contribution, find_aggregate
from covey.testing import check_aggregator

Arrays = dict[str, np.ndarray]


def rounds_of(rng: np.random.Generator, params: Arrays, rounds: int, n: int):
    """Random contributions for several rounds (deltas and full weights)."""
    plan = []
    for _ in range(rounds):
        contributions = []
        for cid in range(n):
            delta = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in params.items()}
            if cid % 2:
                contributions.append(Contribution(cid, int(rng.integers(1, 30)), delta=delta))
            else:
                weights = {k: params[k] + delta[k] for k in params}
                contributions.append(Contribution(cid, int(rng.integers(1, 30)), weights=weights))
        plan.append(contributions)
    return plan


def fedavg_delta(params: Arrays, contributions: list[Contribution]) -> Arrays:
    """Compute sum n_k (w_k - x) / sum n_k in float64."""
    total = sum(c.num_examples for c in contributions)
    return {
        k: np.asarray(
            sum(c.num_examples * c.as_delta(params)[k].astype(np.float64) for c in contributions)
        )
        / total
        for k in params
    }


def run(step: Any, params: Arrays, plan: list[list[Contribution]]) -> list[Arrays]:
    """Apply the step round after round; the global weights after each round."""
    state = step.init(params)
    out = []
    for rnd, contributions in enumerate(plan, start=1):
        state, agg = run_round(step, state, rnd, params, contributions)
        assert agg is not None
        params = {k: np.asarray(v) for k, v in agg.apply(params).items()}
        out.append(params)
    return out


def reference(
    params: Arrays,
    plan: list[list[Contribution]],
    rule: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    eta: float,
    tau: float,
    beta1: float,
    v0: float,
) -> list[Arrays]:
    """Reddi et al. Algorithm 2: m = b1 m + (1-b1) D; v = rule(v, D); x += eta m/(sqrt(v)+tau)."""
    m = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}
    v = {k: np.full(p.shape, v0) for k, p in params.items()}
    x = {k: p.astype(np.float64) for k, p in params.items()}
    out = []
    for contributions in plan:
        delta = fedavg_delta(params, contributions)
        for k in x:
            m[k] = beta1 * m[k] + (1 - beta1) * delta[k]
            v[k], _ = rule(v[k], delta[k], np.empty(0))
            x[k] = x[k] + eta * m[k] / (np.sqrt(v[k]) + tau)
        params = {k: x[k].astype(params[k].dtype) for k in x}
        out.append(params)
    return out


def adam_v(b2: float):
    return lambda v, d, _: ((b2 * v + (1 - b2) * d * d), None)


def yogi_v(b2: float):
    return lambda v, d, _: ((v - (1 - b2) * d * d * np.sign(v - d * d)), None)


def adagrad_v(v: np.ndarray, d: np.ndarray, _: np.ndarray):
    return v + d * d, None


seeds = st.integers(0, 2**32 - 1)
hyper = {
    "eta": st.sampled_from([1e-2, 0.1, 1.0]),
    "b1": st.sampled_from([0.0, 0.5, 0.9]),
    "b2": st.sampled_from([0.9, 0.99]),
    "tau": st.sampled_from([1e-3, 1e-1]),
}


def params_of(rng: np.random.Generator) -> Arrays:
    return {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}


@settings(max_examples=20)
@given(seed=seeds, **hyper)
def test_server_adam_follows_reddi_et_al(
    seed: int, eta: float, b1: float, b2: float, tau: float
) -> None:
    rng = np.random.default_rng(seed)
    params = params_of(rng)
    plan = rounds_of(rng, params, 4, 5)
    got = run(chain(weighted_mean(), server_adam(eta, b1, b2, tau)), params, plan)
    want = reference(params, plan, adam_v(b2), eta, tau, b1, tau * tau)
    for g, w in zip(got, want, strict=True):
        for k in g:
            np.testing.assert_allclose(g[k], w[k], rtol=1e-10, atol=1e-12)


@settings(max_examples=20)
@given(seed=seeds, **hyper)
@example(seed=197, eta=1.0, b1=0.5, b2=0.99, tau=0.001)
def test_server_yogi_follows_reddi_et_al(
    seed: int, eta: float, b1: float, b2: float, tau: float
) -> None:
    rng = np.random.default_rng(seed)
    params = params_of(rng)
    plan = rounds_of(rng, params, 4, 5)
    got = run(chain(weighted_mean(), server_yogi(eta, b1, b2, tau)), params, plan)
    want = reference(params, plan, yogi_v(b2), eta, tau, b1, tau * tau)
    for g, w in zip(got, want, strict=True):
        for k in g:
            # Yogi's v can shrink towards 0, where eta / (sqrt(v) + tau) magnifies the
            # last-bit differences of two summation orders (seed 197, eta 1, tau 1e-3:
            # 3.9e-10 relative after four rounds), so this one is held to 1e-8.
            np.testing.assert_allclose(g[k], w[k], rtol=1e-8, atol=1e-12)


@settings(max_examples=20)
@given(seed=seeds, eta=hyper["eta"], b1=hyper["b1"], tau=hyper["tau"])
def test_server_adagrad_follows_reddi_et_al(seed: int, eta: float, b1: float, tau: float) -> None:
    rng = np.random.default_rng(seed)
    params = params_of(rng)
    plan = rounds_of(rng, params, 4, 5)
    got = run(chain(weighted_mean(), server_adagrad(eta, b1, tau)), params, plan)
    want = reference(params, plan, adagrad_v, eta, tau, b1, tau * tau)
    for g, w in zip(got, want, strict=True):
        for k in g:
            np.testing.assert_allclose(g[k], w[k], rtol=1e-10, atol=1e-12)


@settings(max_examples=20)
@given(
    seed=seeds,
    lr=st.sampled_from([0.5, 1.0, 2.0]),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    nesterov=st.booleans(),
)
def test_server_sgd_is_fedavgm(seed: int, lr: float, momentum: float, nesterov: bool) -> None:
    rng = np.random.default_rng(seed)
    params = params_of(rng)
    plan = rounds_of(rng, params, 4, 5)
    got = run(chain(weighted_mean(), server_sgd(lr, momentum, nesterov=nesterov)), params, plan)
    v = {k: np.zeros_like(p) for k, p in params.items()}
    x = dict(params)
    for contributions, g in zip(plan, got, strict=True):
        delta = fedavg_delta(params, contributions)
        for k in x:
            v[k] = momentum * v[k] + delta[k]
            step = delta[k] + momentum * v[k] if nesterov else v[k]
            x[k] = x[k] + lr * step
            np.testing.assert_allclose(g[k], x[k], rtol=1e-10, atol=1e-12)
        params = dict(x)


def test_server_sgd_with_defaults_is_fedavg_exactly() -> None:
    rng = np.random.default_rng(0)
    params = params_of(rng)
    plan = rounds_of(rng, params, 3, 4)
    plain = run(chain(weighted_mean()), params, plan)
    with_sgd = run(chain(weighted_mean(), server_sgd()), params, plan)
    for a, b in zip(plain, with_sgd, strict=True):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-15)


def test_moments_live_in_the_state_not_the_step() -> None:
    rng = np.random.default_rng(1)
    params = params_of(rng)
    plan = rounds_of(rng, params, 3, 4)
    step = chain(weighted_mean(), server_adam(0.1))
    first = run(step, params, plan)
    second = run(step, params, plan)  # the same step object, fresh init
    for a, b in zip(first, second, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_float32_and_integer_arrays() -> None:
    params = {"w": np.ones(3, dtype=np.float32), "n": np.array([5, 7])}
    contributions = [
        Contribution(0, 1, delta={"w": np.full(3, 0.5, np.float32), "n": np.array([2, 4])})
    ]
    step = chain(mean(), server_adam(eta=0.1))
    _, agg = run_round(step, step.init(params), 1, params, contributions)
    assert agg is not None
    new = agg.apply(params)
    assert new["w"].dtype == np.float32
    assert new["n"].tolist() == [7, 11]  # counters get the plain mean update
    m, v = 0.1 * 0.5, 0.99 * 1e-6 + 0.01 * 0.25
    np.testing.assert_allclose(new["w"], 1 + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-6)


@pytest.mark.parametrize("make", [server_adam, server_yogi, server_adagrad])
@pytest.mark.parametrize("size", [300.0, 1e-4])
def test_adaptive_moments_of_a_float16_model_neither_overflow_nor_underflow(
    make: Callable[..., Any], size: float
) -> None:
    """A squared update past float16's 65504 made v Inf and the step 0, silently."""
    steps: dict[Any, np.ndarray] = {}
    for dtype in (np.float16, np.float32):
        params = {"w": np.zeros(3, dtype)}
        step = chain(mean(), make(eta=0.5))
        state = step.init(params)
        for rnd in (1, 2):
            delta = {"w": np.full(3, size, dtype)}
            state, agg = run_round(step, state, rnd, params, [Contribution(0, 1, delta=delta)])
            assert agg is not None
            params = agg.apply(params)
        assert params["w"].dtype == dtype
        steps[dtype] = params["w"].astype(np.float64)
    assert np.all(np.isfinite(steps[np.float16]))
    assert np.all(steps[np.float16] > 0)
    np.testing.assert_allclose(steps[np.float16], steps[np.float32], rtol=2e-3)


def test_a_server_step_without_begin_is_an_error() -> None:
    step = server_adam()
    params = {"w": np.zeros(2)}
    with pytest.raises(AggregationError, match="Begin"):
        step.update(step.init(params), Aggregate(1, 1, 1, weights={"w": np.ones(2)}))
    _, out = step.update(step.init(params), Begin(1, params))
    assert out == (Begin(1, params),)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: server_adam(eta=0), "eta"),
        (lambda: server_adam(beta1=1.0), "beta1"),
        (lambda: server_yogi(beta2=-0.1), "beta2"),
        (lambda: server_adagrad(tau=0), "tau"),
        (lambda: server_sgd(momentum=1.0), "momentum"),
        (lambda: server_sgd(lr=float("nan")), "lr"),
    ],
)
def test_invalid_hyperparameters_are_refused(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: chain(weighted_mean(), server_sgd(0.5, 0.9)),
        lambda: chain(weighted_mean(), server_sgd(1.0, 0.9, nesterov=True)),
        lambda: chain(weighted_mean(), server_adam()),
        lambda: chain(weighted_mean(), server_yogi()),
        lambda: chain(mean(), server_adagrad()),
    ],
)
def test_server_optimizers_pass_check_aggregator(make: Any) -> None:
    check_aggregator(make)


@pytest.mark.parametrize(
    "make",
    [
        # lr 2: the step 2 * 1.5e308 overflows (the mean itself is finite)
        lambda: server_sgd(2.0, momentum=0.9),
        lambda: server_adam(0.1),
        lambda: server_yogi(0.1),
        lambda: server_adagrad(0.1),
    ],
)
def test_an_overflowing_round_leaves_the_moments_as_they_were(make: Callable[[], Any]) -> None:
    """The loop refuses a non-finite step and keeps the model; the moments kept inf or NaN.

    Every later step was then NaN (or 0 past an infinite v) and refused too: one
    round whose step or moments overflowed (finite updates of 1.5e308) stopped the
    run learning for good.
    """
    params = {"w": np.zeros(2)}
    step = chain(weighted_mean(), make())
    huge = [covey.FitResult(delta={"w": np.full(2, 1.5e308)}, num_examples=1)] * 2
    fine = [covey.FitResult(delta={"w": np.full(2, 0.1)}, num_examples=1)] * 2
    strategy = covey.Strategy(aggregator=step)
    state = step.init(params)
    with np.errstate(over="ignore", invalid="ignore"):
        _, _, state = _fold_round(strategy, params, huge, state)
    fresh = step.init(params)
    for name in ("m", "v"):
        for k in params:
            np.testing.assert_array_equal(getattr(state[1], name)[k], getattr(fresh[1], name)[k])
    new, ok, _ = _fold_round(strategy, params, fine, state)
    assert ok
    assert np.all(np.isfinite(new["w"]))
    assert np.all(new["w"] > 0)


def test_a_round_that_overflows_adams_moments_says_so_in_its_record() -> None:
    # Its step came out 0 (m / sqrt(inf)): the round read as aggregated, with nothing
    # in its record to say its update was lost.
    class Huge(covey.Client):
        def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
            size = 1.5e308 if config["round"] == 1 else 0.1
            return covey.FitResult(delta={"w": np.full(2, size)}, num_examples=1)

    result = covey.simulate(
        lambda cid: Huge(), 2, 2, covey.FedAdam(fraction_evaluate=0.0), {"w": np.zeros(2)}
    )
    said = result.history.rounds[1].aggregate_info["overflow"]
    assert said == "server_adam(): the round's update overflowed its moments; they are kept"
    assert "overflow" not in result.history.rounds[2].aggregate_info


def _fold_round(strategy: Any, params: Arrays, results: list[Any], state: Any) -> Any:
    """One round as the loop runs it: the new weights, whether the loop takes them, the state."""
    spec = WeightsSpec.of(params)
    step = strategy.aggregator
    state, _ = step.feed(state, Begin(1, params))
    for cid, result in enumerate(results):
        state, _ = step.feed(state, contribution(cid, result, spec))
    state, out = step.feed(state, End(1))
    aggregate = find_aggregate(out)
    assert aggregate is not None
    new = aggregate.apply(params)
    return new, spec.conforms(new), state


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda **kw: server_sgd(lr=1.0, momentum=0.9, **kw),
        lambda **kw: server_adam(eta=0.1, **kw),
        lambda **kw: server_yogi(eta=0.1, **kw),
        lambda **kw: server_adagrad(eta=0.1, **kw),
    ],
    ids=["sgd-momentum", "adam", "yogi", "adagrad"],
)
def test_running_statistics_take_the_clients_mean_not_an_optimizer_step(
    optimizer: Callable[..., Any],
) -> None:
    """A momentum or adaptive step on a BatchNorm variance overshoots it below zero."""
    params = {"fc.weight": np.ones(3), "bn.running_var": np.ones(3), "bn.running_mean": np.zeros(3)}
    step = chain(weighted_mean(), optimizer())
    state = step.init(params)
    for rnd, var in enumerate([4.0, 0.5, 0.1, 0.05], start=1):
        new = {"fc.weight": params["fc.weight"] + 1.0, "bn.running_var": np.full(3, var)}
        new["bn.running_mean"] = np.full(3, float(rnd))
        contributions = [Contribution(0, 1, weights=new), Contribution(1, 3, weights=new)]
        state, agg = run_round(step, state, rnd, params, contributions)
        assert agg is not None
        params = agg.apply(params)
        assert params["bn.running_var"].tolist() == pytest.approx([var] * 3)  # the clients' mean
        assert params["bn.running_mean"].tolist() == pytest.approx([float(rnd)] * 3)
    assert params["fc.weight"][0] != 5.0  # the weights still take the optimizer's steps
    # average=() puts every float array through the optimizer, as before.
    step = chain(weighted_mean(), server_sgd(momentum=0.9, average=()))
    state = step.init({"bn.running_var": np.ones(1)})
    _, agg = run_round(
        step,
        state,
        1,
        {"bn.running_var": np.ones(1)},
        [Contribution(0, 1, weights={"bn.running_var": np.full(1, 3.0)})],
    )
    assert agg is not None
    with pytest.raises(TypeError, match="average= takes a sequence of name patterns"):
        server_sgd(average="*running_var")
