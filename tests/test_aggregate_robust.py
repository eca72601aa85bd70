"""Robust reducers against plain NumPy references of their formulas, on random inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import covey
from covey import FitResult
from covey.aggregate import (
    AggregationError,
    Contribution,
    bulyan,
    geometric_median,
    krum,
    median,
    multi_krum,
    run_round,
    trimmed_mean,
)
from covey.aggregate._base import Step
from covey.aggregate._krum import krum_scores, pairwise_sq_distances
from covey.testing import check_aggregator

Arrays = dict[str, np.ndarray]


def make_round(
    rng: np.random.Generator, n: int, dtype: Any = np.float64
) -> tuple[Arrays, list[Contribution], np.ndarray]:
    """Params, contributions (mixed weights/deltas) and the (n, d) matrix of their deltas."""
    params = {"W": rng.normal(size=(4, 3)).astype(dtype), "b": rng.normal(size=3).astype(dtype)}
    rows = []
    contributions = []
    for cid in range(n):
        delta = {k: rng.normal(size=v.shape).astype(dtype) for k, v in params.items()}
        if cid % 3 == 0:
            weights = {k: (params[k] + delta[k]).astype(dtype) for k in params}
            contributions.append(Contribution(cid, int(rng.integers(1, 50)), weights=weights))
            delta = {k: weights[k] - params[k] for k in params}
        else:
            contributions.append(Contribution(cid, int(rng.integers(1, 50)), delta=delta))
        rows.append(np.concatenate([delta[k].ravel() for k in params]).astype(np.float64))
    return params, contributions, np.stack(rows)


def result(step: Step, params: Arrays, contributions: list[Contribution]) -> np.ndarray:
    """The aggregate's update as one flat float64 vector."""
    _, agg = run_round(step, step.init(params), 1, params, contributions)
    assert agg is not None
    delta = agg.as_delta(params)
    for name, value in params.items():
        assert delta[name].dtype == value.dtype
        assert delta[name].shape == value.shape
    return np.concatenate([delta[k].ravel() for k in params]).astype(np.float64)


def krum_score_reference(x: np.ndarray, f: int) -> np.ndarray:
    """Blanchard et al.: sum of squared distances to the n - f - 2 nearest other updates."""
    n = len(x)
    scores = np.empty(n)
    for i in range(n):
        d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        scores[i] = sum(d[: n - f - 2])
    return scores


seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=25)
@given(seed=seeds, n=st.integers(1, 12))
def test_median_is_the_coordinatewise_median(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    params, contributions, x = make_round(rng, n)
    np.testing.assert_allclose(result(median(), params, contributions), np.median(x, axis=0))


@settings(max_examples=25)
@given(seed=seeds, n=st.integers(1, 15), beta=st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.45]))
def test_trimmed_mean_drops_beta_from_each_end(seed: int, n: int, beta: float) -> None:
    rng = np.random.default_rng(seed)
    params, contributions, x = make_round(rng, n)
    k = int(np.floor(beta * n))
    expected = np.array([np.mean(sorted(col)[k : n - k]) for col in x.T])
    np.testing.assert_allclose(result(trimmed_mean(beta), params, contributions), expected)


@settings(max_examples=25)
@given(seed=seeds, f=st.integers(0, 3), extra=st.integers(0, 5))
def test_krum_scores_and_distances_match_the_reference(seed: int, f: int, extra: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * f + 3 + extra, 7)) * rng.uniform(0.1, 10.0)
    dist = pairwise_sq_distances(x)
    brute = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    np.testing.assert_allclose(dist, brute, rtol=1e-9, atol=1e-9 * brute.max())
    np.testing.assert_allclose(
        krum_scores(dist, len(x) - f - 2), krum_score_reference(x, f), rtol=1e-9
    )


