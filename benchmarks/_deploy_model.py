"""The big model of the deployed benchmark, defined once for covey, Flower and raw sockets.

Pure NumPy (it is imported from covey's venv and from Flower's). The model is
one float32 array ``"w"``. Its entries follow a pattern with a prime period,
``w[i] = (i mod P) / P``, so no two 5 MB pieces of it are equal: Flower stores
arrays as content-addressed chunks and sends equal chunks once, so a model of
zeros would flatter it. Every client returns ``w + 1``, so after ``r`` rounds of
FedAvg ``w[i] = (i mod P) / P + r``, which :func:`check` verifies on a sample
without copying the model.
"""

from __future__ import annotations

import numpy as np

KEY = "w"
PERIOD = 1_000_003  # a prime: no power-of-two chunk size is a multiple of it
SAMPLE = 1 << 20  # entries checked at each end of the model


def elements_for_mb(mb: float) -> int:
    """Number of float32 entries of a model of ``mb`` megabytes (10**6 bytes)."""
    return round(mb * 1e6 / 4)


def pattern(start: int, stop: int) -> np.ndarray:
    """Entries ``start .. stop - 1`` of the initial model."""
    idx = np.arange(start, stop, dtype=np.int64) % PERIOD
    return (idx.astype(np.float64) / PERIOD).astype(np.float32)


def initial(elements: int) -> np.ndarray:
    """The initial model: ``elements`` float32 entries (built in slices, one copy in memory)."""
    out = np.empty(elements, dtype=np.float32)
    step = 1 << 24
    for start in range(0, elements, step):
        stop = min(elements, start + step)
        out[start:stop] = pattern(start, stop)
    return out


def client_update(w: np.ndarray) -> np.ndarray:
    """What every client returns: ``w + 1`` (a new float32 array)."""
    return np.add(w, np.float32(1.0), dtype=np.float32)


def check(w: np.ndarray, rounds_done: int) -> float:
    """Max |error| of ``w`` after ``rounds_done`` rounds, on its first and last entries."""
    n = w.shape[0]
    k = min(SAMPLE, n)
    head = np.abs(w[:k] - (pattern(0, k) + np.float32(rounds_done)))
    tail = np.abs(w[n - k :] - (pattern(n - k, n) + np.float32(rounds_done)))
    return float(max(head.max(), tail.max()))
