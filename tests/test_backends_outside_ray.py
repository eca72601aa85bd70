"""The outside-in backend checks on Ray: same bits as inline, same errors, clear pickling errors.

A local Ray of 2 CPUs is started in this process for the module and shut
down after (``ray.shutdown`` stops only the processes that ``ray.init`` started).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("the Ray backend needs ray (covey[ray])", allow_module_level=True)

import _backends_outside
import covey
from _backends_outside import (
    MISTAKES,
    Noisy,
    ScaffoldClient,
    Stateful,
    mistaken_fn,
    rows,
    run,
    same_bits,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray is already initialized in this process")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # The actors cannot import the test modules: their clients travel by value.
    ray.cloudpickle.register_pickle_by_value(_backends_outside)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield
    finally:
        ray.shutdown()


def on_ray(client_fn: Any, **kw: Any) -> Any:
    return run(client_fn, "ray", client_resources={"num_cpus": 1}, **kw)


def test_per_client_state_gives_the_same_bits_as_inline(local_ray: None) -> None:
    same_bits(run(Stateful, "inline"), on_ray(Stateful))
    # Clients built for every task (client_cache=0) lose their state alike.
    same_bits(run(Stateful, "inline", client_cache=0), on_ray(Stateful, client_cache=0))
    kw: dict[str, Any] = {
        "compression": "topk:0.2",
        "strategy": covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        "initial": {"w": np.zeros(40)},
    }
    same_bits(run(Noisy, "inline", **kw), on_ray(Noisy, **kw))
    scaffold = {"strategy": covey.Scaffold(num_clients=8, fraction_fit=0.5, fraction_evaluate=0)}
    inline = run(ScaffoldClient, "inline", **scaffold)
    scaffold = {"strategy": covey.Scaffold(num_clients=8, fraction_fit=0.5, fraction_evaluate=0)}
    same_bits(inline, on_ray(ScaffoldClient, **scaffold))


def test_mistakes_fail_the_client_as_on_the_other_backends(local_ray: None) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    for mode, error in MISTAKES.items():
        inline = run(mistaken_fn(mode), "inline", strategy=strategy, num_clients=3, rounds=2)
        ray_run = on_ray(mistaken_fn(mode), strategy=strategy, num_clients=3, rounds=2)
        assert rows(ray_run) == rows(inline), mode
        assert error in ray_run.history.rounds[1].fit_failures[0].error
        assert ray_run.weights["w"].tolist() == [2.0] * 6


def test_a_client_fn_that_does_not_pickle_is_a_clear_error(local_ray: None) -> None:
    lock = threading.Lock()

    def client_fn(cid: int) -> Noisy:
        with lock:
            return Noisy(cid)

    with pytest.raises(TypeError, match=r"client_fn \(.*client_fn\) .* does not pickle") as info:
        on_ray(client_fn, strategy=covey.FedAvg(fraction_evaluate=0.0))
    assert "_thread.lock" in str(info.value)
    assert "backend='process'" in str(info.value)
    # Clients that do not pickle are fine: they are built inside the actors.
    same_bits(
        run(mistaken_fn("unpicklable"), "inline", num_clients=3),
        on_ray(mistaken_fn("unpicklable"), num_clients=3),
    )
