"""How a round's client metrics combine by default: weighted by each client's examples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from covey.core._messages import Metrics

MetricsFn = Callable[[Sequence[tuple[int, Metrics]]], Metrics]
"""``[(num_examples, metrics), ...] -> metrics``: combines the clients' metrics of a round."""


def weighted_metrics(results: Sequence[tuple[int, Metrics]]) -> Metrics:
    """Average numeric metrics over clients, weighted by their number of examples.

    Args:
        results: ``(num_examples, metrics)`` for each client.

    Returns:
        For each numeric metric, ``sum_k n_k m_k / sum_k n_k`` over the clients
        that reported it; a 0-d array counts as its number (``loss.detach().numpy()``
        gives one); other metrics (bools, strings, arrays of values) are left out.

    Example:
        >>> weighted_metrics([(10, {"acc": 1.0}), (30, {"acc": 0.0})])
        {'acc': 0.25}
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for n, metrics in results:
        for key, raw in metrics.items():
            value: object = raw  # an array too: the transports carry numeric arrays
            if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                continue
            sums[key] = sums.get(key, 0.0) + n * float(value)
            counts[key] = counts.get(key, 0) + n
    return {key: sums[key] / counts[key] for key in sums if counts[key] > 0}
