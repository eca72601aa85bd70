"""What covey sets for a local Ray to keep to this machine is taken back, in Ray too.

No Ray is started here: the setting (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``) is
checked as a later run, local or on a cluster, would find it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("the Ray backend needs ray (covey[ray])", allow_module_level=True)

import covey
from covey.sim import _raystart
from covey.sim._ray import RayTransport

ONE_HOST = _raystart.ONE_HOST
#: Ray's own default for a machine of this platform (clusters off on Windows and macOS).
CLUSTERS = sys.platform not in ("darwin", "win32")


@pytest.fixture
def constants(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Ray's constants, as a process that had run on a local Ray before has them."""
    import ray
    from ray._private import ray_constants

    assert not ray.is_initialized()
    monkeypatch.delenv(ONE_HOST, raising=False)
    monkeypatch.setattr(_raystart, "_ours", [ONE_HOST])  # covey set it for a local Ray
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # read at that import
    return ray_constants


def test_a_cluster_run_after_a_local_one_sees_the_one_host_setting_taken_back(
    constants: Any,
) -> None:
    # Ray read the setting once, at import: after a local run had set it (then taken it
    # back), a cluster run in the same process registered its driver on 127.0.0.1.
    _raystart.ray_module(local=False)
    assert ONE_HOST not in os.environ
    assert constants.ENABLE_RAY_CLUSTER is CLUSTERS
    _raystart.ray_module(local=True)  # a local run again: set, and seen by Ray
    assert os.environ[ONE_HOST] == "0"
    assert constants.ENABLE_RAY_CLUSTER is False
    import ray

    _raystart.release_one_host(ray)  # as shutdown() does
    assert ONE_HOST not in os.environ
    assert constants.ENABLE_RAY_CLUSTER is CLUSTERS


def test_a_client_fn_that_does_not_pickle_leaves_no_one_host_setting(constants: Any) -> None:
    # Refused before Ray started, it left RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 to every
    # process started afterwards (a `ray start --address` then refused to join).
    lock = threading.Lock()

    def client_fn(cid: int) -> covey.Client:
        with lock:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="does not pickle"):
        covey.simulate(client_fn, 2, 1, covey.FedAvg(), {"w": np.zeros(2)}, backend="ray")
    assert ONE_HOST not in os.environ
    assert constants.ENABLE_RAY_CLUSTER is CLUSTERS
    with pytest.raises(ValueError, match="num_actors must be at least 1"):
        RayTransport(lambda cid: covey.Client(), 2, num_actors=0)
    assert ONE_HOST not in os.environ
