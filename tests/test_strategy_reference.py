"""Every preset run end to end by ``covey.simulate``, against a NumPy reference of its paper.

Each reference below is written from the paper's formulas, not from covey's code:
the clients of a small hand-made workload move the model by known amounts, the
reference replays the same rounds in float64, and the two models must agree.
Edge cases: unequal and zero example counts, one client, float16/float32/int64
arrays of several shapes, weights or deltas sent, even and odd client counts,
trimming fractions that cut nothing or almost everything. The round loop's own
rules (selection, evaluation, failures) are in ``test_strategy_reference_rounds.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

import covey
from _reference_workload import INIT, Arrays, local_update, run

Rule = Callable[[Arrays, list[Arrays], np.ndarray, Any], tuple[Arrays, Any]]
"""``(global weights, float64 deltas, example counts, state) -> (float64 update, state)``."""

ODD = (1, 5, 0, 10, 3, 7)  # five updates, and a client that trained on nothing
EVEN = (2, 2, 7, 1, 4, 9)


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="covey")


def replay(rule: Rule, examples: Sequence[int], init: Arrays = INIT, rounds: int = 3) -> Arrays:
    """The reference run: every client trains every round; ``rule`` combines their deltas."""
    w = {k: v.copy() for k, v in init.items()}
    state = None
    n = np.asarray(examples, dtype=np.float64)
    for rnd in range(1, rounds + 1):
        deltas = []
        for cid in range(len(examples)):
            new = local_update(cid, rnd, w)
            deltas.append({k: new[k].astype(np.float64) - w[k].astype(np.float64) for k in w})
        update, state = rule(w, deltas, n, state)
        w = {
            k: (v.astype(np.float64) + update[k]).astype(v.dtype)
            if v.dtype.kind == "f"
            else v + np.rint(update[k]).astype(v.dtype)
            for k, v in w.items()
        }
    return w


def assert_models_close(got: Arrays, want: Arrays, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(
            got[name].astype(np.float64), value.astype(np.float64), rtol=rtol, atol=atol
        )


# -- references, from the papers ---------------------------------------------------------


def weighted_mean(deltas: list[Arrays], n: np.ndarray) -> Arrays:
    """McMahan et al. 2017: sum_k n_k d_k / sum_k n_k."""
    return {k: sum(n[i] * d[k] for i, d in enumerate(deltas)) / n.sum() for k in deltas[0]}


def fedavg(w: Arrays, deltas: list[Arrays], n: np.ndarray, state: Any) -> tuple[Arrays, Any]:
    return weighted_mean(deltas, n), state


def fedavgm(lr: float, momentum: float) -> Rule:
    """Hsu et al. 2019: v = beta v + Delta, w = w + lr v."""

    def rule(w: Arrays, deltas: list[Arrays], n: np.ndarray, v: Any) -> tuple[Arrays, Any]:
        d = weighted_mean(deltas, n)
        v = {k: d[k] if v is None else momentum * v[k] + d[k] for k in d}
        return {k: lr * v[k] if w[k].dtype.kind == "f" else d[k] for k in d}, v

    return rule


def fedopt(kind: str, eta: float, beta1: float, beta2: float, tau: float) -> Rule:
    """Reddi et al. 2021, Algorithm 2: m_0 = 0, v_{-1} = tau^2, no bias correction.

    ``Delta_t`` is the clients' example-weighted mean update (covey's documented
    choice; the paper writes the plain mean of the sampled clients).
    """

    def rule(w: Arrays, deltas: list[Arrays], n: np.ndarray, state: Any) -> tuple[Arrays, Any]:
        d = weighted_mean(deltas, n)
        if state is None:
            zeros = {k: np.zeros_like(x) for k, x in d.items()}
            state = (zeros, {k: np.full_like(x, tau**2) for k, x in d.items()})
        m, v = state
        out: Arrays = {}
        for k, x in d.items():
            if w[k].dtype.kind != "f":  # counters take the plain mean update
                out[k] = x
                continue
            m[k] = beta1 * m[k] + (1 - beta1) * x
            if kind == "adam":
                v[k] = beta2 * v[k] + (1 - beta2) * x**2
            elif kind == "yogi":
                v[k] = v[k] - (1 - beta2) * x**2 * np.sign(v[k] - x**2)
            else:
                v[k] = v[k] + x**2
            out[k] = eta * m[k] / (np.sqrt(v[k]) + tau)
        return out, (m, v)

    return rule


def flat(deltas: list[Arrays], w: Arrays) -> np.ndarray:
    return np.stack([np.concatenate([d[k].ravel() for k in w]) for d in deltas])


def unflat(vector: np.ndarray, w: Arrays) -> Arrays:
    out, start = {}, 0
    for k, v in w.items():
        out[k] = vector[start : start + v.size].reshape(v.shape)
        start += v.size
    return out


def coordinatewise(combine: Callable[[np.ndarray], np.ndarray]) -> Rule:
    """A rule of one vote per update, over the clients that trained (n_k > 0).

    A client of 0 examples sends the model it received: as a vote it would pull
    toward no change; covey leaves it out (docs/strategies.md).
    """

    def rule(w: Arrays, deltas: list[Arrays], n: np.ndarray, state: Any) -> tuple[Arrays, Any]:
        trained = [d for d, count in zip(deltas, n, strict=True) if count > 0]
        return unflat(combine(flat(trained, w)), w), state

    return rule


def median(x: np.ndarray) -> np.ndarray:
    """Yin et al. 2018: the coordinate-wise median (mean of the middle two for even n)."""
    return np.asarray(np.median(x, axis=0))


def trimmed(beta: float) -> Callable[[np.ndarray], np.ndarray]:
    """Yin et al. 2018: per coordinate, drop the beta*n largest and smallest, average the rest."""

    def combine(x: np.ndarray) -> np.ndarray:
        k = int(Fraction(str(beta)) * len(x))  # beta * n in exact arithmetic
        return np.sort(x, axis=0)[k : len(x) - k].mean(axis=0)

    return combine


def krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    """Blanchard et al. 2017: the sum of squared distances to the n - f - 2 nearest others."""
    n = len(x)
    return np.array(
        [
            sum(sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)[: n - f - 2])
            for i in range(n)
        ]
    )


def multi_krum(f: int, m: int) -> Callable[[np.ndarray], np.ndarray]:
    """Blanchard et al. 2017: the plain mean of the m updates with the least scores (m=1: Krum)."""

    def combine(x: np.ndarray) -> np.ndarray:
        return x[np.argsort(krum_scores(x, f), kind="stable")[:m]].mean(axis=0)

    return combine


def weighted_multi_krum(f: int, m: int) -> Rule:
    """Multi-Krum's choice averaged by examples, as Flower's ``Krum(num_clients_to_keep=m)``.

    The choice is Blanchard et al.'s (the ``m`` least scores, over the updates
    that trained); only the mean of the chosen updates weighs them by ``n_k``.
    """

    def rule(w: Arrays, deltas: list[Arrays], n: np.ndarray, state: Any) -> tuple[Arrays, Any]:
        kept = [i for i, count in enumerate(n) if count > 0]
        x = flat([deltas[i] for i in kept], w)
        chosen = np.argsort(krum_scores(x, f), kind="stable")[:m]
        weights = n[kept][chosen]
        return unflat(weights @ x[chosen] / weights.sum(), w), state

    return rule


def bulyan(f: int) -> Callable[[np.ndarray], np.ndarray]:
    """El Mhamdi et al. 2018: theta = n - 2f Krum picks, then beta = theta - 2f near the median."""

    def combine(x: np.ndarray) -> np.ndarray:
        left = list(range(len(x)))
        picked = []
        for _ in range(len(x) - 2 * f):
            sub = x[left]
            scores = (
                krum_scores(sub, f) if len(sub) - f - 2 >= 1 else krum_scores(sub, len(sub) - 3)
            )
            picked.append(left.pop(int(np.argmin(scores))))
        chosen = x[picked]
        centre = np.median(chosen, axis=0)
        beta = len(chosen) - 2 * f
        nearest = np.argsort(np.abs(chosen - centre), axis=0, kind="stable")[:beta]
        return np.take_along_axis(chosen, nearest, axis=0).mean(axis=0)

    return combine


PRESETS: dict[str, tuple[Callable[[int], covey.Strategy], Callable[[int], Rule]]] = {
    "FedAvg": (lambda n: covey.FedAvg(), lambda n: fedavg),
    "FedProx": (lambda n: covey.FedProx(proximal_mu=0.5), lambda n: fedavg),
    "FedAvgM": (
        lambda n: covey.FedAvgM(server_lr=0.7, server_momentum=0.5),
        lambda n: fedavgm(0.7, 0.5),
    ),
    "FedAdam": (
        lambda n: covey.FedAdam(eta=0.1, beta1=0.8, beta2=0.95, tau=1e-2),
        lambda n: fedopt("adam", 0.1, 0.8, 0.95, 1e-2),
    ),
    "FedYogi": (lambda n: covey.FedYogi(), lambda n: fedopt("yogi", 1e-2, 0.9, 0.99, 1e-3)),
    "FedAdagrad": (
        lambda n: covey.FedAdagrad(eta=0.3, beta1=0.5, tau=1e-2),
        lambda n: fedopt("adagrad", 0.3, 0.5, 0.0, 1e-2),
    ),
    "FedMedian": (lambda n: covey.FedMedian(), lambda n: coordinatewise(median)),
    "FedTrimmedAvg-0": (
        lambda n: covey.FedTrimmedAvg(beta=0.0),
        lambda n: coordinatewise(trimmed(0.0)),
    ),
    "FedTrimmedAvg-0.2": (
        lambda n: covey.FedTrimmedAvg(beta=0.2),
        lambda n: coordinatewise(trimmed(0.2)),
    ),
    "FedTrimmedAvg-0.49": (
        lambda n: covey.FedTrimmedAvg(beta=0.49),
        lambda n: coordinatewise(trimmed(0.49)),
    ),
    "Krum": (lambda n: covey.Krum(f=1), lambda n: coordinatewise(multi_krum(1, 1))),
    "MultiKrum": (lambda n: covey.MultiKrum(f=1), lambda n: coordinatewise(multi_krum(1, n - 1))),
    "MultiKrum-m2": (
        lambda n: covey.MultiKrum(f=1, m=2),
        lambda n: coordinatewise(multi_krum(1, 2)),
    ),
    "MultiKrum-weighted": (
        lambda n: covey.MultiKrum(f=1, m=3, weighted=True),
        lambda n: weighted_multi_krum(1, 3),
    ),
    "Bulyan": (lambda n: covey.Bulyan(f=0), lambda n: coordinatewise(bulyan(0))),
}


@pytest.mark.parametrize("examples", [ODD, EVEN], ids=["odd-with-zero", "even"])
@pytest.mark.parametrize("delta", [False, True], ids=["weights", "delta"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_matches_its_paper_over_rounds(
    name: str, delta: bool, examples: tuple[int, ...]
) -> None:
    make_strategy, make_rule = PRESETS[name]
    n = sum(1 for count in examples if count)  # the updates a rule combines
    result = run(make_strategy(n), examples, delta=delta)
    assert all(r.aggregated for r in result.history.rounds[1:])
    assert_models_close(result.weights, replay(make_rule(n), examples))


def test_bulyan_with_one_byzantine_client_of_seven() -> None:
    examples = (3, 1, 4, 1, 5, 9, 2)
    result = run(covey.Bulyan(f=1), examples)
    assert_models_close(result.weights, replay(coordinatewise(bulyan(1)), examples))


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        (covey.FedAvg, fedavg),
        (covey.FedMedian, coordinatewise(median)),
        (lambda **kw: covey.FedTrimmedAvg(beta=0.4, **kw), coordinatewise(trimmed(0.4))),
        (covey.FedAdam, fedopt("adam", 1e-2, 0.9, 0.99, 1e-3)),
    ],
)
def test_one_client_alone(make: Callable[..., covey.Strategy], rule: Rule) -> None:
    one = {"min_fit_clients": 1, "min_evaluate_clients": 1, "min_available_clients": 1}
    result = run(make(**one), [4])
    assert_models_close(result.weights, replay(rule, [4]))


HALF: Arrays = {"h": np.linspace(-1.0, 1.0, 5).astype(np.float16), "g": np.ones((2, 2), np.float16)}


@pytest.mark.parametrize(
    ("strategy", "rule"),
    [
        (covey.FedAvg(), fedavg),
        (covey.FedMedian(), coordinatewise(median)),
        (covey.FedTrimmedAvg(beta=0.2), coordinatewise(trimmed(0.2))),
        (covey.FedAdam(), fedopt("adam", 1e-2, 0.9, 0.99, 1e-3)),
        (covey.FedYogi(), fedopt("yogi", 1e-2, 0.9, 0.99, 1e-3)),
        (covey.FedAdagrad(), fedopt("adagrad", 1e-1, 0.0, 0.0, 1e-3)),
        (covey.Krum(f=1), coordinatewise(multi_krum(1, 1))),
    ],
    ids=lambda x: getattr(x, "name", ""),
)
def test_float16_models_stay_float16_and_follow_the_reference(
    strategy: covey.Strategy, rule: Rule
) -> None:
    result = run(strategy, ODD, HALF)
    # float16 keeps about 3 significant digits; the reference rounds to it each round too.
    assert_models_close(result.weights, replay(rule, ODD, HALF), rtol=1e-2, atol=1e-2)
