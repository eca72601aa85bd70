"""A secure fit's client mistakes read as a plain fit's, before anything is masked.

The secure client checks its update itself, so its failures were worded
otherwise: ``covey.core._weights.WeightsError: the fit result's weights: ...``
with a class path and no client named, and a tuple returned from ``fit``
without the hint saying what to return.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

import covey
from _live import served_to
from _mistaken import MISTAKES, NoConfig, Sends
from covey.secagg import ThreatModel, secure
from covey.sim._simulate import Backend


def _strategy(secured: bool) -> covey.Strategy:
    strategy = covey.FedAvg(min_fit_clients=1, min_available_clients=3, fraction_evaluate=0.0)
    if not secured:
        return strategy
    with pytest.warns(UserWarning, match="honest-but-curious"):
        return secure(strategy, clip_range=1.0, threat=ThreatModel(0.0, 0.0))


def _failures(make: Any, backend: Backend, secured: bool) -> list[str]:
    half = functools.partial(make, step=0.5)  # inside the clipping range
    result = covey.simulate(half, 4, 1, _strategy(secured), {"w": np.zeros(6)}, backend=backend)
    return [f"{f.cid}: {f.error}" for f in result.history.rounds[-1].fit_failures]


@pytest.mark.parametrize("backend", ["inline", "process"])
@pytest.mark.parametrize(
    ("make", "said"),
    MISTAKES,
)
def test_a_secure_clients_mistake_reads_as_a_plain_ones(
    make: Any, said: str, backend: Backend
) -> None:
    assert _failures(make, backend, secured=False) == [said]
    assert _failures(make, backend, secured=True) == [said]


def test_a_secure_clients_fit_without_config_is_told_how_covey_calls_it() -> None:
    make: Any = NoConfig  # not a ClientLike: its fit takes no config
    with pytest.raises(covey.FederationError) as info:
        covey.simulate(lambda cid: make(), 4, 1, _strategy(True), {"w": np.zeros(6)})
    assert "define it as def fit(self, weights, config)" in str(info.value)


def test_a_deployed_secure_clients_wrong_weights_are_named_by_its_name() -> None:
    names = (("hospital-a", False), ("hospital-b", True), ("hospital-c", False))
    sites = [(name, Sends(wrong, step=0.5)) for name, wrong in names]
    result = served_to(sites, _strategy(True), {"w": np.zeros(6)})
    (failure,) = result.history.rounds[-1].fit_failures
    assert failure.name == "hospital-b"
    assert failure.error == "hospital-b's weights: 'w' has shape (7,), expected (6,)"
    np.testing.assert_allclose(result.weights["w"], np.full(6, 0.5), atol=1e-3)
