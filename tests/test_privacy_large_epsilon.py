"""Accounting a release with very little noise (a huge epsilon) stays within bounded memory.

The PLD accountant lays a grid of step 1e-4 over a mechanism's privacy losses; a
Gaussian of noise multiplier 0.005 spans about 40,000 in loss, so the default grid
would take 10**10 points (150 GB) and fail, or swap the machine, before any round.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dp_accounting as dpa
import pytest

from covey.privacy._accounting import epsilon_of, pld_interval

pytestmark = pytest.mark.slow  # accounting with coarse grids still takes seconds


# In a process of its own, whose peak resident memory is the accounting's (tracing
# every allocation of the accountant's Python would make it take ten times as long).
_UPLOAD = """
import json, resource, sys

import numpy as np

import covey


class Step(covey.Client):
    def fit(self, weights, config):
        return covey.FitResult(weights={"w": weights["w"] + 0.01}, num_examples=3)


client = covey.privacy.LocalDP(Step(), epsilon=1e5, delta=1e-5, clip=10.0, seed=0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = client.fit({"w": np.zeros(4, np.float32)}, {"round": 1})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes there, else KiB
grew = (after - before) * unit
print(json.dumps({"examples": result.num_examples, "spent": client.spent(), "grew": grew}))
"""


def test_a_local_dp_upload_with_a_huge_epsilon_is_accounted_in_bounded_memory() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _UPLOAD], capture_output=True, text=True, timeout=240, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    said = json.loads(done.stdout.splitlines()[-1])
    assert said["examples"] == 3
    assert said["spent"] >= 1e5 * 0.99  # an upper bound of what was spent, never below
    assert said["grew"] < 1.5e9, f"{said['grew'] / 1e9:.1f} GB more resident at the peak"


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
