"""LogisticClient under FedProx and SCAFFOLD, against NumPy replays of the two papers."""

from __future__ import annotations

import numpy as np
import pytest

import covey
from covey import clients
from covey.data import load_digits
from covey.models import (
    LogisticClient,
    logistic_evaluate,
    logistic_grad,
    logistic_init,
    logistic_sgd_epoch,
)

DATA = load_digits(seed=0)
SIZES = (13, 40, 27)  # unequal, and not multiples of the batch
LR, BATCH, EPOCHS, ROUNDS = 0.2, 8, 2, 3


def part(cid: int) -> tuple[np.ndarray, np.ndarray]:
    start = sum(SIZES[:cid])
    stop = start + SIZES[cid]
    return DATA.x_train[start:stop], DATA.y_train[start:stop]


def client(cid: int) -> LogisticClient:
    return LogisticClient(cid, *part(cid), lr=LR, epochs=EPOCHS, batch_size=BATCH)


def local_sgd(
    cid: int, rnd: int, w: dict[str, np.ndarray], grad_extra: object
) -> tuple[dict[str, np.ndarray], int]:
    """The client's SGD written out: ``grad_extra(y) -> extra gradient`` added at each step."""
    x, t = part(cid)
    y = {k: v.copy() for k, v in w.items()}
    steps = 0
    for epoch in range(EPOCHS):
        order = np.random.default_rng([0, cid, rnd, epoch]).permutation(len(t))
        for s in range(0, len(t), BATCH):
            idx = order[s : s + BATCH]
            g = logistic_grad(y, x[idx], t[idx])
            extra = grad_extra(y)  # type: ignore[operator]
            y = {k: y[k] - LR * (g[k] + extra[k]) for k in y}
            steps += 1
    return y, steps


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_fedprox_adds_the_proximal_gradient_at_every_step(mu: float) -> None:
    """Li et al. (MLSys 2020): each local step descends F_k(w) + mu/2 ||w - w_global||^2."""
    result = covey.simulate(
        client,
        num_clients=len(SIZES),
        rounds=ROUNDS,
        strategy=covey.FedProx(proximal_mu=mu, fraction_evaluate=0.0),
        initial_weights=logistic_init(64, 10),
    )
    w = logistic_init(64, 10)
    n = np.asarray(SIZES, dtype=np.float64)
    for rnd in range(1, ROUNDS + 1):
        anchor = w
        local = [
            local_sgd(c, rnd, w, lambda y, a=anchor: {k: mu * (y[k] - a[k]) for k in y})[0]
            for c in range(len(SIZES))
        ]
        w = {k: sum(n[c] * local[c][k] for c in range(len(SIZES))) / n.sum() for k in w}
    for k, v in w.items():
        np.testing.assert_allclose(result.weights[k], v, rtol=1e-10, atol=1e-12)


def test_scaffold_corrects_every_step_and_reports_option_two() -> None:
    """Karimireddy et al. (ICML 2020), option II, all clients every round, eta_g = 1."""
    result = covey.simulate(
        client,
        num_clients=len(SIZES),
        rounds=ROUNDS,
        strategy=covey.Scaffold(num_clients=len(SIZES), fraction_evaluate=0.0),
        initial_weights=logistic_init(64, 10),
    )
    assert all(r.aggregated for r in result.history.rounds[1:])
    w = logistic_init(64, 10)
    c = {k: np.zeros_like(v) for k, v in w.items()}
    ci = [{k: np.zeros_like(v) for k, v in w.items()} for _ in SIZES]
    for rnd in range(1, ROUNDS + 1):
        dys, dcs = [], []
        for cid in range(len(SIZES)):
            fix = {k: c[k] - ci[cid][k] for k in w}
            y, steps = local_sgd(cid, rnd, w, lambda _y, f=fix: f)
            new = {k: ci[cid][k] - c[k] + (w[k] - y[k]) / (steps * LR) for k in w}
            dys.append({k: y[k] - w[k] for k in w})
            dcs.append({k: new[k] - ci[cid][k] for k in w})
            ci[cid] = new
        w = {k: w[k] + sum(d[k] for d in dys) / len(SIZES) for k in w}
        c = {k: c[k] + sum(d[k] for d in dcs) / len(SIZES) for k in w}
    for k, v in w.items():
        np.testing.assert_allclose(result.weights[k], v, rtol=1e-9, atol=1e-12)


