"""secure() served over gRPC on 127.0.0.1 (clients on threads): what the round records."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from _live import Joined, Served
from covey.secagg import secure
from covey.secagg._ring import packed_size

pytestmark = pytest.mark.slow

N = 4


class Site(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        delta = np.full(8, 0.01 * (self.cid + 1))
        return covey.FitResult(delta={"w": delta}, num_examples=5)


def test_a_served_secure_round_counts_the_masked_vectors_it_receives() -> None:
    with pytest.warns(UserWarning, match="honest-but-curious"):
        strategy = secure(
            covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=N, min_available_clients=N),
            clip_range=1.0,
        )
    served = Served(strategy, 2)
    joined = [Joined(served.port, Site(k), name=f"site-{k}") for k in range(N)]
    history = served.join(60).history
    for j in joined:
        j.join(30)
    for record in history.rounds[1:]:
        bits = record.aggregate_info["secagg_ring_bits"]
        assert record.bytes_sent == N * 8 * 8  # the model, once to each client
        # Each client's masked vector: 8 values and its example count, `bits` bits each.
        assert record.bytes_received == N * packed_size(8 + 1, bits)
    np.testing.assert_allclose(history.rounds[-1].fit_examples, N * 5)
