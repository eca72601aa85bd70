"""covey.aggregate: the weighted mean against hand-computed math, and step composition."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covey.aggregate import (
    Aggregate,
    AggregationError,
    Begin,
    Contribution,
    End,
    Event,
    Step,
    chain,
    mean,
    median,
    run_round,
    server_adam,
    trimmed_mean,
    weighted_mean,
)

Form = Literal["weights", "delta", "mixed"]
Arrays = dict[str, np.ndarray]


def make_round(
    rng: np.random.Generator, dtype: Any, form: Form, num_clients: int | None = None
) -> tuple[Arrays, list[Contribution]]:
    """Random global params and contributions (weights, deltas or both kinds)."""
    shapes = [tuple(rng.integers(1, 5, size=rng.integers(0, 3))) for _ in range(rng.integers(1, 4))]
    params = {f"p{i}": np.asarray(rng.normal(size=s), dtype=dtype) for i, s in enumerate(shapes)}
    k = int(rng.integers(1, 7)) if num_clients is None else num_clients
    contributions = []
    for cid in range(k):
        local = {name: np.asarray(rng.normal(size=p.shape), dtype) for name, p in params.items()}
        n = int(rng.integers(1, 1000))
        as_delta = form == "delta" or (form == "mixed" and cid % 2 == 1)
        if as_delta:
            delta = {name: np.asarray(local[name] - params[name], dtype) for name in params}
            contributions.append(Contribution(cid, n, delta=delta, metrics={"i": cid}))
        else:
            contributions.append(Contribution(cid, n, weights=local))
    return params, contributions


def hand_weighted_mean(params: Arrays, contributions: list[Contribution], weighted: bool = True):
    """sum_k n_k w_k / sum_k n_k in float64, with w_k = params + delta_k for delta senders."""
    total = sum(c.num_examples if weighted else 1 for c in contributions)
    out = {}
    for name, p in params.items():
        acc = np.zeros(p.shape, dtype=np.float64)
        for c in contributions:
            n = c.num_examples if weighted else 1
            if c.weights is not None:
                w = c.weights[name].astype(np.float64)
            else:
                assert c.delta is not None
                w = p.astype(np.float64) + c.delta[name].astype(np.float64)
            acc += n * w
        out[name] = acc / total
    return out


def snapshot(params: Arrays, contributions: list[Contribution]) -> list[bytes]:
    blobs = [a.tobytes() for a in params.values()]
    for c in contributions:
        for part in (c.weights, c.delta):
            if part is not None:
                blobs.extend(a.tobytes() for a in part.values())
    return blobs


def read_only(params: Arrays, contributions: list[Contribution]) -> None:
    arrays = list(params.values())
    for c in contributions:
        for part in (c.weights, c.delta):
            if part is not None:
                arrays.extend(part.values())
    for a in arrays:
        a.flags.writeable = False


def aggregate_round(
    step: Step, params: Arrays, contributions: list[Contribution], round: int = 1
) -> Aggregate:
    _, agg = run_round(step, step.init(params), round, params, contributions)
    assert agg is not None
    return agg


TOL = {np.float32: {"rtol": 2e-5, "atol": 2e-5}, np.float64: {"rtol": 1e-12, "atol": 1e-12}}


@settings(max_examples=60)
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
    form=st.sampled_from(["weights", "delta", "mixed"]),
)
def test_weighted_mean_matches_hand_computation(seed: int, dtype: Any, form: Form) -> None:
    rng = np.random.default_rng(seed)
    params, contributions = make_round(rng, dtype, form)
    before = snapshot(params, contributions)
    read_only(params, contributions)  # any in-place write to an input would raise
    agg = aggregate_round(weighted_mean(), params, contributions)
    new = agg.apply(params)
    expected = hand_weighted_mean(params, contributions)
    assert list(new) == list(params)
    for name in params:
        assert new[name].dtype == dtype
        assert new[name].shape == params[name].shape
        np.testing.assert_allclose(new[name], expected[name], **TOL[dtype])  # type: ignore[call-overload]
        for c in contributions:
            for part in (c.weights, c.delta):
                if part is not None:
                    assert not np.shares_memory(new[name], part[name])
        assert not np.shares_memory(new[name], params[name])
    assert snapshot(params, contributions) == before
    assert agg.num_clients == len(contributions)
    assert agg.num_examples == sum(c.num_examples for c in contributions)
    assert agg.round == 1
    # weights-only rounds give full weights; any delta gives a delta.
    if all(c.delta is None for c in contributions):
        assert agg.weights is not None
        assert agg.delta is None
    else:
        assert agg.delta is not None
        assert agg.weights is None


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), form=st.sampled_from(["weights", "delta", "mixed"]))
def test_mean_ignores_num_examples(seed: int, form: Form) -> None:
    rng = np.random.default_rng(seed)
    params, contributions = make_round(rng, np.float64, form)
    rng.shuffle(contributions)  # other counts: each client counts once, whatever its count
    agg = aggregate_round(mean(), params, contributions)
    new = agg.apply(params)
    expected = hand_weighted_mean(params, contributions, weighted=False)
    for name in params:
        np.testing.assert_allclose(new[name], expected[name], rtol=1e-12, atol=1e-12)
    assert "no_examples" not in agg.info


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), form=st.sampled_from(["weights", "delta", "mixed"]))
def test_mean_leaves_out_replies_of_no_examples(seed: int, form: Form) -> None:
    # A reply of 0 examples (a client without data, its update the model it got) took
    # one vote in the unweighted mean: a vote for no change.
    rng = np.random.default_rng(seed)
    params, trained = make_round(rng, np.float64, form)
    empty = [
        Contribution(90 + i, 0, delta={k: np.zeros_like(v) for k, v in params.items()})
        for i in range(2)
    ]
    agg = aggregate_round(mean(), params, [*trained, *empty])
    new = agg.apply(params)
    expected = hand_weighted_mean(params, trained, weighted=False)
    for name in params:
        np.testing.assert_allclose(new[name], expected[name], rtol=1e-12, atol=1e-12)
    assert (agg.num_clients, agg.info["no_examples"]) == (len(trained), 2)


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), form=st.sampled_from(["weights", "delta", "mixed"]))
def test_result_does_not_depend_on_feed_order_beyond_rounding(seed: int, form: Form) -> None:
    rng = np.random.default_rng(seed)
    params, contributions = make_round(rng, np.float64, form, num_clients=5)
    reference = aggregate_round(weighted_mean(), params, contributions).apply(params)
    shuffled = [contributions[i] for i in rng.permutation(len(contributions))]
    other = aggregate_round(weighted_mean(), params, shuffled).apply(params)
    for name in params:
        np.testing.assert_allclose(other[name], reference[name], rtol=1e-12, atol=1e-12)


def test_zero_example_contributions_carry_no_weight_and_are_counted_apart() -> None:
    params = {"w": np.zeros(2)}
    contributions = [
        Contribution(0, 3, weights={"w": np.array([1.0, 1.0])}),
        Contribution(1, 0, weights={"w": np.array([100.0, 100.0])}),
        Contribution(2, 1, weights={"w": np.array([5.0, -3.0])}),
    ]
    agg = aggregate_round(weighted_mean(), params, contributions)
    assert agg.apply(params)["w"].tolist() == [2.0, 0.0]
    assert agg.num_clients == 2  # those combined
    assert agg.num_examples == 4
    assert agg.info == {"no_examples": 1}


def test_small_example_by_hand() -> None:
    params = {"w": np.array([1.0, 2.0])}
    contributions = [
        Contribution(0, 1, weights={"w": np.array([3.0, 2.0])}),  # w = [3, 2]
        Contribution(1, 3, delta={"w": np.array([1.0, -2.0])}),  # w = [2, 0]
    ]
    new = aggregate_round(weighted_mean(), params, contributions).apply(params)
    assert new["w"].tolist() == [(3.0 + 3 * 2.0) / 4, (2.0 + 0.0) / 4]


def test_empty_round_emits_no_aggregate() -> None:
    step = weighted_mean()
    params = {"w": np.zeros(3)}
    state = step.init(params)
    state, out = step.update(state, Begin(1, params))
    assert out == ()
    state, out = step.update(state, End(1))
    assert out == ()
    _, agg = run_round(step, state, 2, params, [])
    assert agg is None


def test_all_zero_examples_raise_aggregation_error() -> None:
    params = {"w": np.zeros(2)}
    contributions = [
        Contribution(0, 0, weights={"w": np.ones(2)}),
        Contribution(1, 0, delta={"w": np.ones(2)}),
    ]
    step = weighted_mean()
    with pytest.raises(AggregationError, match=r"round 4: all 2 contributions have num_examples=0"):
        run_round(step, step.init(params), 4, params, contributions)


def test_contribution_before_begin_raises() -> None:
    step = weighted_mean()
    with pytest.raises(AggregationError, match="before Begin"):
        step.update(step.init({"w": np.zeros(1)}), Contribution(0, 1, weights={"w": np.ones(1)}))


def test_state_is_reused_safely_across_rounds() -> None:
    step = weighted_mean()
    params = {"w": np.zeros(3)}
    state = step.init(params)
    state, first = run_round(
        step,
        state,
        1,
        params,
        [
            Contribution(0, 1, weights={"w": np.full(3, 2.0)}),
            Contribution(1, 1, weights={"w": np.full(3, 4.0)}),
        ],
    )
    assert first is not None
    first_values = first.apply(params)["w"].copy()
    state, second = run_round(
        step, state, 2, params, [Contribution(0, 1, delta={"w": np.full(3, -1.0)})]
    )
    assert second is not None
    assert first.apply(params)["w"].tolist() == first_values.tolist() == [3.0, 3.0, 3.0]
    assert second.apply(params)["w"].tolist() == [-1.0, -1.0, -1.0]


def test_integer_arrays_are_rounded_back_to_their_dtype() -> None:
    params = {"w": np.zeros(2), "n": np.array([10, 20], dtype=np.int64)}
    by_weights = [
        Contribution(0, 1, weights={"w": np.ones(2), "n": np.array([11, 21])}),
        Contribution(1, 3, weights={"w": np.ones(2), "n": np.array([13, 23])}),
    ]
    new = aggregate_round(weighted_mean(), params, by_weights).apply(params)
    assert new["n"].dtype == np.int64
    assert new["n"].tolist() == [12, 22]  # rint(12.5) == 12, rint(22.5) == 22
    by_delta = [
        Contribution(0, 1, delta={"w": np.ones(2), "n": np.array([1, 2])}),
        Contribution(1, 3, delta={"w": np.ones(2), "n": np.array([3, 3])}),
    ]
    new = aggregate_round(weighted_mean(), params, by_delta).apply(params)
    assert new["n"].dtype == np.int64
    assert new["n"].tolist() == [10 + 2, 20 + 3]  # mean deltas 2.5 and 2.75, rounded
    assert new["w"].tolist() == [1.0, 1.0]


# -- chain ---------------------------------------------------------------------------------


def scale_deltas(factor: float) -> Step:
    """A per-client step: every contribution becomes a delta scaled by ``factor``."""

    def init(params: Any) -> Any:
        return None

    def update(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, Begin):
            return event.params, (event,)
        if isinstance(event, Contribution):
            delta = {k: v * factor for k, v in event.as_delta(state).items()}
            return state, (Contribution(event.cid, event.num_examples, delta=delta),)
        return state, (event,)

    return Step(init, update)


def server_lr(lr: float) -> Step:
    """A server-side step: scales the aggregate's update by ``lr``."""

    def init(params: Any) -> Any:
        return None

    def update(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, Begin):
            return event.params, (event,)
        if isinstance(event, Aggregate):
            delta = {k: lr * v for k, v in event.as_delta(state).items()}
            return state, (
                Aggregate(event.round, event.num_clients, event.num_examples, delta=delta),
            )
        return state, (event,)

    return Step(init, update)


