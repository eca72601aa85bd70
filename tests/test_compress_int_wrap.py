"""An integer array whose change its dtype cannot carry as a delta, under compression.

Uncompressed, a client that returns weights has an integer array's change taken
exactly (a ``uint8`` from 10 to 250 moved by +240). A compressing client sends
a delta in the array's dtype, where +240 wraps to -16: the mean of 250 and 10
came out as 2 instead of 130, silently. Such a change is now refused on the
client, naming the array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from covey.sim._simulate import Backend


class _Mover(covey.Client):
    """Client 0 moves the integer arrays far; client 1 keeps the model."""

    def __init__(self, cid: int, far: dict[str, int]) -> None:
        self.cid, self.far = cid, far

    def fit(self, weights: covey.Weights, config: covey.Config) -> covey.FitResult:
        new = {k: np.array(v) for k, v in weights.items()}
        if self.cid == 0:
            for name, value in self.far.items():
                new[name][...] = value
        return covey.FitResult(weights=new, num_examples=1)

    def evaluate(self, weights: covey.Weights, config: covey.Config) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=0.0, num_examples=1)


MODEL: dict[str, np.ndarray] = {
    "u8": np.array([10, 10], np.uint8),
    "i8": np.array([-120], np.int8),
    "w": np.zeros(3, np.float32),
}


def _run(far: dict[str, int], compression: str | None, backend: Backend = "inline") -> Any:
    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1)
    return covey.simulate(
        lambda cid: _Mover(cid, far),
        2,
        1,
        strategy,
        MODEL,
        backend=backend,
        compression=compression,
    )


def test_uncompressed_the_change_is_exact() -> None:
    out = _run({"u8": 250, "i8": 120}, None).weights
    assert out["u8"].tolist() == [130, 130]
    assert out["i8"].tolist() == [0]


@pytest.mark.parametrize("backend", ["inline", "process"])
@pytest.mark.parametrize("scheme", ["float16", "q8", "topk:0.5"])
def test_a_change_that_wraps_is_refused_naming_the_array(scheme: str, backend: Backend) -> None:
    result = _run({"u8": 250}, scheme, backend)
    (failure,) = result.history.rounds[-1].fit_failures
    assert failure.cid == 0
    assert failure.error == (
        "client 0's weights: 'u8' changed from 10 to 250 (by 240) at flat index 0, past what "
        "a uint8 update carries under compression (-128 to 127): it would be averaged as "
        "another change; keep 'u8' in a wider integer dtype, return it in a delta (read "
        "modulo 2**8, as a wrapping counter means), or run without compression"
    )
    np.testing.assert_array_equal(result.weights["u8"], MODEL["u8"])  # client 1 kept it


def test_a_signed_array_that_wraps_is_refused_too() -> None:
    (failure,) = _run({"i8": 120}, "q8").history.rounds[-1].fit_failures
    assert "'i8' changed from -120 to 120 (by 240)" in failure.error
    assert "past what an int8 update carries under compression (-128 to 127)" in failure.error


def test_a_change_within_the_dtype_is_sent_and_averaged_as_uncompressed() -> None:
    # +117 and -127 fit a uint8 / int8 delta: the same mean compressed or not.
    far = {"u8": 127, "i8": 7}
    plain, packed = _run(far, None), _run(far, "q8")
    assert not packed.history.rounds[-1].fit_failures
    for name in ("u8", "i8"):
        np.testing.assert_array_equal(packed.weights[name], plain.weights[name])


def test_a_uint64_change_past_2_to_the_63_is_refused_too() -> None:
    model = {"h": np.zeros(1, np.uint64), "w": np.zeros(2)}
    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=1)
    far = {"h": 2**64 - 2}
    result = covey.simulate(lambda cid: _Mover(cid, far), 2, 1, strategy, model, compression="q8")
    (failure,) = result.history.rounds[-1].fit_failures
    assert "'h' changed from 0 to 18446744073709551614" in failure.error