@settings(max_examples=25)
@given(seed=seeds, f=st.integers(0, 3), extra=st.integers(0, 5))
def test_krum_keeps_the_update_with_the_lowest_reference_score(
    seed: int, f: int, extra: int
) -> None:
    rng = np.random.default_rng(seed)
    n = 2 * f + 3 + extra
    params, contributions, x = make_round(rng, n)
    best = int(np.argmin(krum_score_reference(x, f)))
    np.testing.assert_allclose(result(krum(f), params, contributions), x[best], atol=1e-12)
    _, agg = run_round(krum(f), krum(f).init(params), 1, params, contributions)
    assert agg is not None
    assert agg.info["selected"] == [best]
    assert agg.num_clients == n


@settings(max_examples=25)
@given(seed=seeds, f=st.integers(0, 3), extra=st.integers(0, 5), m=st.integers(1, 4))
def test_multi_krum_averages_the_m_best_scores(seed: int, f: int, extra: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2 * f + 3 + extra
    params, contributions, x = make_round(rng, n)
    chosen = np.argsort(krum_score_reference(x, f), kind="stable")[:m]
    np.testing.assert_allclose(
        result(multi_krum(f, m), params, contributions), x[chosen].mean(axis=0), atol=1e-12
    )
    default = np.argsort(krum_score_reference(x, f), kind="stable")[: n - f]
    np.testing.assert_allclose(
        result(multi_krum(f), params, contributions), x[default].mean(axis=0), atol=1e-12
    )
    n_k = np.array([c.num_examples for c in contributions], dtype=float)[chosen]
    np.testing.assert_allclose(
        result(multi_krum(f, m, weighted=True), params, contributions),
        (n_k @ x[chosen]) / n_k.sum(),
        atol=1e-12,
    )


def test_multi_krum_with_m_past_n_minus_f_keeps_the_f_outliers_out() -> None:
    # m = 10 of 5 updates averaged all five, the attacker's 1e6 included, without a word.
    params = {"w": np.zeros(2)}
    values = [1e6, 1.01, 1.02, 1.03, 1.04]
    contributions = [
        Contribution(cid, 1, weights={"w": np.full(2, v)}) for cid, v in enumerate(values)
    ]
    _, agg = run_round(multi_krum(1, 10), multi_krum(1, 10).init(params), 1, params, contributions)
    assert agg is not None
    assert agg.info["selected"] == [1, 2, 3, 4]
    np.testing.assert_allclose(result(multi_krum(1, 10), params, contributions), np.full(2, 1.025))


def bulyan_reference(x: np.ndarray, f: int) -> np.ndarray:
    """El Mhamdi et al.: theta = n - 2f by repeated Krum, then beta = theta - 2f near the median."""
    remaining = list(range(len(x)))
    selected = []
    for _ in range(len(x) - 2 * f):
        sub = x[remaining]
        k = max(1, len(remaining) - f - 2)
        scores = []
        for i in range(len(sub)):
            d = sorted(float(np.sum((sub[i] - sub[j]) ** 2)) for j in range(len(sub)) if j != i)
            scores.append(sum(d[:k]))
        selected.append(remaining.pop(int(np.argmin(scores))))
    chosen = x[selected]
    beta = len(chosen) - 2 * f
    out = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        col = chosen[:, j]
        med = np.median(col)
        closest = sorted(range(len(col)), key=lambda i: (abs(col[i] - med), i))[:beta]
        out[j] = np.mean(col[closest])
    return out


@settings(max_examples=20)
@given(seed=seeds, f=st.integers(0, 2), extra=st.integers(0, 4))
def test_bulyan_matches_the_reference(seed: int, f: int, extra: int) -> None:
    rng = np.random.default_rng(seed)
    params, contributions, x = make_round(rng, 4 * f + 3 + extra)
    np.testing.assert_allclose(
        result(bulyan(f), params, contributions), bulyan_reference(x, f), atol=1e-12
    )


def weiszfeld_reference(x: np.ndarray, a: np.ndarray, iters: int, tol: float, eps: float):
    """Pillutla et al.'s smoothed Weiszfeld, written out."""
    v = (a[:, None] * x).sum(0)
    for _ in range(iters):
        b = np.array([a[i] / max(eps, np.linalg.norm(x[i] - v)) for i in range(len(x))])
        new = (b[:, None] * x).sum(0) / b.sum()
        moved, v = np.linalg.norm(new - v), new
        # stop on a small step, measured against the weighted median distance to the points
        ranked = sorted(range(len(x)), key=lambda i: np.linalg.norm(x[i] - v))
        weight, i = 0.0, 0
        for i in ranked:
            weight += a[i]
            if weight >= 0.5:
                break
        if moved <= tol * np.linalg.norm(x[i] - v):
            break
    return v


@pytest.mark.parametrize("big", [1e3, 1e6, 1e9, 1e12, 1e20, 1e38])
def test_one_far_update_does_not_carry_the_geometric_median(big: float) -> None:
    # The iterations stopped when the objective improved by less than 1e-6 of itself:
    # one far update's distance dominates it, so they stopped still on the way (an
    # update of 1e12 put the model at 2.5e4, 1e38 at 2.5e30; 1e10 for 5 rounds: 129).
    rng = np.random.default_rng(0)
    honest = [{"w": rng.normal(0, 0.1, 10)} for _ in range(7)]
    results = [FitResult(weights=w, num_examples=10) for w in honest]
    results.append(FitResult(weights={"w": np.full(10, big)}, num_examples=10))
    got = covey.FedRFA().aggregate({"w": np.zeros(10)}, results)["w"]
    exhaustive = covey.FedRFA(tol=0.0, max_iter=1000).aggregate({"w": np.zeros(10)}, results)["w"]
    assert np.abs(got).max() < 0.3  # among the honest updates (each within 0.35 of 0)
    np.testing.assert_allclose(got, exhaustive, atol=1e-4)


@settings(max_examples=20)
@given(seed=seeds, n=st.integers(1, 10), weighted=st.booleans())
def test_geometric_median_is_smoothed_weiszfeld(seed: int, n: int, weighted: bool) -> None:
    rng = np.random.default_rng(seed)
    params, contributions, x = make_round(rng, n)
    a = np.array([c.num_examples if weighted else 1 for c in contributions], dtype=float)
    expected = weiszfeld_reference(x, a / a.sum(), 100, 1e-6, 1e-5)
    got = result(geometric_median(weighted=weighted), params, contributions)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_geometric_median_minimizes_the_sum_of_distances() -> None:
    rng = np.random.default_rng(3)
    params, contributions, x = make_round(rng, 9)
    a = np.array([c.num_examples for c in contributions], dtype=float)

    def objective(v: np.ndarray) -> float:
        return float(a @ np.linalg.norm(x - v, axis=1))

    got = result(geometric_median(tol=1e-12, max_iter=1000, eps=1e-12), params, contributions)
    best = minimize(objective, x.mean(0), method="Powell", options={"xtol": 1e-10, "ftol": 1e-12})
    assert objective(got) <= best.fun * (1 + 1e-7)
    assert objective(got) < objective((a @ x) / a.sum())


def test_float32_models_keep_their_dtype() -> None:
    rng = np.random.default_rng(0)
    params, contributions, x = make_round(rng, 7, np.float32)
    for step in (median(), trimmed_mean(0.2), krum(1), bulyan(1), geometric_median()):
        got = result(step, params, contributions)
        assert got.dtype == np.float64  # flattened for comparison only
    np.testing.assert_allclose(result(median(), params, contributions), np.median(x, 0), rtol=1e-6)


def test_integer_arrays_are_rounded_to_their_dtype() -> None:
    params = {"w": np.zeros(2), "n": np.array([10, 20])}
    contributions = [
        Contribution(i, 1, delta={"w": np.full(2, float(i)), "n": np.array([i, 2 * i])})
        for i in range(4)
    ]
    _, agg = run_round(median(), median().init(params), 1, params, contributions)
    assert agg is not None
    new = agg.apply(params)
    assert new["n"].dtype == np.int64
    assert new["n"].tolist() == [10 + 2, 20 + 3]  # medians 1.5 and 3.0, rounded half to even
    assert new["w"].tolist() == [1.5, 1.5]


def test_robust_rules_ignore_a_minority_of_huge_updates() -> None:
    params = {"w": np.zeros(3)}
    honest = [Contribution(i, 10, delta={"w": np.full(3, 1.0 + 0.01 * i)}) for i in range(8)]
    evil = [Contribution(100 + i, 10, delta={"w": np.full(3, -1e6)}) for i in range(2)]
    for step in (median(), trimmed_mean(0.25), krum(2), multi_krum(2), bulyan(1)):
        got = result(step, params, honest + evil)
        assert np.all(np.abs(got - 1.0) < 0.1), step
    assert np.all(np.abs(result(geometric_median(), params, honest + evil) - 1.0) < 0.1)


@pytest.mark.parametrize(
    ("step", "n", "message"),
    [
        (krum(2), 6, "krum with f=2 needs at least 7"),
        (multi_krum(1, 2), 4, "multi_krum with f=1 needs at least 5"),
        (bulyan(1), 6, "bulyan with f=1 needs at least 7"),
    ],
)
def test_too_few_contributions_raise(step: Step, n: int, message: str) -> None:
    rng = np.random.default_rng(0)
    params, contributions, _ = make_round(rng, n)
    with pytest.raises(AggregationError, match=message):
        run_round(step, step.init(params), 1, params, contributions)


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean(0.5)
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean(-0.1)
    with pytest.raises(ValueError, match="krum f"):
        krum(-1)
    with pytest.raises(ValueError, match="multi_krum m"):
        multi_krum(1, 0)
    with pytest.raises(ValueError, match="max_iter"):
        geometric_median(max_iter=0)


def test_geometric_median_with_no_examples_raises() -> None:
    params = {"w": np.zeros(2)}
    contributions = [Contribution(i, 0, delta={"w": np.ones(2)}) for i in range(3)]
    with pytest.raises(AggregationError, match="num_examples=0"):
        run_round(geometric_median(), geometric_median().init(params), 1, params, contributions)
    # Unweighted too: a reply of 0 examples takes no part in any rule.
    step = geometric_median(weighted=False)
    with pytest.raises(AggregationError, match="all 3 contributions have num_examples=0"):
        run_round(step, step.init(params), 1, params, contributions)


def test_a_contribution_before_begin_is_an_error() -> None:
    step = median()
    with pytest.raises(AggregationError, match="before the round's Begin"):
        step.update(step.init({"w": np.zeros(1)}), Contribution(0, 1, delta={"w": np.ones(1)}))


@pytest.mark.parametrize(
    "make",
    [
        median,
        lambda: trimmed_mean(0.2),
        lambda: krum(2),
        lambda: multi_krum(2),
        lambda: multi_krum(1, 3, weighted=True),
        lambda: bulyan(1),
        geometric_median,
    ],
)
def test_robust_reducers_pass_check_aggregator(make: Any) -> None:
    check_aggregator(make)


def test_robust_rules_ignore_a_minority_of_updates_near_the_float64_limit() -> None:
    """Finite updates whose squared norms overflow: the Gram-matrix distances were NaN.

    A NaN score is taken by argmin, so Krum chose the attackers' update (1.7e308
    entries, finite, accepted by the round loop) over the honest ones; RFA started
    from a mean from which every distance overflowed, and gave NaN every round.
    """
    rng = np.random.default_rng(0)
    params = {"w": np.zeros(100)}
    honest = [Contribution(i, 10, delta={"w": 2.0 + rng.normal(size=100)}) for i in range(5)]
    bad = np.tile([1.7e308, -1.7e308], 50)
    evil = [Contribution(100 + i, 10, delta={"w": bad}) for i in range(2)]
    for step in (krum(2), multi_krum(2), median(), trimmed_mean(0.3), geometric_median()):
        got = result(step, params, honest + evil)
        assert np.all(np.abs(got) < 10.0), step
    got = result(bulyan(1), params, [*honest, evil[0], honest[0]])
    assert np.all(np.abs(got) < 10.0)
    dist = pairwise_sq_distances(np.stack([bad, bad, np.ones(100)]))
    assert dist[0, 1] == 0.0  # equal updates are at distance 0
    assert dist[0, 2] == np.inf  # not NaN


def test_krum_ranks_updates_that_share_a_large_common_part_by_their_true_distances() -> None:
    """Krum and Multi-Krum pick by the true scores when updates agree to many digits.

    Distances from |x|^2 + |y|^2 - 2 x.y lost everything to cancellation here, so the
    selection was noise; Flower, which subtracts the vectors, picked by the true scores.
    """
    rng = np.random.default_rng(0)
    common = np.full(1000, 1e3)
    spread = (1e-6, 5e-6, 1e-6, 3e-6, 2e-6, 1e-6, 4e-6)
    rows = np.stack([common + s * rng.normal(size=1000) for s in spread])
    exact = np.array([[float(np.sum((a - b) ** 2)) for b in rows] for a in rows])
    params = {"w": np.zeros(1000)}
    contributions = [Contribution(cid, 1, delta={"w": row}) for cid, row in enumerate(rows)]
    scores = krum_score_reference(rows, 1)
    np.testing.assert_array_equal(result(krum(1), params, contributions), rows[np.argmin(scores)])
    chosen = np.argsort(scores, kind="stable")[:3]
    want = rows[chosen].mean(axis=0)
    np.testing.assert_allclose(result(multi_krum(1, 3), params, contributions), want, rtol=1e-15)
    np.testing.assert_allclose(pairwise_sq_distances(rows), exact, rtol=1e-6, atol=1e-20)


BIG = float(np.finfo(np.float64).max) * 0.9


@pytest.mark.parametrize(
    "strategy",
    [covey.FedTrimmedAvg(beta=0.0), covey.FedTrimmedAvg(beta=0.2), covey.FedMedian()],
    ids=["trimmed-0", "trimmed-0.2", "median"],
)
def test_averages_of_values_near_the_largest_float_stay_finite(strategy: Any) -> None:
    # Before: their sums overflowed (NumPy warned, an error here) and the round was refused,
    # where mean() and weighted_mean() give the finite average.
    rows = [BIG] * (4 if "Median" in strategy.name else 5)  # the median of 4: a mean of 2
    results = [FitResult(weights={"w": np.array([v, 1.0])}, num_examples=1) for v in rows]
    new = strategy.aggregate({"w": np.zeros(2)}, results)
    assert new["w"][0] == pytest.approx(BIG)
    assert new["w"][1] == 1.0


def test_an_update_past_the_float_range_is_an_outlier_to_the_median() -> None:
    # One client's weights minus the global model overflow to inf (NumPy warned of it);
    # the median of the others' updates is taken, as of any other outlier.
    start = {"w": np.array([-BIG, 0.0])}
    sent = [np.array([BIG, 9.0]), np.array([-BIG, 1.0]), np.array([-BIG, 2.0])]
    results = [FitResult(weights={"w": w}, num_examples=1) for w in sent]
    new = covey.FedMedian().aggregate(start, results)
    assert new["w"].tolist() == [-BIG, 2.0]


def test_rfa_falls_back_to_a_finite_median_of_an_even_count_near_the_largest_float() -> None:
    # Every distance from the weighted mean overflows, so RFA starts from the
    # coordinate-wise median; of an even count, its middle values' (a + b) / 2 was inf
    # and the round was refused for a non-finite aggregate, where FedMedian gives it.
    top = float(np.finfo(np.float64).max)
    sent = []
    for cid in range(6):
        w = np.full(3, 0.9 * top * (1 if cid % 2 else -1))
        w[0] = 0.95 * top
        sent.append(FitResult(weights={"w": w}, num_examples=cid + 1))
    start = {"w": np.zeros(3)}
    new = covey.FedRFA().aggregate(start, sent)
    assert np.isfinite(new["w"]).all()
    assert new["w"].tolist() == covey.FedMedian().aggregate(start, sent)["w"].tolist()


def _near_the_limit() -> tuple[np.ndarray, list[Contribution]]:
    """Two attackers first, then five honest updates near 1e308: every distance overflows."""
    sign = np.array([1.0, 1.0, -1.0, -1.0])
    evil = [-sign * 1e308, np.array([1e308, -1e308, 1e308, -1e308])]
    honest = [c * sign * 1e308 for c in (1.0, 0.9, 0.6, 0.93, 0.88)]
    rows = np.stack(evil + honest)
    return rows, [Contribution(cid, 1, delta={"w": row}) for cid, row in enumerate(rows)]


def test_krum_ranks_updates_whose_every_distance_overflows() -> None:
    # Before: every pairwise distance was inf, every score tied and Krum took the first
    # update, an attacker's; Multi-Krum and Bulyan kept attackers beside honest updates.
    rows, contributions = _near_the_limit()
    with np.errstate(over="raise"):
        assert np.isinf(pairwise_sq_distances(rows)[~np.eye(7, dtype=bool)]).all()
    scores = krum_score_reference(rows / 1e308, 2)  # the same order as the true scores
    assert np.argmin(scores) == 5  # the honest update at 0.93, in the thick of the honest
    params = {"w": np.zeros(4)}
    np.testing.assert_array_equal(result(krum(2), params, contributions), rows[5])
    honest = np.array([1.0, 0.9, 0.6, 0.93, 0.88])
    want = honest.mean() * np.array([1.0, 1.0, -1.0, -1.0]) * 1e308
    np.testing.assert_allclose(result(multi_krum(2), params, contributions), want, rtol=1e-12)
    got = result(bulyan(1), params, contributions)
    assert np.all(np.sign(got) == rows[2] / 1e308)
    assert np.all((np.abs(got) >= 0.6e308) & (np.abs(got) <= 1e308))


def test_krum_refuses_a_round_whose_best_scores_are_infinite() -> None:
    # Every update has infinite entries in the same place: no distance says anything.
    params = {"w": np.zeros(2)}
    contributions = [
        Contribution(cid, 1, delta={"w": np.array([np.inf, float(cid)])}) for cid in range(5)
    ]
    for step, name in ((krum(1), "krum"), (multi_krum(1), "multi_krum")):
        with pytest.raises(AggregationError, match=f"{name}: .* infinitely far"):
            run_round(step, step.init(params), 1, params, contributions)


def test_weighted_multi_krum_of_updates_near_the_largest_float_is_their_weighted_mean() -> None:
    # Before: sum n_k x_k overflowed (NumPy warned, an error here; inf otherwise, and the
    # round was refused) though every update, and their weighted mean, is finite.
    honest = np.array([1.0, 0.9, 0.6, 0.93, 0.88])
    sign = np.array([1.0, 1.0, -1.0, -1.0])
    rows = [c * sign * 1e308 for c in honest]
    examples = [10, 20, 30, 40, 50]
    contributions = [
        Contribution(cid, n, delta={"w": row})
        for cid, (n, row) in enumerate(zip(examples, rows, strict=True))
    ]
    params = {"w": np.zeros(4)}
    step = multi_krum(1, weighted=True)
    _, agg = run_round(step, step.init(params), 1, params, contributions)
    assert agg is not None
    assert agg.info["selected"] == [0, 1, 3, 4]  # the update at 0.6 is the farthest
    kept = np.array([0, 1, 3, 4])
    w = np.array(examples, dtype=float)[kept]
    want = float(w @ honest[kept] / w.sum()) * sign * 1e308
    np.testing.assert_allclose(result(step, params, contributions), want, rtol=1e-12)


def test_weighted_multi_krum_of_the_largest_float_is_that_float() -> None:
    # Every update at float64's largest value: their mean is that value, not inf.
    top = float(np.finfo(np.float64).max)
    params = {"w": np.zeros(2)}
    contributions = [
        Contribution(cid, 3 * cid + 1, delta={"w": np.array([top, -top])}) for cid in range(5)
    ]
    for step in (multi_krum(1, weighted=True), multi_krum(1)):
        assert result(step, params, contributions).tolist() == [top, -top]
