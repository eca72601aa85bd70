"""Per-client steps, q-FedAvg, SCAFFOLD's server step, composition, and check_aggregator itself."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import covey
from covey.aggregate import (
    Aggregate,
    AggregationError,
    Begin,
    Broadcast,
    Contribution,
    End,
    Event,
    Step,
    chain,
    clip_norm,
    mean,
    median,
    polynomial_staleness,
    qfedavg,
    run_round,
    scaffold,
    server_adam,
    server_sgd,
    skip_nonfinite,
    staleness_weight,
    weighted_mean,
)
from covey.testing import check_aggregator, random_contributions, random_params

Arrays = dict[str, np.ndarray]
seeds = st.integers(0, 2**32 - 1)


def contributions_of(rng: np.random.Generator, n: int, scale: float = 1.0):
    params = {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
    out = []
    for cid in range(n):
        delta = {k: scale * rng.normal(size=v.shape) for k, v in params.items()}
        if cid % 2:
            out.append(Contribution(cid, int(rng.integers(1, 20)), delta=delta))
        else:
            out.append(
                Contribution(
                    cid, int(rng.integers(1, 20)), weights={k: params[k] + delta[k] for k in params}
                )
            )
    return params, out


def flat(values: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(v) for v in values.values()])


def aggregate(step: Step, params: Arrays, contributions: list[Contribution]) -> Aggregate:
    _, agg = run_round(step, step.init(params), 1, params, contributions)
    assert agg is not None
    return agg


# -- clip_norm -----------------------------------------------------------------------------


@settings(max_examples=30)
@given(seed=seeds, bound=st.sampled_from([0.1, 1.0, 3.0, 100.0]))
def test_clip_norm_then_mean_matches_hand_math(seed: int, bound: float) -> None:
    rng = np.random.default_rng(seed)
    params, contributions = contributions_of(rng, 6, scale=1.5)
    agg = aggregate(chain(clip_norm(bound), weighted_mean()), params, contributions)
    total = sum(c.num_examples for c in contributions)
    expected = {k: np.zeros_like(v) for k, v in params.items()}
    clipped = []
    for c in contributions:
        d = c.as_delta(params)
        norm = np.linalg.norm(flat(d))
        factor = min(1.0, float(bound / norm))
        if factor < 1.0:
            clipped.append(c.cid)
        for k in expected:
            expected[k] += c.num_examples * factor * d[k] / total
    got = agg.as_delta(params)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-10, atol=1e-12)
    assert agg.info["clipped"] == clipped


def test_clip_norm_of_a_float16_model_takes_its_norm_without_overflow() -> None:
    """The squared norm (here 40,000) past float16's 65504 was Inf: every update went to 0."""
    params = {"w": np.zeros(10_000, np.float16)}
    step = chain(clip_norm(300.0), weighted_mean())
    contributions = [
        Contribution(cid, 1, delta={"w": np.full(10_000, value, np.float16)})
        for cid, value in enumerate([1.0, 3.0, 4.0])  # norms 100, 300 and 400
    ]
    _, agg = run_round(step, step.init(params), 1, params, contributions)
    assert agg is not None
    assert agg.info == {"clipped": [2]}
    new = agg.apply(params)
    assert new["w"].dtype == np.float16
    np.testing.assert_allclose(new["w"].astype(np.float64), (1.0 + 3.0 + 3.0) / 3, rtol=1e-3)


def test_clip_norm_of_a_large_float32_update_just_over_the_bound_clips_it() -> None:
    """Summed in float32, these squares lose about 1.6e-4 of the norm: over, read as under."""
    update = np.full(1_000_000, 1e-3, dtype=np.float32)
    update[0] = 1.0
    true_norm = float(np.sqrt(np.sum(np.square(update.astype(np.float64)))))
    bound = true_norm * (1 - 5e-5)
    params = {"w": np.zeros_like(update)}
    step = chain(clip_norm(bound), weighted_mean())
    _, agg = run_round(
        step, step.init(params), 1, params, [Contribution(0, 1, delta={"w": update})]
    )
    assert agg is not None
    assert agg.info == {"clipped": [0]}
    moved = agg.apply(params)["w"].astype(np.float64)
    assert float(np.sqrt(np.sum(np.square(moved)))) <= bound * (1 + 1e-6)


