"""The Ray backend on a local Ray it starts itself: impossible resources, interrupts, leaks.

Every test here starts (and must stop) a local Ray of 2 CPUs at most; none may
leave a Ray process of its own behind (checked after each test by the PIDs of
the processes this test process started).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("the Ray backend needs ray (covey[ray])", allow_module_level=True)

import covey
from covey import FitResult
from covey.sim._ray import RayTransport

pytestmark = pytest.mark.slow


class Plus(covey.Client):
    """Adds its id to the weights."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights={"w": weights["w"] + self.cid}, num_examples=1)


def ray_children() -> list[int]:
    """PIDs of this process's descendants that belong to a Ray (raylet, GCS, workers, agents)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "ray" in line:
            found.append(child.pid)
    return found


@pytest.fixture(autouse=True)
def no_ray_left() -> Iterator[None]:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    assert not ray.is_initialized()
    yield
    assert not ray.is_initialized()
    left = ray_children()
    if left:
        _gone, alive = psutil.wait_procs([psutil.Process(p) for p in left], timeout=15)
        assert not alive, f"Ray processes outlived the run: {[p.pid for p in alive]}"


@pytest.mark.parametrize(
    ("resources", "group", "named"),
    [
        ({"num_cpus": 64}, None, "{'CPU': 64.0}"),
        ({"a": {"num_cpus": 1}, "b": {"accel": 0.5}}, lambda cid: "ab"[cid % 2], "['b']"),
    ],
)
def test_resources_a_local_ray_lacks_are_refused_at_once(
    resources: Any, group: Any, named: str
) -> None:
    with pytest.raises(ValueError, match="the local Ray started for this run has") as info:
        RayTransport(
            Plus,
            4,
            client_resources=resources,
            client_group=group,
            start_timeout=20.0,
            init_args={"num_cpus": 2},
        )
    assert named in str(info.value)
    assert "ray_address" in str(info.value)
