"""The workload both halves of ``flower_parity.py`` run: the same data and the same math.

Pure NumPy and scikit-learn's bundled digits, imported by the covey half and by
the Flower half (which runs in Flower's own venv). Five clients hold unequal
slices of the training rows, so weighting by examples matters; local training
is one epoch of minibatch SGD on a multinomial logistic regression, its order
seeded by ``(client, round)``, with an optional FedProx term.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_CLIENTS = 5
ROUNDS = 3
SIZES = (90, 150, 210, 270, 330)  # training rows per client
BATCH = 32


@functools.lru_cache(maxsize=1)
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: digits scaled to [0, 1], shuffled with seed 0."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    x = np.asarray(bunch.data, dtype=np.float64)[order] / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)[order]
    cut = sum(SIZES)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def partition(pid: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``pid``'s rows: the ``pid``-th slice of ``SIZES`` rows of the training data."""
    x, y, _, _ = data()
    start = sum(SIZES[:pid])
    return x[start : start + SIZES[pid]], y[start : start + SIZES[pid]]


def initial() -> dict[str, np.ndarray]:
    """The model before round 1: small seeded weights, zero bias."""
    rng = np.random.default_rng(1)
    return {"W": 0.01 * rng.standard_normal((64, 10)), "b": np.zeros(10)}


def _probabilities(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    z = x @ w + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def loss_accuracy(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``(w, b)`` on ``(x, y)``."""
    p = _probabilities(w, b, x)
    loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
    return loss, float(np.mean(p.argmax(axis=1) == y))


def train(
    w: np.ndarray, b: np.ndarray, pid: int, rnd: int, lr: float, mu: float = 0.0
) -> tuple[np.ndarray, np.ndarray, float]:
    """One local epoch of client ``pid`` in round ``rnd``; returns new arrays and the train loss.

    With ``mu > 0`` the gradient gets FedProx's ``mu (w - w_global)``. The inputs
    are not written to (they may be read-only).
    """
    x, y = partition(pid)
    w0, b0 = w, b
    w, b = w.copy(), b.copy()
    order = np.random.default_rng([pid, rnd]).permutation(len(y))
    for start in range(0, len(y), BATCH):
        idx = order[start : start + BATCH]
        grad = _probabilities(w, b, x[idx])
        grad[np.arange(len(idx)), y[idx]] -= 1.0
        grad /= len(idx)
        gw, gb = x[idx].T @ grad, grad.sum(axis=0)
        if mu > 0.0:
            gw, gb = gw + mu * (w - w0), gb + mu * (b - b0)
        w -= lr * gw
        b -= lr * gb
    return w, b, loss_accuracy(w, b, x, y)[0]


def learning_rate(rnd: int) -> float:
    """The clients' learning rate in round ``rnd``, sent by the server each round."""
    return 0.5 * 0.8 ** (rnd - 1)


def weighted_average(results: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Metrics averaged over clients weighted by examples (both frameworks' usual function)."""
    total = sum(n for n, _ in results)
    keys = {k for _, m in results for k in m}
    return {k: sum(n * m[k] for n, m in results if k in m) / total for k in sorted(keys)}
