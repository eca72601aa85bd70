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


def weighted_metrics(results: Sequence[tuple[int, Metrics]]) -> Metrics:
    """Average numeric metrics over clients, weighted by their number of examples.

    A privacy budget a client reports (``dp_epsilon``, ``dp_delta``, see
    :data:`LARGEST`) is the largest any client reported: what the round's
    release cost its most exposed client, which a mean would understate.

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
    return {**combined, **largest}


def _mean(pairs: list[tuple[int, float]]) -> float:
    """The mean of ``(n_k, m_k)`` pairs (``n_k > 0``) weighted by ``n_k``.

    Summed as ``n_k * m_k`` in order; if that overflows though every value is
    finite (a perplexity of 1e306 on 500 examples), as ``(n_k / sum n) * m_k``.
    """
    count = 0
    total = 0.0
    for n, m in pairs:
        total += n * m
        count += n
    mean = total / count
    if not math.isfinite(mean) and all(math.isfinite(m) for _, m in pairs):
        mean = sum((n / count) * m for n, m in pairs)
    return mean
