"""How a round's client metrics combine by default: weighted by each client's examples."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from covey.core._messages import Metrics

MetricsFn = Callable[[Sequence[tuple[int, Metrics]]], Mapping[str, Any]]
"""``[(num_examples, metrics), ...] -> metrics``: combines the clients' metrics of a round.

It may return any mapping of names to values the history can keep as JSON (a
``dict[str, float]``, or a list of each client's values under one name). The
round records them as ``history.json`` reads them back: a dict's keys as
strings, a tuple or a NumPy array as a list, a NumPy scalar as a Python number.
"""


#: Privacy budgets clients report (``covey.privacy.LocalDP``): combined as the largest.
LARGEST: frozenset[str] = frozenset({"dp_epsilon", "dp_delta"})

#: What a client reports beside its ``"r2"`` so that the round's R^2 is that of the pooled
#: data: for each output a row ``[sum of squared errors, sum of targets, sum of squared
#: deviations of the targets from their local mean]`` (:func:`r2_moments`).
R2_MOMENTS = "r2.moments"

#: The suffix of what a client reports beside a metric weighted by its own weights (its
#: ``sample_weight``): ``"train_accuracy.weight"``, the sum of the weights, by which the
#: round weighs that client's ``"train_accuracy"`` instead of by its examples.
WEIGHT = ".weight"


def weighted_metrics(results: Sequence[tuple[int, Metrics]]) -> Metrics:
    """Average numeric metrics over clients, weighted by their number of examples.

    A privacy budget a client reports (``dp_epsilon``, ``dp_delta``, see
    :data:`LARGEST`) is the largest any client reported: what the round's
    release cost its most exposed client, which a mean would understate.

    ``"r2"`` is no mean of per-example terms, so a mean of the clients' R^2 (each
    against its own targets' mean) is not the R^2 of their data pooled. When
    every client that reports ``"r2"`` also reports its sums under
    :data:`R2_MOMENTS` (as :class:`covey.sklearn.SklearnClient` does), ``"r2"`` is
    the pooled one, ``r2_score`` of all their targets and predictions
    concatenated (over several outputs, the mean of each output's); the sums
    themselves are left out, as arrays are.

    A metric that each client weighted by weights of its own (``sample_weight``)
    is pooled by them when every client that reports it also reports the sum of
    its weights as ``"<name>.weight"`` (:data:`WEIGHT`; ``SklearnClient``'s
    ``train_accuracy`` and ``train_loss``): the round's value is then the
    weighted mean of all their examples together, and the sums are left out.

    Args:
        results: ``(num_examples, metrics)`` for each client.

    Returns:
        For each numeric metric, ``sum_k n_k m_k / sum_k n_k`` over the clients
        that reported it (the largest value for the privacy budgets); a 0-d
        array counts as its number (``loss.detach().numpy()`` gives one); other
        metrics (bools, strings, arrays of values) are left out. A client with no
        examples weighs nothing, so its value (a NaN of an empty test set) never
        reaches the average. A NaN budget makes the round's largest NaN (unknown),
        whichever client reported it. Finite values whose ``n_k m_k`` overflows
        (near float64's largest) still give a finite mean, as the loss does.

    Example:
        >>> weighted_metrics([(10, {"acc": 1.0}), (30, {"acc": 0.0})])
        {'acc': 0.25}
        >>> weighted_metrics([(10, {"dp_epsilon": 4.0}), (30, {"dp_epsilon": 1.0})])
        {'dp_epsilon': 4.0}
    """
    pairs: dict[str, list[tuple[int, float]]] = {}
    largest: dict[str, float] = {}
    for n, metrics in results:
        for key, raw in metrics.items():
            value: object = raw  # an array too: the transports carry numeric arrays
            if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                continue
            if key in LARGEST:
                # NaN (a budget a client could not state) wins whatever the order: max()
                # kept it only when it came first, so the client's id decided
                largest[key] = float(np.maximum(largest.get(key, float(value)), float(value)))
                continue
            if n == 0:  # weighs nothing, nor may its NaN (0 * nan is nan)
                continue
            pairs.setdefault(key, []).append((n, float(value)))
    combined = {key: _mean(values) for key, values in pairs.items()}
    for key in [k for k in combined if k.endswith(WEIGHT) and k[: -len(WEIGHT)] in combined]:
        del combined[key]
        by_weight = _by_weight(results, key[: -len(WEIGHT)])
        if by_weight is not None:
            combined[key[: -len(WEIGHT)]] = by_weight
    pooled = _pooled_r2(results)
    if pooled is not None:
        combined["r2"] = pooled
    return {**combined, **largest}


def _by_weight(results: Sequence[tuple[int, Metrics]], name: str) -> float | None:
    """``name``'s mean weighted by each client's ``name.weight``; None if one lacks a weight."""
    pairs: list[tuple[float, float]] = []
    for n, metrics in results:
        value, weight = metrics.get(name), metrics.get(name + WEIGHT)
        if n == 0 or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            return None
        if not math.isfinite(weight) or weight < 0:
            return None
        if weight > 0:
            pairs.append((float(weight), float(value)))
    return _mean(pairs) if pairs else None


def r2_moments(y: Any, errors: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The sums of :data:`R2_MOMENTS` of targets ``y`` and prediction ``errors``, shape (n, k).

    For each output: the sum of squared errors, the sum of the targets and the
    sum of their squared deviations from their mean (central, not the sum of
    squares: the pooled spread then keeps its digits when the targets are far
    from 0).
    """
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    errors = np.asarray(errors, dtype=np.float64).reshape(y.shape)
    spread = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    return np.stack([(errors**2).sum(axis=0), y.sum(axis=0), spread], axis=1)


def _pooled_r2(results: Sequence[tuple[int, Metrics]]) -> float | None:
    """R^2 of the clients' data pooled, from their :data:`R2_MOMENTS`; None if one lacks them.

    Chan et al.'s parallel update pools the spreads: each client's own, plus
    ``n_k (mean_k - mean)^2``. Targets that do not vary give 1.0 for exact
    predictions and 0.0 otherwise, as ``r2_score``'s ``force_finite``.
    """
    sums: list[tuple[int, np.ndarray[Any, Any]]] = []
    for n, metrics in results:
        if n == 0 or "r2" not in metrics:
            continue
        moments = metrics.get(R2_MOMENTS)
        if not isinstance(moments, np.ndarray) or moments.ndim != 2 or moments.shape[1] != 3:
            return None
        if sums and moments.shape != sums[0][1].shape:
            return None
        sums.append((n, moments.astype(np.float64, copy=False)))
    if not sums:
        return None
    counts = np.array([float(n) for n, _ in sums])[:, None]
    stacked = np.stack([m for _, m in sums])  # (clients, outputs, 3)
    mean = stacked[:, :, 1].sum(axis=0) / counts.sum()
    deviation = stacked[:, :, 1] / counts - mean
    spread = (stacked[:, :, 2] + counts * deviation**2).sum(axis=0)
    squared = stacked[:, :, 0].sum(axis=0)
    varies = spread > 0
    r2 = np.where(varies, 1.0 - squared / np.where(varies, spread, 1.0), 0.0)
    r2[~varies & (squared == 0)] = 1.0
    return float(r2.mean())


def _mean(pairs: Sequence[tuple[float, float]]) -> float:
    """The mean of ``(n_k, m_k)`` pairs (``n_k > 0``) weighted by ``n_k``.

    Summed as ``n_k * m_k`` in order; if that overflows though every value is
    finite (a perplexity of 1e306 on 500 examples), as ``(n_k / sum n) * m_k``.
    """
    count: float = 0  # an int for counts of examples
    total = -0.0  # 0.0 + -0.0 is 0.0: every client's -0.0 (a perfect neg_ score) stays -0.0
    for n, m in pairs:
        total += n * m
        count += n
    mean = total / count
    if not math.isfinite(mean) and all(math.isfinite(m) for _, m in pairs):
        mean = sum((n / count) * m for n, m in pairs)
    return mean