def test_clip_norm_leaves_small_updates_untouched() -> None:
    params = {"w": np.zeros(2)}
    small = Contribution(0, 1, weights={"w": np.array([0.3, 0.4])})
    step = clip_norm(1.0)
    state = step.init(params)
    state, _ = step.update(state, Begin(1, params))
    state, out = step.update(state, small)
    assert out == (small,)
    big = Contribution(1, 1, weights={"w": np.array([3.0, 4.0])})
    state, (clipped,) = step.update(state, big)
    assert isinstance(clipped, Contribution)
    assert clipped.weights is None
    assert clipped.delta is not None
    np.testing.assert_allclose(clipped.delta["w"], [0.6, 0.8])
    state, (end,) = step.update(state, End(1))
    assert isinstance(end, End)
    assert end.info == {"clipped": [1]}


# -- skip_nonfinite ------------------------------------------------------------------------


def test_skip_nonfinite_drops_and_records_bad_updates() -> None:
    params = {"w": np.zeros(2)}
    good = [Contribution(i, 1, delta={"w": np.full(2, float(i))}) for i in range(3)]
    bad = [
        Contribution(7, 1, delta={"w": np.array([np.nan, 0.0])}),
        Contribution(8, 1, weights={"w": np.array([np.inf, 0.0])}),
        Contribution(9, 1, delta={"w": np.ones(2)}, extras={"x": {"w": np.array([0, np.nan])}}),
    ]
    agg = aggregate(chain(skip_nonfinite(), mean()), params, [*good, *bad])
    assert agg.num_clients == 3
    assert agg.info["nonfinite"] == [7, 8, 9]
    np.testing.assert_array_equal(agg.as_delta(params)["w"], [1.0, 1.0])


def test_infos_of_several_steps_are_merged() -> None:
    params = {"w": np.zeros(2)}
    contributions = [
        Contribution(0, 1, delta={"w": np.array([30.0, 40.0])}),
        Contribution(1, 1, delta={"w": np.array([np.nan, 1.0])}),
        Contribution(2, 1, delta={"w": np.array([0.1, 0.1])}),
    ]
    step = chain(skip_nonfinite(), clip_norm(5.0), weighted_mean(), server_adam())
    agg = aggregate(step, params, contributions)
    assert agg.info == {"nonfinite": [1], "clipped": [0]}


# -- staleness -----------------------------------------------------------------------------


@settings(max_examples=20)
@given(seed=seeds, exponent=st.sampled_from([0.0, 0.5, 1.0]))
def test_staleness_weight_scales_updates(seed: int, exponent: float) -> None:
    rng = np.random.default_rng(seed)
    params, contributions = contributions_of(rng, 5)
    stale = [replace(c, staleness=int(rng.integers(0, 5))) for c in contributions]
    fn = polynomial_staleness(exponent)
    agg = aggregate(chain(staleness_weight(fn), weighted_mean()), params, stale)
    total = sum(c.num_examples for c in stale)
    expected = sum(
        c.num_examples * (1 + c.staleness) ** -exponent * flat(c.as_delta(params)) for c in stale
    )
    np.testing.assert_allclose(flat(agg.as_delta(params)), expected / total, atol=1e-12)
    scaled = [c.cid for c in stale if c.staleness > 0 and exponent > 0]
    assert agg.info["stale"] == scaled


def test_fedbuff_default_staleness_is_one_over_sqrt() -> None:
    weight = polynomial_staleness()
    assert weight(0) == 1.0
    assert weight(3) == pytest.approx(0.5)
    step = staleness_weight(lambda tau: -1.0)
    state = step.init({"w": np.zeros(1)})
    state, _ = step.update(state, Begin(1, {"w": np.zeros(1)}))
    with pytest.raises(ValueError, match="staleness function"):
        step.update(state, Contribution(0, 1, delta={"w": np.ones(1)}, staleness=2))


@pytest.mark.parametrize("gives", [None, "a", "0.5", 2.0, 1e300, float("nan")])
def test_a_staleness_function_giving_no_factor_from_0_to_1_is_named(gives: Any) -> None:
    # None gave a bare TypeError from float(), "a" a bare ValueError; "0.5" was taken
    # as 0.5 and 2 or 1e300 (an update weighed up for being stale) without a word.
    def mine(tau: int) -> Any:
        return gives

    step = staleness_weight(mine)
    state = step.init({"w": np.zeros(1)})
    state, _ = step.update(state, Begin(1, {"w": np.zeros(1)}))
    with pytest.raises(ValueError, match=r"the staleness function '.*mine' gave") as refused:
        step.update(state, Contribution(0, 1, delta={"w": np.ones(1)}, staleness=2))
    assert "must return a number from 0 to 1" in str(refused.value)


