"""Top-k's error feedback: what an update did not send joins the client's next one.

:func:`topk_with_feedback` encodes an update plus the residual the client kept
from earlier rounds, and gives the new residual, so nothing is lost, only delayed.
"""

from __future__ import annotations

import numpy as np

from covey.compress._schemes import Parts, Scheme, TopK
from covey.core._weights import Array, Weights, WeightsSpec


def _encode_corrected(
    scheme: Scheme, corrected: Weights, delta: Weights, residual: Weights | None
) -> Parts:
    """``scheme.encode(corrected)``; an update that overflowed with the residual is named so.

    A finite update whose sum with a finite residual is not finite would otherwise
    be refused as one holding NaN or Inf, which it does not.
    """
    try:
        return scheme.encode(corrected, np.random.default_rng(0))
    except ValueError as exc:
        for n, x in corrected.items():
            if (
                residual is not None
                and x.dtype.kind == "f"
                and not np.isfinite(x).all()
                and np.isfinite(delta[n]).all()
                and np.isfinite(residual[n]).all()
            ):
                raise ValueError(
                    f"{n!r}: this round's update plus what top-k's error feedback kept back "
                    f"from earlier rounds overflows {x.dtype} (largest "
                    f"{float(np.finfo(x.dtype).max):.4g}), though the update itself is finite"
                ) from exc
        raise


def topk_with_feedback(
    scheme: TopK, delta: Weights, residual: Weights | None, spec: WeightsSpec
) -> tuple[Parts, dict[str, Array]]:
    """Encode ``delta + residual`` with top-k and return the new residual (what was dropped).

    Args:
        scheme: The top-k scheme.
        delta: This round's update.
        residual: What earlier rounds did not send (None at first).
        spec: The model's layout.

    Returns:
        The encoded parts and ``delta + residual - decode(parts)``.
    """
    if type(scheme) is not TopK:  # a subclass may encode differently: subtract what it sent
        with np.errstate(over="ignore"):  # an overflow is named below, not warned of
            corrected = {
                n: (x + residual[n] if residual is not None and x.dtype.kind == "f" else x)
                for n, x in delta.items()
            }
        parts = _encode_corrected(scheme, corrected, delta, residual)
        sent = scheme.decode(parts, spec)
        return parts, {
            n: np.subtract(x, sent[n]) if x.dtype.kind == "f" else np.zeros_like(x)
            for n, x in corrected.items()
        }
    spec.check(delta, what="the update top-k encodes", finite=False)
    # delta + residual in a new C-ordered array per float weight, which becomes the new
    # residual once the entries sent are zeroed in it: no dense copy of what was sent
    # and no third array (sent entries leave exactly 0, the others are kept as they are).
    with np.errstate(over="ignore"):  # an overflow is named below, not warned of
        corrected = {
            n: (
                x
                if x.dtype.kind != "f"
                else np.array(x, order="C")
                if residual is None
                # asarray: the sum of two 0-d arrays is a NumPy scalar, whose reshape is a
                # copy, so zeroing what was sent would leave it in the residual for good.
                else np.asarray(np.add(x, residual[n], order="C"))
            )
            for n, x in delta.items()
        }
    parts = _encode_corrected(scheme, corrected, delta, residual)
    new_residual: dict[str, Array] = {}
    # Only float arrays are sparsified; the others travel whole and leave nothing behind
    # (a bool array could not be subtracted at all).
    for n, x in corrected.items():
        if x.dtype.kind != "f":
            new_residual[n] = np.zeros_like(x)
            continue
        x.reshape(-1)[parts[n]["index"]] = 0
        new_residual[n] = x
    return parts, new_residual