def duplicate() -> Step:
    """Emits every contribution twice (with distinct ids): exercises multi-event flow."""

    def update(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, Contribution):
            twin = Contribution(
                event.cid + 1000, event.num_examples, weights=event.weights, delta=event.delta
            )
            return state + 1, (event, twin)
        return state, (event,)

    return Step(lambda params: 0, update)


def test_chain_of_one_is_the_step() -> None:
    step = weighted_mean()
    assert chain(step) is step


def test_chain_refuses_nothing_and_non_steps() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        chain()
    with pytest.raises(TypeError, match="argument 1 is function"):
        chain(weighted_mean(), lambda s, e: (s, (e,)))  # type: ignore[arg-type]


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), form=st.sampled_from(["weights", "delta", "mixed"]))
def test_chain_with_per_client_and_server_steps_matches_hand_math(seed: int, form: Form) -> None:
    rng = np.random.default_rng(seed)
    params, contributions = make_round(rng, np.float64, form)
    before = snapshot(params, contributions)
    read_only(params, contributions)
    step = chain(scale_deltas(2.0), weighted_mean(), server_lr(0.25))
    new = aggregate_round(step, params, contributions).apply(params)
    plain = hand_weighted_mean(params, contributions)
    for name, p in params.items():
        # params + 0.25 * (sum n_k * 2 d_k / sum n_k) = params + 0.5 * (mean - params)
        expected = p + 0.25 * 2.0 * (plain[name] - p)
        np.testing.assert_allclose(new[name], expected, rtol=1e-12, atol=1e-12)
    assert snapshot(params, contributions) == before


