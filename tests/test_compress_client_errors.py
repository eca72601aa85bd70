"""A compressing client's mistakes read as an uncompressed client's, on every simulated backend.

A compressing client checks its update itself (the encodings are flat: the server
could not tell a wrong shape of the same size), so its failures were worded
otherwise: ``covey.core._weights.WeightsError: client 1's weights: ...`` with a
class path, and a tuple returned from ``fit`` without the hint saying what to return.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from _mistaken import MISTAKES, NoConfig
from covey.sim._simulate import Backend


def _failures(make: Any, backend: Backend, compression: str | None) -> list[str]:
    strategy = covey.FedAvg(min_fit_clients=1, fraction_evaluate=0.0)
    result = covey.simulate(
        make, 2, 1, strategy, {"w": np.zeros(6)}, backend=backend, compression=compression
    )
    return [f"{f.cid}: {f.error}" for f in result.history.rounds[-1].fit_failures]


@pytest.mark.parametrize("backend", ["inline", "process"])
@pytest.mark.parametrize(
    ("make", "said"),
    MISTAKES,
)
def test_a_compressing_clients_mistake_reads_as_an_uncompressed_ones(
    make: Any, said: str, backend: Backend
) -> None:
    assert _failures(make, backend, None) == [said]
    assert _failures(make, backend, "q8") == [said]


def _every_client_fails(compression: str | None) -> str:
    """Client 0's failure in a run where every client's fit takes no config."""
    with pytest.raises(covey.FederationError) as info:
        _failures(lambda cid: NoConfig(), "inline", compression)
    return info.value.history.rounds[-1].fit_failures[0].error


def test_a_compressing_clients_fit_without_config_is_told_how_covey_calls_it() -> None:
    plain = _every_client_fails(None)
    assert "define it as def fit(self, weights, config)" in plain
    assert _every_client_fails("q8") == plain
