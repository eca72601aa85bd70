"""Poisson sampling of the clients who train, seeded like the noise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from covey.privacy import _noise
from covey.privacy._step import Mechanism, Shared
from covey.strategies._checks import fit_only

_SAMPLING = 5  # purpose of the Poisson sampling stream


def poisson_selector(
    rate: float, shared: Shared, check: Callable[[int], object] | None = None
) -> Any:
    """A selector taking each candidate independently with probability ``rate``.

    The draw is seeded like the noise (the run's noise seed, or fresh CSPRNG
    seeds), so which clients took part is as hard to predict as the noise. It
    picks who trains only: federated evaluation samples by ``fraction_evaluate``.
    ``check``, if given, is called with the number of candidates before the draw
    (to refuse a round its aggregation could not complete, before clients train).

    Args:
        rate: The probability that each candidate is taken, every round.
        shared: The state the run's DP parts share (its noise seed, each round's
            number of candidates).
        check: Called with the number of candidates before the draw (None: no check).

    References:
        Zhu and Wang, "Poisson Subsampled Renyi Differential Privacy", ICML 2019.
    """

    def select(candidates: Sequence[int], round: int, rng: np.random.Generator) -> list[int]:
        shared.check()
        shared.population[round] = len(candidates)
        if check is not None:
            check(len(candidates))
        draw = _noise.generator(shared.seed, _SAMPLING, round).random(len(candidates))
        # Only the candidates taken are read: O(clients) in NumPy, not in Python.
        return [int(candidates[i]) for i in np.flatnonzero(draw < rate).tolist()]

    return fit_only(select)


def population_check(mech: Mechanism) -> Callable[[int], object] | None:
    """What refuses adaptive clipping's count noise for a round's population (see ``split``).

    The count noise defaults to a share of the clients expected, known only once a
    round's candidates are: too few, and round 1 failed after its clients trained.
    """
    adaptive, z, rate = mech.adaptive, mech.noise_multiplier, mech.sampling_rate
    if adaptive is None or adaptive.count_stddev is not None or mech.expected_clients is not None:
        return None  # nothing to check, or checked when the strategy was made
    return lambda population: adaptive.split(z, max((rate or 1.0) * population, 1.0))
