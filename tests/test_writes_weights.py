"""Clients that train in place (``writes_weights = True``) on every backend and deployed.

Such a client writes into the arrays it is given and returns them. Deployed, those
arrays are the received message's own memory (no copy); in simulation each task
gets a copy, so the shared global model never changes under another client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pytest

import covey
from _live import Joined, Served
from covey.clients import run_task
from covey.core._messages import Task

ROUNDS = 3
N = 4


def _model() -> dict[str, np.ndarray]:
    return {"w": np.linspace(-1.0, 1.0, 12).reshape(3, 4), "step": np.zeros(2, np.int64)}


class OutOfPlace(covey.Client):
    """Moves every entry by ``0.1 * (cid + 1)`` and counts a step, in new arrays."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        return covey.FitResult(
            weights={"w": weights["w"] + 0.1 * (self.cid + 1), "step": weights["step"] + 1},
            num_examples=self.cid + 1,
        )


class InPlace(OutOfPlace):
    """The same update, written into the arrays it was given."""

    writes_weights = True
    seen: ClassVar[list[dict[str, Any]]] = []

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        w, step = weights["w"], weights["step"]
        InPlace.seen.append(
            {"writeable": w.flags.writeable, "owndata": w.flags.owndata, "base": w.base}
        )
        w += 0.1 * (self.cid + 1)
        step += 1
        return covey.FitResult(weights={"w": w, "step": step}, num_examples=self.cid + 1)


def _simulate(cls: type[OutOfPlace], backend: Any) -> Any:
    return covey.simulate(
        client_fn=cls,
        num_clients=N,
        rounds=ROUNDS,
        strategy=covey.FedAvg(fraction_fit=1.0, min_fit_clients=N, fraction_evaluate=0.0),
        initial_weights=_model(),
        backend=backend,
        num_workers=2 if backend == "process" else None,
        seed=0,
    )


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_an_in_place_client_gives_the_same_bits_and_leaves_the_global_model_alone(
    backend: str,
) -> None:
    InPlace.seen.clear()
    expected = _simulate(OutOfPlace, backend)
    got = _simulate(InPlace, backend)  # the inline backend stops if a shared array changed
    for name in ("w", "step"):
        np.testing.assert_array_equal(got.weights[name], expected.weights[name])
    assert got.weights["step"].tolist() == [ROUNDS, ROUNDS]
    assert all(not r.fit_failures for r in got.history.rounds[1:])
    if backend == "inline":  # (the process backend's clients ran in its workers)
        assert len(InPlace.seen) == N * ROUNDS
        assert all(s["writeable"] and s["owndata"] for s in InPlace.seen)  # a copy each


def test_a_client_that_does_not_write_still_gets_read_only_arrays() -> None:
    weights = _model()
    for array in weights.values():
        array.flags.writeable = False
    reply = run_task(OutOfPlace(0), 0, Task("fit", 1, {}, weights))
    assert reply.ok
    reply = run_task(_Writer(), 0, Task("fit", 1, {}, weights))
    assert not reply.ok
    assert "read-only" in (reply.error or "")
    np.testing.assert_array_equal(weights["w"], _model()["w"])
    reply = run_task(InPlace(0), 0, Task("fit", 1, {}, weights))  # a copy of its own
    assert reply.ok
    assert reply.result.weights["step"].tolist() == [1, 1]
    np.testing.assert_array_equal(weights["w"], _model()["w"])


class _Writer(covey.Client):
    """Writes into its weights without saying so."""

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        weights["w"][0] = 1.0
        return covey.FitResult(weights=dict(weights), num_examples=1)


def test_a_deployed_in_place_client_trains_in_the_received_message_itself() -> None:
    InPlace.seen.clear()
    strategy = covey.FedAvg(
        fraction_fit=1.0, min_fit_clients=1, min_available_clients=1, fraction_evaluate=0.0
    )
    served = Served(strategy, ROUNDS, initial_weights=_model())
    joined = Joined(served.port, InPlace(1), name="site")
    result = served.join(60)
    joined.join(30)
    assert all(not r.fit_failures for r in result.history.rounds[1:])
    # Each round moves w by 0.2 and step by 1, sent from the memory it was received in.
    np.testing.assert_allclose(result.weights["w"], _model()["w"] + 0.2 * ROUNDS)
    assert result.weights["step"].tolist() == [ROUNDS, ROUNDS]
    assert len(InPlace.seen) == ROUNDS
    for seen in InPlace.seen:
        assert seen["writeable"]
        assert not seen["owndata"]  # a view of the message: nothing was copied
        assert not isinstance(seen["base"], np.ndarray) or not seen["base"].flags.owndata


class Small(covey.Client):
    """A float-only model moved by ``0.01 * (cid + 1)``, in new arrays."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        return covey.FitResult(weights={"w": weights["w"] + 0.01 * (self.cid + 1)}, num_examples=3)


class SmallInPlace(Small):
    """The same update, written into the arrays it was given."""

    writes_weights = True

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        w = weights["w"]
        w += 0.01 * (self.cid + 1)
        return covey.FitResult(weights={"w": w}, num_examples=3)


def _wrapped_run(cls: type[Small], how: str) -> np.ndarray:
    strategy = covey.FedAvg(fraction_fit=1.0, min_fit_clients=N, fraction_evaluate=0.0)
    client_fn: Any = cls
    kwargs: dict[str, Any] = {}
    if how == "q8":
        kwargs["compression"] = "q8"
    elif how == "secure":
        with pytest.warns(UserWarning, match="honest-but-curious"):
            strategy = covey.secagg.secure(strategy, clip_range=1.0, bits=24)
    elif how == "local-dp":
        client_fn = lambda cid: covey.privacy.LocalDP(  # noqa: E731
            cls(cid), epsilon=50.0, delta=1e-5, clip=10.0, accountant="rdp", seed=cid
        )
    result = covey.simulate(
        client_fn, N, 2, strategy, {"w": np.zeros(6, np.float32)}, seed=0, **kwargs
    )
    assert all(not r.fit_failures for r in result.history.rounds[1:])
    return np.asarray(result.weights["w"])


@pytest.mark.parametrize("how", ["q8", "secure", "local-dp"])
def test_layers_that_need_the_received_weights_after_fit_give_in_place_clients_a_copy(
    how: str,
) -> None:
    # Compression, secure aggregation and local DP compute the update as the
    # client's result minus the weights it received: written into, that would be 0.
    expected = _wrapped_run(Small, how)
    got = _wrapped_run(SmallInPlace, how)
    assert np.abs(expected).min() > 0.02  # two rounds of a mean move of 0.025 each
    np.testing.assert_allclose(got, expected, atol=1e-5)
