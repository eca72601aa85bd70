"""The benchmark's digits workload through covey.simulate equals a plain NumPy FedAvg loop.

Spec: sklearn digits, X = data / 16 (float64), shuffled with default_rng(0).permutation(1797);
the first 1437 examples train, the last 360 test; client k holds block k of
np.array_split(np.arange(1437), N); model W (64 x 10) and b (10) start at zero; in round r
client k runs one epoch of minibatch SGD (batch 32, lr 0.1, mean softmax cross-entropy)
visiting its examples in the order default_rng(k + r).permutation(n_k); FedAvg weighs the
clients by examples, and every client trains every round.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

import covey
from covey import FitResult
from covey.models import logistic_sgd_epoch

N = 10
ROUNDS = 3
LR = 0.1
BATCH = 32

Arrays = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def workload() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(0).permutation(1797)
    x, y = x[perm], y[perm]
    parts = np.array_split(np.arange(1437), N)
    return x[:1437], y[:1437], x[1437:], y[1437:], parts


class DigitsClient(covey.Client):
    def __init__(self, k: int, x: np.ndarray, y: np.ndarray) -> None:
        self.k, self.x, self.y = k, x, y

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        order = np.random.default_rng(self.k + config["round"]).permutation(len(self.y))
        new = logistic_sgd_epoch(weights, self.x, self.y, lr=LR, batch_size=BATCH, order=order)
        return FitResult(weights=new, num_examples=len(self.y))


def plain_sgd_epoch(
    W: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Minibatch SGD on the mean softmax cross-entropy, written independently of covey."""
    W, b = W.copy(), b.copy()
    for start in range(0, len(order), BATCH):
        idx = order[start : start + BATCH]
        logits = x[idx] @ W + b
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        onehot = np.eye(10)[y[idx]]
        grad_logits = (probs - onehot) / len(idx)
        W -= LR * (x[idx].T @ grad_logits)
        b -= LR * grad_logits.sum(axis=0)
    return W, b


def plain_fedavg(workload: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    x_train, y_train, _, _, parts = workload
    W, b = np.zeros((64, 10)), np.zeros(10)
    out = []
    for r in range(1, ROUNDS + 1):
        new_W, new_b, total = np.zeros_like(W), np.zeros_like(b), 0
        for k, part in enumerate(parts):
            order = np.random.default_rng(k + r).permutation(len(part))
            Wk, bk = plain_sgd_epoch(W, b, x_train[part], y_train[part], order)
            new_W += len(part) * Wk
            new_b += len(part) * bk
            total += len(part)
        W, b = new_W / total, new_b / total
        out.append((W, b))
    return out


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_digits_workload_matches_a_plain_numpy_loop(workload: Any, backend: str) -> None:
    x_train, y_train, x_test, y_test, parts = workload
    assert [len(p) for p in parts] == [144] * 7 + [143] * 3

    def client_fn(k: int) -> DigitsClient:
        return DigitsClient(k, x_train[parts[k]], y_train[parts[k]])

    per_round: list[Arrays] = []

    def evaluate(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        per_round.append({k: v.copy() for k, v in weights.items()})
        accuracy = float(((x_test @ weights["W"] + weights["b"]).argmax(axis=1) == y_test).mean())
        return 0.0, {"accuracy": accuracy}

    result = covey.simulate(
        client_fn,
        N,
        ROUNDS,
        covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0),
        {"W": np.zeros((64, 10)), "b": np.zeros(10)},
        evaluate,
        backend=backend,  # type: ignore[arg-type]
        num_workers=2,
    )
    reference = plain_fedavg(workload)
    assert len(per_round) == ROUNDS + 1
    for r, (W, b) in enumerate(reference, start=1):
        assert result.history[r].fit_participants == list(range(N))
        assert result.history[r].fit_examples == 1437
        assert np.max(np.abs(per_round[r]["W"] - W)) < 1e-12
        assert np.max(np.abs(per_round[r]["b"] - b)) < 1e-12
    assert np.max(np.abs(result.weights["W"] - reference[-1][0])) < 1e-12
    assert np.max(np.abs(result.weights["b"] - reference[-1][1])) < 1e-12
    # Sanity: the model learned something, so the comparison is not between zeros.
    assert np.abs(reference[-1][0]).max() > 0.05
    assert result.history.metric("accuracy")[-1][1] > 0.75
