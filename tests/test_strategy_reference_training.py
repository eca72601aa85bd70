"""SCAFFOLD, q-FedAvg, FedProx and FedBuff run by ``covey.simulate``, against their papers.

These algorithms change what clients do, so each reference replays the whole
federation: every client has the quadratic loss ``f_k(w) = a_k/2 ||w - t_k||^2``
and takes a few gradient steps, exactly as the covey client beside it does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import covey

Arrays = dict[str, np.ndarray]
Model = covey.Weights

TARGETS = [np.array([i - 2.5, (i % 3) * 1.0, -i / 2.0]) for i in range(6)]
CURVATURE = [0.5 + 0.3 * i for i in range(6)]
SIZES = (3, 1, 4, 1, 5, 9)
STEPS, LR = 4, 0.1
ZERO: Arrays = {"w": np.zeros(3)}


def grad(cid: int, w: np.ndarray) -> np.ndarray:
    """The gradient of ``f_cid(w) = a/2 ||w - t||^2``."""
    return CURVATURE[cid] * (w - TARGETS[cid])


def loss(cid: int, w: np.ndarray) -> float:
    return float(0.5 * CURVATURE[cid] * np.sum((w - TARGETS[cid]) ** 2))


def gd(cid: int, x: np.ndarray, correction: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``STEPS`` local gradient steps from ``x``, each gradient plus ``correction(y)``."""
    y = x.copy()
    for _ in range(STEPS):
        y = y - LR * (grad(cid, y) + correction(y))
    return y


