"""The federated loss of a round: the clients' losses weighted by their examples."""

from __future__ import annotations

import math

__all__ = ["weighted_loss"]


def weighted_loss(losses: list[tuple[int, float]], examples: int) -> float:
    """The mean of finite ``(num_examples, loss)`` pairs weighted by their examples.

    Summed as ``n_k * loss_k`` in order; if that overflows though each loss is
    finite (a loss of 1e308 on 5 examples), as ``(n_k / examples) * loss_k``.
    A pair of 0 examples weighs nothing (its loss may be NaN: ``0 * NaN`` is NaN).
    """
    total = -0.0  # 0.0 + -0.0 is 0.0: every client's loss of -0.0 stays -0.0
    for n, loss in losses:
        if n:
            total += n * loss
    mean = total / examples
    if not math.isfinite(mean):
        mean = math.fsum((n / examples) * loss for n, loss in losses if n)
    return mean