def test_a_staleness_function_that_raises_is_named() -> None:
    def mine(tau: int) -> float:
        raise KeyError(tau)

    step = staleness_weight(mine)
    state = step.init({"w": np.zeros(1)})
    state, _ = step.update(state, Begin(1, {"w": np.zeros(1)}))
    with pytest.raises(ValueError, match=r"the staleness function '.*mine' raised KeyError") as e:
        step.update(state, Contribution(4, 1, delta={"w": np.ones(1)}, staleness=2))
    assert "for client 4's update of staleness 2" in str(e.value)
    assert isinstance(e.value.__cause__, KeyError)


# -- q-FedAvg ------------------------------------------------------------------------------


@settings(max_examples=30)
@given(seed=seeds, q=st.sampled_from([0.0, 0.2, 1.0, 5.0]), lr=st.sampled_from([0.01, 0.1, 1.0]))
def test_qfedavg_matches_li_et_al(seed: int, q: float, lr: float) -> None:
    rng = np.random.default_rng(seed)
    params, contributions = contributions_of(rng, 6, scale=0.1)
    contributions = [
        replace(c, metrics={"loss": float(rng.uniform(0.0, 3.0))}) for c in contributions
    ]
    agg = aggregate(qfedavg(q, lr), params, contributions)
    L = 1.0 / lr
    deltas, hs = [], []
    for c in contributions:
        F = c.metrics["loss"] + 1e-10
        dw = L * (flat(params) - flat(c.as_weights(params)))  # L (w - w_k)
        deltas.append(F**q * dw)
        hs.append(q * F ** (q - 1) * np.sum(dw**2) + L * F**q)
    new = flat(params) - sum(deltas) / sum(hs)
    np.testing.assert_allclose(flat(agg.apply(params)), new, rtol=1e-9, atol=1e-12)


def test_qfedavg_needs_the_loss_metric() -> None:
    params = {"w": np.zeros(2)}
    with pytest.raises(AggregationError, match="'loss'"):
        aggregate(qfedavg(), params, [Contribution(3, 1, delta={"w": np.ones(2)})])
    bad = Contribution(3, 1, delta={"w": np.ones(2)}, metrics={"train_loss": -1.0})
    with pytest.raises(AggregationError, match="train_loss=-1"):
        aggregate(qfedavg(loss_key="train_loss"), params, [bad])


def test_qfedavg_gives_integer_and_bool_arrays_the_mean_change_outside_its_rule() -> None:
    # A BatchNorm counter that advanced by 50 entered ||Dw_k||: the float step shrank
    # about 2,700-fold, and the counter itself, scaled by 1 / sum h_k, never moved.
    floats = {"w": np.zeros(2)}
    params = {**floats, "steps": np.array(7, np.int64), "mask": np.array([False, True, True])}
    flips = [[True, False, True], [True, False, False], [False, False, True], [True, True, True]]
    contributions, plain = [], []
    for k in range(4):
        metrics: dict[str, Any] = {"loss": 1.0 + k}
        delta = {"w": np.full(2, 0.1 * (k + 1))}
        plain.append(Contribution(k, 10, delta=delta, metrics=metrics))
        extra = {"steps": np.array(48 + 2 * k, np.int64), "mask": np.array(flips[k])}
        contributions.append(Contribution(k, 10, delta={**delta, **extra}, metrics=metrics))
    new = aggregate(qfedavg(0.2, 0.1), params, contributions).apply(params)
    alone = aggregate(qfedavg(0.2, 0.1), floats, plain).apply(floats)
    np.testing.assert_array_equal(new["w"], alone["w"])
    assert new["steps"] == 7 + 51  # the mean change of 48, 50, 52 and 54
    # entry 0 flips for 3 clients of 4, entry 1 for 1, entry 2 for 3
    np.testing.assert_array_equal(new["mask"], [True, True, False])


# -- SCAFFOLD's server step -------------------------------------------------------------------