def test_a_client_without_data_reports_no_change_of_its_control_variate() -> None:
    """No local step taken: ``c_i`` stays as it was and ``Delta c_i`` is zero, not ``-c``."""
    x, y = part(0)
    empty = LogisticClient(3, x[:0], y[:0], x, y, lr=LR, batch_size=BATCH)
    w = logistic_init(64, 10)
    c = {k: np.full_like(v, 0.25) for k, v in w.items()}
    config = {"round": 1, "extras": {clients.SERVER_CONTROL: c}}
    for rnd in (1, 2):
        result = empty.fit(w, {**config, "round": rnd})
        assert result.num_examples == 0
        change = result.extras[clients.CLIENT_DELTA]
        assert result.delta is not None
        for k in w:
            np.testing.assert_array_equal(change[k], np.zeros_like(w[k]))
            np.testing.assert_array_equal(result.delta[k], np.zeros_like(w[k]))
    assert empty._control is not None
    assert empty._control.value is not None
    for k in w:
        np.testing.assert_array_equal(empty._control.value[k], np.zeros_like(w[k]))


@pytest.mark.parametrize(
    ("labels", "said"), [([0, 1, -1, 2], "got label -1"), ([0, 1, 5, 2], "label 5")]
)
def test_the_plain_functions_refuse_labels_that_are_no_class_index(
    labels: list[int], said: str
) -> None:
    # Before: -1 silently trained and scored the last class; 5 failed with a bare IndexError.
    x, y = np.ones((4, 3)), np.array(labels)
    weights = logistic_init(3, 3)
    with pytest.raises(ValueError, match=said):
        logistic_sgd_epoch(weights, x, y, lr=0.1, batch_size=2, order=np.arange(4))
    with pytest.raises(ValueError, match=said):
        logistic_evaluate(weights, x, y)


@pytest.mark.parametrize(
    ("weights", "said"),
    [
        ({"W": np.zeros((3, 2))}, r"expected the arrays \['W', 'b'\], got \['W'\]"),
        (
            {"W": np.zeros((2, 3)), "b": np.zeros(3)},
            r"'W' has shape \(2, 3\).*needs \(3, classes\)",
        ),
        ({"W": np.zeros((3, 2)), "b": np.zeros(5)}, r"'b' has shape \(5,\), 'W' of shape"),
        ({"W": np.zeros(6), "b": np.zeros(2)}, r"'W' has shape \(6,\)"),
    ],
    ids=["names", "transposed", "bias", "flat"],
)
def test_the_plain_functions_refuse_weights_of_another_model_naming_the_array(
    weights: dict[str, np.ndarray], said: str
) -> None:
    # Before: a bare KeyError: 'b', or NumPy's "shapes not aligned" / "could not be broadcast".
    x, y = np.ones((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(covey.WeightsError, match=said):
        logistic_evaluate(weights, x, y)
    with pytest.raises(covey.WeightsError, match=said):
        logistic_grad(weights, x, y)
    with pytest.raises(covey.WeightsError, match=said):
        logistic_sgd_epoch(weights, x, y, lr=0.1, batch_size=2, order=np.arange(4))


def test_the_plain_functions_refuse_rows_and_labels_that_do_not_pair() -> None:
    weights = logistic_init(3, 2)
    with pytest.raises(ValueError, match=r"x and y need the same length .* got 4 and 3"):
        logistic_evaluate(weights, np.ones((4, 3)), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match=r"x must be a 2-D array of numbers .* shape \(4,\)"):
        logistic_evaluate(weights, np.ones(4), np.array([0, 1, 0, 1]))
    with pytest.raises(TypeError, match="weights must be a mapping of names to arrays"):
        logistic_evaluate([np.zeros((3, 2)), np.zeros(2)], np.ones((4, 3)), np.zeros(4, int))  # type: ignore[arg-type]