def test_chain_passes_every_emitted_event_on_and_threads_state() -> None:
    params = {"w": np.zeros(2)}
    contributions = [
        Contribution(0, 1, weights={"w": np.array([1.0, 2.0])}),
        Contribution(1, 3, weights={"w": np.array([5.0, 6.0])}),
    ]
    step = chain(duplicate(), weighted_mean())
    state = step.init(params)
    assert state[0] == 0
    state, agg = run_round(step, state, 1, params, contributions)
    assert agg is not None
    assert agg.num_clients == 4
    assert agg.num_examples == 8
    assert agg.apply(params)["w"].tolist() == [4.0, 5.0]
    state, _ = run_round(step, state, 2, params, contributions)
    assert state[0] == 4  # the duplicate step's state survived two rounds


def test_run_round_returns_the_last_aggregate_and_new_state() -> None:
    params = {"w": np.ones(2)}
    step = weighted_mean()
    state, agg = run_round(
        step, step.init(params), 9, params, [Contribution(5, 2, delta={"w": np.ones(2)})]
    )
    assert agg is not None
    assert agg.round == 9
    assert agg.apply(params)["w"].tolist() == [2.0, 2.0]
    assert agg.as_delta(params)["w"].tolist() == [1.0, 1.0]
    assert state is not None


