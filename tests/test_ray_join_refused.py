"""Joining a Ray cluster that refuses this process names what to check: its token first.

No Ray is started: ``ray.init`` fails as Ray's does when the head of a cluster
started with ``RAY_AUTH_MODE=token`` is reached by a driver without the token.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("the Ray backend needs ray (covey[ray])", allow_module_level=True)

import covey
from covey.sim._raystart import start_or_join


class _RefusingRay:
    """A ``ray`` module whose ``init`` fails as Ray's does when it cannot join a cluster."""

    def __init__(self) -> None:
        self.inits: list[dict[str, Any]] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.inits.append(kwargs)
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.7:6379")


def test_a_cluster_that_cannot_be_joined_names_the_token_versions_and_address() -> None:
    # Ray said "Failed to connect to Ray cluster at ..." after about 20 s, naming
    # neither the token a cluster started with RAY_AUTH_MODE=token asks for, nor
    # the other causes.
    ray = _RefusingRay()
    with pytest.raises(ConnectionError, match="Failed to connect to Ray cluster") as failed:
        start_or_join(ray, "auto", None)  # "auto": no head address to check first
    assert ray.inits[0]["address"] == "auto"
    (note,) = failed.value.__notes__
    assert note.startswith("could not join the Ray cluster at auto: if it was started with ")
    assert "RAY_AUTH_MODE=token" in note
    assert "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token" in note
    assert "run the cluster's Ray and Python versions here" in note
    assert "the --port of `ray start --head`" in note


def test_a_local_ray_that_fails_to_start_gets_no_note_about_a_cluster() -> None:
    ray = _RefusingRay()
    with pytest.raises(ConnectionError) as failed:
        start_or_join(ray, None, None)
    assert ray.inits[0]["address"] == "local"
    (note,) = failed.value.__notes__  # what to do about a local Ray, not a cluster
    assert note.startswith("the local Ray started for this run did not start")
    assert "RAY_AUTH_MODE" not in note


def test_simulate_joining_such_a_cluster_fails_with_the_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", _RefusingRay().init)
    data = covey.data.load_digits()
    parts = covey.data.iid(data.y_train, 2, seed=0)

    def client_fn(cid: int) -> covey.Client:
        return covey.models.LogisticClient(cid, data.x_train[parts[cid]], data.y_train[parts[cid]])

    weights = covey.models.logistic_init(data.x_train.shape[1], 10)
    with pytest.raises(ConnectionError) as failed:
        covey.simulate(
            client_fn,
            2,
            1,
            strategy=covey.FedAvg(),
            initial_weights=weights,
            backend="ray",
            ray_address="auto",
        )
    assert any("RAY_AUTH_MODE=token" in n for n in failed.value.__notes__)