def test_scaffold_broadcasts_c_and_updates_it_by_sum_over_n() -> None:
    rng = np.random.default_rng(0)
    params, contributions = contributions_of(rng, 4)
    dcs = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in contributions]
    contributions = [
        replace(c, extras={"scaffold_delta_c": dc})
        for c, dc in zip(contributions, dcs, strict=True)
    ]
    step = chain(scaffold(num_clients=10), mean())
    state = step.init(params)
    state, out = step.update(state, Begin(1, params))
    (broadcast,) = [e for e in out if isinstance(e, Broadcast)]
    assert all(np.all(v == 0) for v in broadcast.extras["scaffold_c"].values())
    for c in contributions:
        state, _ = step.update(state, c)
    state, out = step.update(state, End(1))
    (agg,) = out
    assert isinstance(agg, Aggregate)
    assert agg.info["scaffold_clients"] == 4
    expected_delta = sum(flat(c.as_delta(params)) for c in contributions) / 4
    np.testing.assert_allclose(flat(agg.as_delta(params)), expected_delta, atol=1e-12)
    state, out = step.update(state, Begin(2, params))
    (broadcast,) = [e for e in out if isinstance(e, Broadcast)]
    expected_c = sum(flat(dc) for dc in dcs) / 10
    np.testing.assert_allclose(flat(broadcast.extras["scaffold_c"]), expected_c, atol=1e-12)
    with pytest.raises(ValueError, match="read-only"):
        broadcast.extras["scaffold_c"]["b"][0] = 1.0


def test_scaffold_leaves_out_clients_without_the_control_update() -> None:
    params = {"w": np.zeros(2)}
    plain = Contribution(5, 1, delta={"w": np.ones(2)})
    good = Contribution(6, 1, delta={"w": np.full(2, 3.0)}, extras={"scaffold_delta_c": params})
    agg = aggregate(chain(scaffold(3), mean()), params, [plain, good])
    assert agg.info["scaffold_missing"] == [5]
    np.testing.assert_array_equal(agg.as_delta(params)["w"], [3.0, 3.0])
    with pytest.raises(AggregationError, match="no client sent the 'scaffold_delta_c'"):
        aggregate(chain(scaffold(3), mean()), params, [plain])


