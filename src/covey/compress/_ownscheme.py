"""Checks of a compression scheme of one's own: what its ``encode`` and ``decode`` give, named.

covey's own schemes name a malformed array themselves; one of one's own may return
anything, or raise what would stop the whole run for one client's update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.compress._plain import scheme_spec
from covey.compress._schemes import Scheme
from covey.core._weights import WeightsSpec


def check_parts(scheme: Scheme, parts: Any) -> None:
    """Refuse what a scheme of one's own encoded if it is not ``{name: {part: array}}``.

    A scheme returning None failed the client with "'NoneType' object has no
    attribute 'items'", naming neither the scheme nor what it should return.
    """
    what = f"{type(scheme).__name__}.encode(delta, rng)"
    if not isinstance(parts, Mapping):
        raise TypeError(
            f"{what} must return {{name: {{part: array}}}} for each array of the update, "
            f"got {type(parts).__name__}"
        )
    for name, arrays in parts.items():
        if not isinstance(arrays, Mapping):
            raise TypeError(f"{what} gave {name!r} a {type(arrays).__name__}, not {{part: array}}")
        for key, array in arrays.items():
            if not isinstance(array, np.ndarray):
                raise TypeError(
                    f"{what} gave {name!r} part {key!r} a {type(array).__name__}, not a NumPy array"
                )


def decoded(scheme: Scheme, parts: Any, spec: WeightsSpec) -> Any:
    """``scheme.decode(parts, spec)``; for a scheme of one's own, its mistakes named.

    What such a decoder raises (a ``KeyError`` on one client's parts stopped the
    whole run) is a ``ValueError`` naming it, and so the failure of that client's
    update alone; a decoder returning no mapping is named too.
    """
    if scheme_spec(scheme) is not None:  # covey's own: its errors already name the array
        return scheme.decode(parts, spec)
    what = f"{type(scheme).__name__}.decode(parts, spec)"
    try:
        delta = scheme.decode(parts, spec)
    except Exception as exc:  # the scheme's own error, for this update only
        raise ValueError(f"{what} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(delta, Mapping):
        raise TypeError(f"{what} must return a dict of names to arrays, got {type(delta).__name__}")
    return delta