def test_contribution_conversions() -> None:
    params = {"w": np.array([1.0, 1.0])}
    by_weights = Contribution(0, 1, weights={"w": np.array([3.0, 0.0])})
    by_delta = Contribution(1, 1, delta={"w": np.array([2.0, -1.0])})
    assert by_weights.as_delta(params)["w"].tolist() == [2.0, -1.0]
    assert by_delta.as_weights(params)["w"].tolist() == [3.0, 0.0]
    assert by_weights.as_weights(params)["w"] is by_weights.weights["w"]  # type: ignore[index]
    assert by_delta.as_delta(params)["w"] is by_delta.delta["w"]  # type: ignore[index]


def test_a_large_model_is_folded_in_blocks_bit_for_bit() -> None:
    """Arrays over the block size fold block by block: same bits, scratch of one block."""
    from covey.aggregate import _mean

    rng = np.random.default_rng(7)
    size = _mean._BLOCK * 2 + 12345
    params: Arrays = {
        "big": rng.normal(size=(size,)).astype(np.float32),
        "small": rng.normal(size=(3, 4)),
    }
    contributions = []
    for cid in range(3):
        local: Arrays = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in params.items()}
        contributions.append(Contribution(cid, int(rng.integers(1, 50)), weights=local))
    new = aggregate_round(weighted_mean(), params, contributions).apply(params)
    # The same arithmetic on whole arrays, in the same order: n_1 x_1, then + n_k x_k.
    for name in params:
        first = contributions[0]
        assert first.weights is not None
        acc = np.array(first.weights[name]) * first.num_examples
        for c in contributions[1:]:
            assert c.weights is not None
            acc += c.weights[name] * np.float64(c.num_examples).astype(acc.dtype)
        acc /= sum(c.num_examples for c in contributions)
        assert new[name].tobytes() == acc.astype(params[name].dtype).tobytes()

    acc_state: dict[str, np.ndarray] | None = None
    scratch: dict[str, np.ndarray] | None = None
    for c in contributions:
        assert c.weights is not None
        acc_state, scratch, _ = _mean._fold(acc_state, scratch, c.weights, 2.5)
    assert scratch is not None
    assert {k: a.size for k, a in scratch.items()} == {"big": _mean._BLOCK, "small": 12}


