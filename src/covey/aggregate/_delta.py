"""The check of an aggregate's delta against the global weights it is added to."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from covey.core._weights import Weights, WeightsError


def check_delta(delta: Weights, params: Weights, what: str) -> None:
    """Refuse a delta (from a step of one's own) that ``add`` would broadcast or fail on."""
    if not isinstance(delta, Mapping) or set(delta) != set(params):
        names = sorted(delta) if isinstance(delta, Mapping) else type(delta).__name__
        raise WeightsError(f"{what}: its arrays are {names}, expected {sorted(params)}")
    for name, value in params.items():
        d = delta[name]
        if not isinstance(d, np.ndarray | np.generic) or d.shape != value.shape:
            got = d.shape if isinstance(d, np.ndarray | np.generic) else type(d).__name__
            raise WeightsError(f"{what}: {name!r} has shape {got}, expected {value.shape}")
        if (value.dtype.kind == "b") != (d.dtype.kind == "b") or not np.can_cast(
            d.dtype, value.dtype, "same_kind"
        ):
            raise WeightsError(
                f"{what}: {name!r} has dtype {d.dtype}, which a {value.dtype} array cannot take"
            )