# -- composition ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "said"),
    [
        # It was FedAvg: the server step got no aggregate and passed everything on.
        (
            lambda: (server_adam(eta=0.1), weighted_mean()),
            "the server step server_adam() comes before the reducer weighted_mean()",
        ),
        # It clipped nothing: no contribution comes after the reducer.
        (
            lambda: (weighted_mean(), clip_norm(1.0)),
            "the per-client step clip_norm() comes after the reducer weighted_mean()",
        ),
        (
            lambda: (weighted_mean(), server_sgd(), skip_nonfinite()),
            "the per-client step skip_nonfinite() comes after the server step server_sgd()",
        ),
        (lambda: (weighted_mean(), median()), "weighted_mean() and median() are both reducers"),
        # In a chain inside a chain too.
        (
            lambda: (chain(clip_norm(1.0), server_sgd()), weighted_mean()),
            "the server step server_sgd() comes before the reducer weighted_mean()",
        ),
    ],
)
def test_a_chain_whose_steps_are_out_of_order_is_refused(steps: Any, said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        chain(*steps())


def test_steps_in_order_and_steps_of_no_kind_are_chained() -> None:
    def passing(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        return state, (event,)

    own = Step(lambda p: None, passing)  # written by hand: no kind, anywhere
    chain(own, skip_nonfinite(), clip_norm(1.0), own, weighted_mean(), own, server_adam(), own)
    chain(chain(skip_nonfinite(), clip_norm(1.0)), chain(median(), server_sgd()))
    chain(server_sgd(), server_adam())  # server steps after one another


@pytest.mark.parametrize(
    ("step", "said"),
    [
        (lambda: server_adam(), "(server_adam())"),
        (lambda: clip_norm(1.0), "(clip_norm())"),
        (lambda: chain(clip_norm(1.0), server_adam()), "(clip_norm(), server_adam())"),
        (lambda: chain(skip_nonfinite(), scaffold(3)), "(skip_nonfinite(), scaffold())"),
    ],
)
def test_an_aggregator_without_a_reducer_is_refused(step: Any, said: str) -> None:
    # It ran every round, each logging that no aggregate came, and never changed the model.
    with pytest.raises(ValueError, match=re.escape(f"the aggregator {said} has no reducer")):
        covey.Strategy(aggregator=step())


def test_a_chain_without_a_reducer_is_still_a_part_of_a_longer_chain() -> None:
    def passing(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        return state, (event,)

    own = Step(lambda p: None, passing)  # written by hand: it may be the reducer
    covey.Strategy(aggregator=chain(chain(skip_nonfinite(), clip_norm(1.0)), weighted_mean()))
    covey.Strategy(aggregator=chain(clip_norm(1.0), own, server_adam()))
    covey.Strategy(aggregator=own)


def test_begin_reaches_every_step_of_a_chain() -> None:
    seen: list[tuple[str, int]] = []

    def spy(name: str) -> Step:
        def update(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
            if isinstance(event, Begin):
                seen.append((name, event.round))
            return state, (event,)

        return Step(lambda p: None, update)

    step = chain(spy("before"), weighted_mean(), spy("after"), server_sgd(), spy("last"))
    state = step.init({"w": np.zeros(1)})
    state, out = step.update(state, Begin(4, {"w": np.zeros(1)}))
    assert seen == [("before", 4), ("after", 4), ("last", 4)]
    assert out == (Begin(4, {"w": np.zeros(1)}),)


@settings(max_examples=20)
@given(seed=seeds)
def test_a_long_chain_equals_the_same_math_by_hand(seed: int) -> None:
    """skip_nonfinite -> clip_norm -> weighted_mean -> server_adam, over two rounds."""
    rng = np.random.default_rng(seed)
    params, contributions = contributions_of(rng, 5, scale=2.0)
    contributions.append(
        Contribution(99, 5, delta={k: np.full(v.shape, np.inf) for k, v in params.items()})
    )
    step = chain(
        skip_nonfinite(), clip_norm(2.0), weighted_mean(), server_adam(0.1, 0.9, 0.99, 1e-2)
    )
    state = step.init(params)
    x = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.full(p.shape, 1e-4) for k, p in params.items()}
    for rnd in (1, 2):
        state, agg = run_round(step, state, rnd, x, contributions)
        assert agg is not None
        got = agg.apply(x)
        good = contributions[:-1]
        total = sum(c.num_examples for c in good)
        deltas = [c.as_delta(x) for c in good]
        factors = [min(1.0, 2.0 / np.linalg.norm(flat(dk))) for dk in deltas]
        for k in x:
            d = sum(
                c.num_examples * f * dk[k] / total
                for c, f, dk in zip(good, factors, deltas, strict=True)
            )
            m[k] = 0.9 * m[k] + 0.1 * d
            v[k] = 0.99 * v[k] + 0.01 * d * d
            x[k] = x[k] + 0.1 * m[k] / (np.sqrt(v[k]) + 1e-2)
            np.testing.assert_allclose(got[k], x[k], rtol=1e-10, atol=1e-12)
        x = {k: np.array(got[k]) for k in got}


# -- check_aggregator ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        weighted_mean,
        mean,
        lambda: chain(clip_norm(1.0), weighted_mean()),
        lambda: chain(skip_nonfinite(), median()),
        lambda: chain(staleness_weight(), weighted_mean()),
        qfedavg,
        lambda: qfedavg(q=2.0, lr=0.5),
        lambda: chain(scaffold(20), mean()),
    ],
)
def test_steps_pass_check_aggregator(make: Any) -> None:
    check_aggregator(make)


def test_check_aggregator_given_a_step_instead_of_a_function_says_to_wrap_it() -> None:
    # Before: Python's bare "'Step' object is not callable", from inside check_aggregator.
    with pytest.raises(TypeError, match=r"takes a function that builds the step.* got Step: wrap"):
        check_aggregator(chain(clip_norm(1.0), weighted_mean()))  # type: ignore[arg-type]


def mutating_step() -> Step:
    """A broken reducer: scales the first contribution's delta in place."""

    def update(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, Contribution) and event.delta is not None:
            event.delta["w"] *= 2.0
        return state, (event,)

    return chain(Step(lambda p: None, update), weighted_mean())


def stateful_step() -> Step:
    """A broken step: keeps state in a closure, so a fresh init does not start over."""
    calls = [0]

    def update(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, Aggregate):
            calls[0] += 1
            delta = {k: v * calls[0] for k, v in event.as_delta(state).items()}
            return state, (replace(event, weights=None, delta=delta),)
        if isinstance(event, Begin):
            return event.params, (event,)
        return state, (event,)

    shared = Step(lambda p: None, update)
    return chain(weighted_mean(), shared)


def order_dependent_step() -> Step:
    """A broken reducer: keeps only the first contribution."""

    def update(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, Contribution):
            return (state if state is not None else event), ()
        if isinstance(event, End) and state is not None:
            return None, (Aggregate(event.round, 1, 1, delta=state.as_delta(state_params[0])),)
        if isinstance(event, Begin):
            state_params[0] = event.params
            return None, ()
        return state, (event,)

    state_params: list[Any] = [None]
    return Step(lambda p: None, update)


def test_check_aggregator_catches_broken_steps() -> None:
    with pytest.raises(ValueError, match="read-only"):
        check_aggregator(mutating_step)
    make_once = stateful_step()
    with pytest.raises(AssertionError, match="run again from init"):
        check_aggregator(lambda: make_once)
    with pytest.raises(AssertionError, match="shuffled"):
        check_aggregator(order_dependent_step, with_int=False)
    check_aggregator(order_dependent_step, with_int=False, order_invariant=False)
    with pytest.raises(AssertionError, match="no Aggregate"):
        check_aggregator(lambda: clip_norm(1.0))  # a per-client step alone


def test_random_helpers_are_reproducible() -> None:
    a = random_params(np.random.default_rng(5))
    b = random_params(np.random.default_rng(5))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["count"].dtype.kind == "i"
    cs = random_contributions(a, 4, np.random.default_rng(0), form="delta")
    assert all(c.delta is not None and "scaffold_delta_c" in c.extras for c in cs)


def test_random_contributions_names_its_forms_and_refuses_others() -> None:
    # A misspelt form ("deltas") silently gave contributions that send weights.
    rng = np.random.default_rng(0)
    params = random_params(rng)
    assert all(c.delta is not None for c in random_contributions(params, 3, rng, form="delta"))
    assert all(c.weights is not None for c in random_contributions(params, 3, rng, form="weights"))
    with pytest.raises(ValueError, match="form must be 'mixed', 'delta' or 'weights'"):
        random_contributions(params, 3, rng, form="deltas")


@pytest.mark.parametrize(
    ("q", "loss", "eps"),
    [(0.5, 0.0, 0.0), (5.0, 1e300, 1e-10), (15.0, 1e30, 1e-10)],
)
def test_qfedavg_refuses_a_loss_whose_weight_is_not_finite_for_that_client_only(
    q: float, loss: float, eps: float
) -> None:
    # 0.0 ** -0.5 raised ZeroDivisionError and 1e300 ** 5.0 OverflowError out of the
    # step, which stopped the run instead of refusing the one client.
    params = {"w": np.zeros(2)}
    step = qfedavg(q, 0.1, eps=eps)
    state = step.init(params)
    state, _ = step.update(state, Begin(1, params))
    bad = Contribution(3, 1, delta={"w": np.ones(2)}, metrics={"loss": loss})
    with pytest.raises(AggregationError, match=r"client 3.*loss="):
        step.update(state, bad)
    good = Contribution(4, 1, delta={"w": np.ones(2)}, metrics={"loss": 1.0})
    state, _ = step.update(state, good)
    state, out = step.update(state, End(1))
    (agg,) = out
    assert isinstance(agg, Aggregate)
    assert agg.num_clients == 1


def test_qfedavg_with_q_0_takes_a_zero_loss_without_eps() -> None:
    # With q = 0, h_k = L whatever the loss (the first term of h_k vanishes).
    params = {"w": np.zeros(2)}
    c = Contribution(0, 1, delta={"w": np.ones(2)}, metrics={"loss": 0.0})
    agg = aggregate(qfedavg(0.0, 0.1, eps=0.0), params, [c])
    np.testing.assert_allclose(agg.apply(params)["w"], [1.0, 1.0])


def test_clip_norm_scales_an_update_whose_squared_norm_overflows_to_the_bound() -> None:
    """A squared norm past float64's range was inf, the factor C/inf = 0: the update vanished."""
    params = {"w": np.zeros(3), "n": np.zeros(2, np.int64)}
    huge = Contribution(0, 1, delta={"w": np.array([3e200, -4e200, 0.0]), "n": np.array([1, 0])})
    step = clip_norm(5.0)
    state = step.init(params)
    state, _ = step.update(state, Begin(1, params))
    state, (clipped,) = step.update(state, huge)
    assert isinstance(clipped, Contribution)
    assert clipped.delta is not None
    np.testing.assert_allclose(clipped.delta["w"], [3.0, -4.0, 0.0])
    assert clipped.delta["n"].tolist() == [0, 0]  # 1e-200 of a counter rounds to 0