@pytest.mark.parametrize("form", ["weights", "delta", "mixed"])
def test_float16_models_sum_without_overflow(form: Form) -> None:
    """n_k * x_k past float16's 65504 (40,000 examples, weights of 2 and 4) is no Inf."""
    from covey.aggregate import _mean

    # "big" is over the block size: folded block by block.
    params = {"h": np.ones(3, np.float16), "big": np.ones(_mean._BLOCK + 5, np.float16)}
    contributions = []
    for cid, value in enumerate((2.0, 4.0)):
        local = {k: np.full(v.shape, value, np.float16) for k, v in params.items()}
        kind = "delta" if form == "delta" or (form == "mixed" and cid == 1) else "weights"
        if kind == "delta":
            local = {k: v - params[k] for k, v in local.items()}
        contributions.append(Contribution(cid, 40_000, **{kind: local}))  # type: ignore[arg-type]
    new = aggregate_round(weighted_mean(), params, contributions).apply(params)
    for name in params:
        assert new[name].dtype == np.float16
        assert np.all(new[name] == 3.0), name


@pytest.mark.parametrize("step", [weighted_mean, median])
@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int32])
def test_integer_means_near_the_dtype_limits_do_not_wrap(dtype: Any, step: Any) -> None:
    """A mean of weights at the largest integers stays there (float64 rounds 2**63 - 1 up)."""
    info = np.iinfo(dtype)
    params = {"n": np.zeros(2, dtype)}
    contributions = [
        Contribution(cid, 1, weights={"n": np.array([info.max - cid, info.min + cid], dtype)})
        for cid in range(3)
    ]
    new = aggregate_round(step(), params, contributions).apply(params)
    assert new["n"].dtype == dtype
    top, bottom = (int(v) for v in new["n"])
    assert info.max - 2048 <= top <= info.max
    assert info.min <= bottom <= info.min + 2048


@pytest.mark.parametrize(
    "step",
    [
        weighted_mean,
        mean,
        median,
        lambda: trimmed_mean(0.2),
        lambda: chain(weighted_mean(), server_adam(0.1)),
    ],
)
def test_an_int64_change_past_int64s_range_is_averaged_exactly(step: Any) -> None:
    """From -2**62 to 2**62 is a change of 2**63: taken in int64 it wrapped to -2**63.

    The mean of 2**62, -2**62 and -2**62 came out as about -7.7e18, not -1.5e18.
    """
    params = {"n": np.array([-(2**62), 5], np.int64)}
    values = [[2**62, 5], [-(2**62), 5], [-(2**62), 5]]
    contributions = [
        Contribution(cid, 1, weights={"n": np.array(v, np.int64)}) for cid, v in enumerate(values)
    ]
    new = aggregate_round(step(), params, contributions).apply(params)["n"]
    assert new.dtype == np.int64
    exact = -(2**62) if step is median else -(2**62) + 2**63 // 3
    assert abs(int(new[0]) - exact) <= 2048  # float64's spacing at 2**62
    assert int(new[1]) == 5


@pytest.mark.parametrize("step", [weighted_mean, mean, median])
def test_a_uint64_change_past_2_to_the_63_is_averaged_exactly(step: Any) -> None:
    """From 0 to 2**64 - 2 was read modulo 2**64 as -2: the mean came out as 2**64 - 1."""
    params = {"h": np.zeros(1, np.uint64)}
    contributions = [
        Contribution(0, 1, weights={"h": np.array([2**64 - 2], np.uint64)}),
        Contribution(1, 1, weights={"h": np.array([0], np.uint64)}),
    ]
    new = aggregate_round(step(), params, contributions).apply(params)["h"]
    assert new.dtype == np.uint64
    assert abs(int(new[0]) - (2**63 - 1)) <= 2048  # float64's spacing at 2**63