def constant(value: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda _: value


def proximal(mu: float, anchor: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The proximal term's gradient ``mu (y - anchor)``."""
    return lambda y: mu * (y - anchor)


class ScaffoldClient(covey.Client):
    """Local gradient steps corrected by SCAFFOLD's control variates (``ControlVariate``)."""

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.control = covey.clients.ControlVariate()

    def fit(self, weights: Model, config: dict[str, Any]) -> covey.FitResult:
        corr = self.control.correction(weights, config)
        y = gd(self.cid, weights["w"], constant(corr["w"]))
        return self.control.fit_result({"w": y}, num_examples=1, steps=STEPS, lr=LR)


def test_scaffold_follows_karimireddy_et_al_with_partial_participation() -> None:
    """Algorithm 1, option II: x += eta_g mean(dy_i), c += (1/N) sum(dc_i) over the sampled S."""
    n, eta_g = 6, 0.7
    strategy = covey.Scaffold(num_clients=n, server_lr=eta_g, fraction_fit=0.5, fraction_evaluate=0)
    result = covey.simulate(ScaffoldClient, n, 4, strategy, ZERO)
    x, c = np.zeros(3), np.zeros(3)
    ci = [np.zeros(3) for _ in range(n)]
    for record in result.history.rounds[1:]:
        assert len(record.fit_participants) == 3
        dys, dcs = [], []
        for i in record.fit_participants:
            y = gd(i, x, constant(c - ci[i]))
            new = ci[i] - c + (x - y) / (STEPS * LR)
            dys.append(y - x)
            dcs.append(new - ci[i])
            ci[i] = new
        x = x + eta_g * np.mean(dys, axis=0)
        c = c + np.sum(dcs, axis=0) / n
    np.testing.assert_allclose(result.weights["w"], x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("q", [0.0, 0.5, 2.0])
def test_qfedavg_follows_li_et_al(q: float) -> None:
    """q-FFL (ICLR 2020), Algorithm 2: w -= sum_k F_k^q L (w - w_k) / sum_k h_k, L = 1/lr."""

    class Client(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Model, config: dict[str, Any]) -> covey.FitResult:
            before = loss(self.cid, weights["w"])
            y = gd(self.cid, weights["w"], np.zeros_like)
            return covey.FitResult(weights={"w": y}, num_examples=1, metrics={"loss": before})

    result = covey.simulate(Client, 6, 3, covey.QFedAvg(q=q, client_lr=LR), ZERO)
    w, big_l = np.zeros(3), 1 / LR
    for _ in range(3):
        num, den = np.zeros(3), 0.0
        for k in range(6):
            f = loss(k, w)
            dw = big_l * (w - gd(k, w, np.zeros_like))
            num += f**q * dw
            den += (q * f ** (q - 1) * float(dw @ dw) if q else 0.0) + big_l * f**q
        w = w - num / den
    np.testing.assert_allclose(result.weights["w"], w, rtol=1e-9)


@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_fedprox_clients_minimize_the_proximal_objective(mu: float) -> None:
    """Li et al. (MLSys 2020): local steps on f_k(w) + mu/2 ||w - w_t||^2, then FedAvg."""

    class Client(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Model, config: dict[str, Any]) -> covey.FitResult:
            m = covey.clients.proximal_mu(config)
            assert config["seen"] == config["round"]  # the user's config is kept
            y = {"w": weights["w"].copy()}
            for _ in range(STEPS):
                g = covey.clients.proximal_grad({"w": grad(self.cid, y["w"])}, y, weights, m)
                y = {"w": y["w"] - LR * g["w"]}
            return covey.FitResult(weights=y, num_examples=SIZES[self.cid])

    strategy = covey.FedProx(proximal_mu=mu, on_fit_config=lambda r: {"seen": r})
    result = covey.simulate(Client, 6, 3, strategy, ZERO)
    x = np.zeros(3)
    for _ in range(3):
        ys = [gd(k, x, proximal(mu, x)) for k in range(6)]
        x = np.average(ys, axis=0, weights=SIZES)
    np.testing.assert_allclose(result.weights["w"], x, rtol=1e-12)


def fedbuff_reference(
    buffer: int, lr: float, weighted: bool, updates: int, durations: list[float]
) -> tuple[np.ndarray, list[list[int]]]:
    """Nguyen et al. (AISTATS 2022), Algorithm 1, in virtual time, every client always busy.

    Each reply's update is scaled by ``1/sqrt(1 + tau)``; ``buffer`` replies make
    one global update ``w += lr * mean``. As covey documents, a client whose reply
    waits in the buffer starts its next task when the buffer is applied.
    """
    w, version = np.zeros(3), 0
    busy = sorted((d, cid, 0, w.copy()) for cid, d in enumerate(durations))
    taus: list[list[int]] = []
    while version < updates:
        done: list[tuple[float, int]] = []
        total, weight, stale = np.zeros(3), 0.0, []
        while len(done) < buffer:
            t, cid, sent_version, sent = busy.pop(0)
            tau = version - sent_version
            n = SIZES[cid] if weighted else 1
            total += n * (1 + tau) ** -0.5 * 0.5 * (TARGETS[cid] - sent)
            weight += n
            done.append((t, cid))
            stale.append(tau)
        w, version = w + lr * total / weight, version + 1
        taus.append(stale)
        now = done[-1][0]
        busy = sorted(busy + [(now + durations[c], c, version, w.copy()) for _, c in done])
    return w, taus


@pytest.mark.parametrize(
    ("buffer", "lr", "weighted"), [(4, 1.0, True), (1, 1.0, True), (2, 0.5, False)]
)
def test_fedbuff_follows_nguyen_et_al(buffer: int, lr: float, weighted: bool) -> None:
    class Client(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: Model, config: dict[str, Any]) -> covey.FitResult:
            new = weights["w"] + 0.5 * (TARGETS[self.cid] - weights["w"])
            return covey.FitResult(weights={"w": new}, num_examples=SIZES[self.cid])

    durations = [1.0, 2.5, 1.7, 4.1]
    strategy = covey.FedBuff(buffer_size=buffer, concurrency=4, server_lr=lr, weighted=weighted)
    result = covey.simulate(Client, 4, 6, strategy, ZERO, client_durations=durations)
    want, taus = fedbuff_reference(buffer, lr, weighted, 6, durations)
    assert [r.aggregate_info["staleness"] for r in result.history.rounds[1:]] == taus
    # A buffer as large as the federation is FedAvg (nothing stale); smaller ones see staleness.
    assert any(any(t) for t in taus) == (buffer < 4)
    np.testing.assert_allclose(result.weights["w"], want, rtol=1e-12)


def test_scaffold_refuses_more_control_variate_updates_than_num_clients() -> None:
    """``c += (1/N) sum dc_i`` over more than N clients means N is not the federation's size."""
    strategy = covey.Scaffold(num_clients=3, fraction_evaluate=0)
    c = {"extras": {"scaffold_c": ZERO}}
    results = [ScaffoldClient(cid).fit(ZERO, {"round": 1, **c}) for cid in range(6)]
    with pytest.raises(covey.AggregationError, match=r"6 clients.*num_clients=3"):
        strategy.aggregate(ZERO, results)


@pytest.mark.parametrize("size", [3, 60])
def test_scaffold_made_for_another_federation_size_is_refused_before_training(size: int) -> None:
    """N too large moves c too slowly, too small too fast, even with few clients a round."""
    strategy = covey.Scaffold(num_clients=size, fraction_fit=0.2, fraction_evaluate=0)
    with pytest.raises(ValueError, match=f"num_clients={size}.*num_clients=6"):
        covey.simulate(ScaffoldClient, 6, 1, strategy, ZERO)
