"""The cap on a reply's bytes fits the largest top-k update of its model, beyond 2**32 values too.

No array of 2**32 values is allocated: the sizes come from broadcast views,
whose bytes are only counted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from covey.compress import TopK
from covey.core import WeightsSpec, _codec
from covey.transport.grpc._server import reply_limit

BEYOND = (1 << 32) + 8  # top-k indices of an array this long are uint64


def _view(dtype: type, size: int) -> np.ndarray:
    return np.broadcast_to(np.zeros((), dtype), (size,))


@pytest.mark.parametrize("fraction", [0.76, 0.9, 1.0])
@pytest.mark.parametrize("extras", [False, True])
def test_a_top_k_reply_of_a_huge_float16_model_fits_under_the_cap(
    fraction: float, extras: bool
) -> None:
    # A float16 array of more than 2**32 values: each entry sent is a uint64 index
    # and a float16 value, 10 bytes for 2, so a top-k reply at a fraction over 0.8
    # (0.6 with SCAFFOLD's model of extras) passed the cap of 4 times the model and
    # was refused, though the client sent what the scheme makes.
    model = {"W": _view(np.float16, BEYOND)}
    spec = WeightsSpec.of(model)
    k = TopK(fraction).k(BEYOND)
    reply = {
        json.dumps(["part", "W", "index"]): _view(np.uint64, k),
        json.dumps(["part", "W", "value"]): _view(np.float16, k),
    }
    if extras:
        reply[json.dumps(["extra", "scaffold_delta_c", "W"])] = _view(np.float16, BEYOND)
    sent = _codec.encoded_size(reply)
    assert sent <= reply_limit(_codec.encoded_size(model), spec)


def test_the_cap_of_a_model_under_2_32_values_is_as_it_was() -> None:
    # Not widened where the uint32 indices keep top-k within 3 times the model.
    for dtype in (np.float16, np.float32, np.float64):
        model = {"W": _view(dtype, 1 << 20), "b": np.zeros(10, dtype)}
        spec = WeightsSpec.of(model)
        size = _codec.encoded_size(model)
        per_array = 3 * (2 * 64 + 128) * 2 + 3 * 12 * 2
        assert reply_limit(size, spec) == 4 * size + per_array + 1024 * 1024
