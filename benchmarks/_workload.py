"""The benchmark workload, defined once for every runner.

Pure NumPy (plus scikit-learn's bundled digits data set), so that the covey
runner, the plain NumPy loop and the Flower runner (which runs in its own venv
and imports this file through ``sys.path``) all execute exactly the same math.

Two workloads:

* ``digits``: multinomial logistic regression on scikit-learn's 8x8 digits,
  FedAvg over ``N`` IID clients for ``R`` rounds, one local epoch of minibatch
  SGD per client and round, central evaluation on a held-out test split.
* ``large``: a single float32 array of 10,000,000 entries (40 MB); every client
  returns the global array plus seeded noise. It measures what a framework
  costs per round and per model copy when the model is big and compute is nil.
  :func:`large_update_in_place` is the same update written into the array
  received, for clients that train in place (covey's ``writes_weights``).
"""

from __future__ import annotations

import functools

import numpy as np

# --- digits ------------------------------------------------------------------

NUM_SAMPLES = 1797
NUM_TRAIN = 1437
NUM_FEATURES = 64
NUM_CLASSES = 10
LEARNING_RATE = 0.1
BATCH_SIZE = 32
DATA_SEED = 0

# --- large model -------------------------------------------------------------

LARGE_SIZE = 10_000_000
LARGE_KEY = "w"
LARGE_NOISE = 1e-3
LARGE_MODEL_BYTES = LARGE_SIZE * 4  # float32


@functools.lru_cache(maxsize=1)
def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(X_train, y_train, X_test, y_test)``, shuffled with a fixed seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.asarray(data.data, dtype=np.float64) / 16.0
    y = np.asarray(data.target, dtype=np.int64)
    if x.shape != (NUM_SAMPLES, NUM_FEATURES):
        raise RuntimeError(f"unexpected digits shape {x.shape}")
    perm = np.random.default_rng(DATA_SEED).permutation(NUM_SAMPLES)
    x, y = x[perm], y[perm]
    for arr in (x, y):
        arr.setflags(write=False)
    return x[:NUM_TRAIN], y[:NUM_TRAIN], x[NUM_TRAIN:], y[NUM_TRAIN:]


@functools.lru_cache(maxsize=8)
def partition(num_clients: int) -> tuple[np.ndarray, ...]:
    """IID partition: client ``k`` gets the train rows at ``partition(N)[k]``."""
    return tuple(np.array_split(np.arange(NUM_TRAIN), num_clients))


def client_data(k: int, num_clients: int) -> tuple[np.ndarray, np.ndarray]:
    """Training rows ``(X_k, y_k)`` of client ``k`` out of ``num_clients``."""
    x_train, y_train, _, _ = load_data()
    idx = partition(num_clients)[k]
    return x_train[idx], y_train[idx]


def initial_weights() -> dict[str, np.ndarray]:
    """The initial model: ``W`` (64x10) and ``b`` (10), float64 zeros."""
    return {
        "W": np.zeros((NUM_FEATURES, NUM_CLASSES), dtype=np.float64),
        "b": np.zeros(NUM_CLASSES, dtype=np.float64),
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p


def local_train(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, k: int, rnd: int
) -> tuple[np.ndarray, np.ndarray]:
    """One local epoch of client ``k`` in round ``rnd`` (1-based).

    Minibatch SGD, batch 32 (the last one may be smaller), learning rate 0.1,
    gradient of the mean softmax cross-entropy over the batch, visiting order
    ``default_rng(k + rnd).permutation(n_k)``. The inputs are not modified (they
    may be read-only); new arrays are returned.
    """
    w = np.array(w, dtype=np.float64, copy=True)
    b = np.array(b, dtype=np.float64, copy=True)
    n = x.shape[0]
    order = np.random.default_rng(k + rnd).permutation(n)
    for start in range(0, n, BATCH_SIZE):
        idx = order[start : start + BATCH_SIZE]
        xb = x[idx]
        yb = y[idx]
        grad = _softmax(xb @ w + b)
        grad[np.arange(idx.size), yb] -= 1.0
        grad /= idx.size
        w -= LEARNING_RATE * (xb.T @ grad)
        b -= LEARNING_RATE * grad.sum(axis=0)
    return w, b


def evaluate(w: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Central evaluation on the 360 test rows: ``(mean cross-entropy, accuracy)``."""
    _, _, x_test, y_test = load_data()
    p = _softmax(x_test @ w + b)
    loss = float(-np.mean(np.log(p[np.arange(y_test.size), y_test] + 1e-12)))
    acc = float(np.mean(np.argmax(p, axis=1) == y_test))
    return loss, acc


# --- large model -------------------------------------------------------------


def large_initial() -> dict[str, np.ndarray]:
    """One float32 array of ``LARGE_SIZE`` zeros under the key ``"w"``."""
    return {LARGE_KEY: np.zeros(LARGE_SIZE, dtype=np.float32)}


def large_update(w: np.ndarray, k: int, rnd: int) -> np.ndarray:
    """What client ``k`` returns in round ``rnd`` of the large-model case."""
    rng = np.random.default_rng(k + rnd)
    return w + LARGE_NOISE * rng.standard_normal(LARGE_SIZE, dtype=np.float32)


def large_update_fresh(w: np.ndarray, k: int, rnd: int) -> np.ndarray:
    """:func:`large_update` in a new array of its own, holding one model-sized array, bit for bit.

    ``w + LARGE_NOISE * noise`` holds two: NumPy makes a new array for the product
    of an array and a Python float. Scaling the noise in place and adding ``w``
    into it gives the same sums (addition is commutative) in the one array.
    """
    rng = np.random.default_rng(k + rnd)
    out = rng.standard_normal(LARGE_SIZE, dtype=np.float32)
    out *= LARGE_NOISE
    out += w
    return out


LARGE_CHUNK = 1 << 16


def large_update_in_place(w: np.ndarray, k: int, rnd: int) -> np.ndarray:
    """:func:`large_update` written into ``w`` itself, bit for bit, with no second model array.

    The noise is drawn in chunks of :data:`LARGE_CHUNK` entries from the same
    generator, which gives the same stream as one draw of all entries.
    """
    rng = np.random.default_rng(k + rnd)
    chunk = np.empty(LARGE_CHUNK, dtype=np.float32)
    for start in range(0, w.size, LARGE_CHUNK):
        part = chunk[: min(LARGE_CHUNK, w.size - start)]
        rng.standard_normal(dtype=np.float32, out=part)
        part *= LARGE_NOISE
        w[start : start + part.size] += part
    return w
