"""Scheme classes used directly decode an update of a model in the other byte order.

Encoding sends arrays in native byte order; a spec taken from a model in the
other order (``'>f4'`` on a little-endian machine) made decoding refuse the
update its own encoder had made (``must be 12 values of >f4 ..., got float32``).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from covey.compress import Cast, Identity, Quantize, TopK, topk_with_feedback
from covey.core._weights import WeightsSpec

OTHER = ">" if sys.byteorder == "little" else "<"

_SCHEMES: list[tuple[Any, float]] = [
    (Identity(), 0.0),
    (Cast("float16"), 1e-3),
    (Cast("bfloat16"), 1e-2),
    (Quantize(8), 2e-2),
    (Quantize(4), 0.2),
    (TopK(1.0), 0.0),
]


def _delta() -> dict[str, np.ndarray]:
    return {
        "w": np.linspace(-1.0, 1.0, 12).astype(f"{OTHER}f4").reshape(3, 4),
        "d": np.linspace(-2.0, 2.0, 5).astype(f"{OTHER}f8"),
        "i": np.arange(5, dtype=f"{OTHER}i4"),
    }


@pytest.mark.parametrize(("scheme", "tolerance"), _SCHEMES, ids=lambda s: getattr(s, "name", ""))
def test_a_scheme_decodes_an_update_in_the_other_byte_order(scheme: Any, tolerance: float) -> None:
    delta = _delta()
    spec = WeightsSpec.of(delta)
    decoded = scheme.decode(scheme.encode(delta, np.random.default_rng(0)), spec)
    for name, x in delta.items():
        assert decoded[name].shape == x.shape
        assert decoded[name].dtype == x.dtype.newbyteorder("=")  # the same type, native order
        assert decoded[name].dtype.isnative
        np.testing.assert_allclose(decoded[name], x, atol=tolerance)


def test_topk_error_feedback_works_in_the_other_byte_order() -> None:
    delta = _delta()
    parts, residual = topk_with_feedback(TopK(0.5), delta, None, WeightsSpec.of(delta))
    sent = TopK(0.5).decode(parts, WeightsSpec.of(delta))
    for name, x in delta.items():
        np.testing.assert_allclose(sent[name] + residual[name], x, atol=1e-6)
