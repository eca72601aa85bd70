"""The refusal of an integer array whose change its own dtype cannot carry as an update.

A compressing client sends its update as a delta in each array's dtype. A client
that returned weights has its integer arrays' change taken exactly when it travels
uncompressed (``w_k - w``: a ``uint8`` going from 10 to 250 moved by +240), but a
delta of that dtype wraps (240 is read as -16), which would silently average
another value. Such a change is refused, naming the array, rather than sent.
"""

from __future__ import annotations

import numpy as np

from covey.aggregate._flat import a_dtype, delta_range
from covey.clients._mistakes import ResultRefused
from covey.core._weights import Weights


def refuse_wrapped(weights: Weights, weights_in: Weights, delta: Weights, who: str) -> None:
    """Refuse ``weights`` if an integer array's ``delta`` (its dtype's) misreads its change.

    The delta, read as the signed integers of its size (as the server reads an
    integer delta), has the sign of the true change unless it wrapped around.
    """
    for name, old in weights_in.items():
        kind = old.dtype.kind
        if kind not in "iu":
            continue
        d = delta[name]
        read = d.view(d.dtype.str.replace("u", "i")) if kind == "u" else d
        wrapped = np.flatnonzero(np.greater(weights[name], old) != (read > 0))
        if wrapped.size:
            _refuse(name, weights[name], old, int(wrapped[0]), who)


def _refuse(name: str, new: np.ndarray, old: np.ndarray, at: int, who: str) -> None:
    """Raise the refusal of array ``name``, whose change at flat index ``at`` wrapped."""
    was, now = int(old.reshape(-1)[at]), int(new.reshape(-1)[at])
    raise ResultRefused(
        f"{who}'s weights: {name!r} changed from {was} to {now} (by {now - was}) at flat "
        f"index {at}, past what {a_dtype(old.dtype)} update carries under compression "
        f"{delta_range(old.dtype)}: it would be averaged as another change; keep {name!r} in "
        f"a wider integer dtype, return it in a delta (read modulo 2**{old.dtype.itemsize * 8}, "
        "as a wrapping counter means), or run without compression"
    )
