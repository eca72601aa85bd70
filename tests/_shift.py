"""A client for tests of aggregation steps: a delta of ones times (cid + 1)."""

from __future__ import annotations

from typing import Any

import numpy as np

import covey


class Shift(covey.Client):
    """Sends a delta of ones times (cid + 1), over cid + 1 examples."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(
            delta={k: np.full_like(v, self.cid + 1.0) for k, v in weights.items()},
            num_examples=1 + self.cid,
        )