@pytest.mark.parametrize("make", [weighted_mean, mean])
def test_a_mask_from_weights_and_deltas_together_flips_by_its_entries(make: Any) -> None:
    """Weights counted a mask's True -> False as -1, the deltas' flip as +1: they cancelled."""
    params = {"b": np.array([True, False, True, False]), "w": np.zeros(4)}
    new = np.array([False, True, True, False])  # entries 0 and 1 flip
    flips = new ^ params["b"]
    for order in ((0, 1), (1, 0)):
        forms = [
            Contribution(0, 2, weights={"b": new, "w": np.ones(4)}),
            Contribution(1, 2, delta={"b": flips, "w": np.ones(4)}),
        ]
        step = chain(make())
        _, agg = run_round(step, step.init(params), 1, params, [forms[i] for i in order])
        assert agg is not None
        result = agg.apply(params)
        assert result["b"].tolist() == new.tolist()
        np.testing.assert_array_equal(result["w"], np.ones(4))


@pytest.mark.parametrize("make", [weighted_mean, mean])
def test_a_tied_mask_keeps_its_entry_whether_clients_sent_weights_or_deltas(make: Any) -> None:
    """Half the clients flip an entry: weights gave the tie to False, deltas kept the entry."""
    params = {"b": np.array([True, False, True]), "w": np.zeros(3)}
    kept, flipped = params["b"], ~params["b"]
    as_weights = [
        Contribution(0, 2, weights={"b": kept, "w": np.ones(3)}),
        Contribution(1, 2, weights={"b": flipped, "w": np.ones(3)}),
    ]
    as_deltas = [
        Contribution(0, 2, delta={"b": kept ^ params["b"], "w": np.ones(3)}),
        Contribution(1, 2, delta={"b": flipped ^ params["b"], "w": np.ones(3)}),
    ]
    results = []
    for forms in (as_weights, as_deltas, [as_weights[0], as_deltas[1]]):
        step = chain(make())
        _, agg = run_round(step, step.init(params), 1, params, forms)
        assert agg is not None
        results.append(agg.apply(params)["b"].tolist())
    assert results == [params["b"].tolist()] * 3
    # A majority still wins, from either form.
    majority = [*as_weights, Contribution(2, 2, weights={"b": flipped, "w": np.ones(3)})]
    step = chain(make())
    _, agg = run_round(step, step.init(params), 1, params, majority)
    assert agg is not None
    assert agg.apply(params)["b"].tolist() == flipped.tolist()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("form", ["weights", "delta", "mixed"])
@pytest.mark.parametrize("make", [weighted_mean, mean])
def test_values_near_the_dtype_maximum_average_without_overflow(
    dtype: Any, form: Form, make: Any
) -> None:
    """n_k * x_k and their sum pass the dtype's largest value; the mean does not."""
    from covey.aggregate import _mean

    top = float(np.finfo(dtype).max)
    # "big" is over the block size: folded block by block, overflowing in its second block.
    params = {"h": np.zeros(3, dtype), "big": np.zeros(_mean._BLOCK + 5, dtype)}
    values = (0.9 * top, 0.5 * top, 0.7 * top, -0.2 * top)
    contributions = []
    for cid, value in enumerate(values):
        local = {k: np.full(v.shape, value, dtype) for k, v in params.items()}
        local["big"][: _mean._BLOCK] = 1.0  # the first block stays small
        kind = "delta" if form == "delta" or (form == "mixed" and cid % 2 == 1) else "weights"
        contributions.append(Contribution(cid, 10 + cid, **{kind: local}))  # type: ignore[arg-type]
    new = aggregate_round(make(), params, contributions).apply(params)
    n = [10 + cid if make is weighted_mean else 1 for cid in range(len(values))]
    expected = sum(k / sum(n) * float(np.asarray(v, dtype)) for k, v in zip(n, values, strict=True))
    for name in params:
        assert new[name].dtype == dtype
        assert np.all(np.isfinite(new[name])), name
        tail = new[name][-3:].astype(np.float64)
        np.testing.assert_allclose(tail, expected, rtol=1e-2 if dtype == np.float16 else 1e-5)
    np.testing.assert_allclose(new["big"][:3].astype(np.float64), 1.0, rtol=1e-3)
