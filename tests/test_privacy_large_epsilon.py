"""Accounting a release with very little noise (a huge epsilon) stays within bounded memory.

The PLD accountant lays a grid of step 1e-4 over a mechanism's privacy losses; a
Gaussian of noise multiplier 0.005 spans about 40,000 in loss, so the default grid
would take 10**10 points (150 GB) and fail, or swap the machine, before any round.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Mapping
from typing import Any

import dp_accounting as dpa
import numpy as np
import pytest

import covey
from covey.privacy._accounting import epsilon_of, pld_interval

pytestmark = pytest.mark.slow  # accounting with coarse grids still takes seconds


class _Step(covey.Client):
    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 0.01}, num_examples=3)


def test_a_local_dp_upload_with_a_huge_epsilon_is_accounted_in_bounded_memory() -> None:
    client = covey.privacy.LocalDP(_Step(), epsilon=1e5, delta=1e-5, clip=10.0, seed=0)
    tracemalloc.start()
    try:
        result = client.fit({"w": np.zeros(4, np.float32)}, {"round": 1})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.num_examples == 3
    assert client.spent() >= 1e5 * 0.99  # an upper bound of what was spent, never below
    assert peak < 1.5e9, f"{peak / 1e9:.1f} GB traced"


def test_the_grid_step_grows_only_for_very_little_noise() -> None:
    sampled = dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(0.8))
    ordinary = dpa.SelfComposedDpEvent(sampled, 500)
    assert pld_interval(ordinary) == 1e-4  # the accountant's own default: figures unchanged
    tiny = dpa.ComposedDpEvent([dpa.GaussianDpEvent(1.0), dpa.GaussianDpEvent(0.005)])
    step = pld_interval(tiny)
    assert step > 1e-4
    assert (1 / 0.005**2 + 20 / 0.005) / step <= 2_000_000
    assert pld_interval(dpa.LaplaceDpEvent(1e-6)) > 1e-4
    # Coarser, the grid still gives an epsilon close under RDP's looser upper bound.
    exact_rdp = epsilon_of(dpa.GaussianDpEvent(0.005), 1e-5, "rdp")
    coarse = epsilon_of(dpa.GaussianDpEvent(0.005), 1e-5, "pld")  # seconds: accounted once
    assert 0.9 * exact_rdp < coarse <= exact_rdp * 1.01
