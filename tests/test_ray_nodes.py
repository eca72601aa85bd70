"""The Ray backend when a node of its cluster leaves in the middle of a run.

A two-node cluster of its own (a head and a worker node on 127.0.0.1, one CPU
each), started with ``ray start`` and stopped by PID; the worker node's raylet
is killed with SIGKILL between two exchanges, as a machine that is lost. The
driver is a process of its own: Ray keeps the auth token it read first for the
life of a process, so this one could join no later test cluster.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import numpy as np
import psutil
import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("the Ray backend needs ray (covey[ray])", allow_module_level=True)

import covey
from _raycluster import LocalRayCluster
from covey import FitResult
from covey.core._messages import Reply, Task
from covey.sim._ray import RayTransport

pytestmark = pytest.mark.slow


class Plus(covey.Client):
    """Adds its id to the weights."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(weights={"w": weights["w"] + self.cid}, num_examples=1)


def exchange(transport: RayTransport, rnd: int) -> dict[int, Reply]:
    weights = {"w": np.zeros(3)}
    tasks = {cid: Task("fit", rnd, {"round": rnd}, weights) for cid in range(4)}
    return {reply.cid: reply for reply in transport.exchange(tasks, timeout=120.0)}


def kill_node(node_id: str) -> None:
    """SIGKILL the raylet of the node ``node_id`` (found by its socket, which names its cluster)."""
    import ray

    (node,) = [n for n in ray.nodes() if n["NodeID"] == node_id]
    flag = f"--raylet_socket_name={node['RayletSocketName']}"
    (raylet,) = [p for p in psutil.process_iter(["cmdline"]) if flag in (p.info["cmdline"] or [])]
    os.kill(raylet.pid, signal.SIGKILL)
    psutil.Process(raylet.pid).wait(timeout=10)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += record.getMessage() + "\n"


def lose_a_node(address: str) -> None:
    """The driver: four clients on two actors, one per node; the worker node is lost."""
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    log = Lines()
    logging.getLogger("covey").addHandler(log)
    with RayTransport(
        Plus, 4, address=address, client_resources={"num_cpus": 1}, start_timeout=15.0
    ) as transport:
        head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
        where = {i: node for (_, i), (_, node) in transport._where.items()}
        assert sorted(where) == [0, 1]
        assert len(set(where.values())) == 2
        (lost,) = [i for i, node in where.items() if node != head]
        first = exchange(transport, 1)
        assert all(r.ok for r in first.values())
        assert sorted(first) == [0, 1, 2, 3]

        # The slot's new actor cannot start (no node has room): its wait is waited out in
        # full. The start above had 15 s; that wait needs no more than a few.
        transport._start_timeout = 3.0
        kill_node(where[lost])
        second = exchange(transport, 2)
        failed = sorted(cid for cid, r in second.items() if not r.ok)
        assert failed == [c for c in range(4) if c % 2 == lost]
        assert all("died" in str(second[c].error) for c in failed)

        # No node has room for a new actor: the one left runs every client.
        third = exchange(transport, 3)
        assert sorted(third) == [0, 1, 2, 3]
        assert all(r.ok for r in third.values()), [r.error for r in third.values()]
        assert [third[c].result.weights["w"][0] for c in range(4)] == [0, 1, 2, 3]
        assert "the run goes on with 1 actor(s)" in log.text
        assert f"the clients of slot(s) {lost} are rebuilt in the others" in log.text
        assert transport.num_workers == 1
        # Later rounds do not wait for the slot again.
        assert all(r.ok for r in exchange(transport, 4).values())
    print("survived")


def test_a_node_lost_mid_run_leaves_its_clients_to_the_actors_left() -> None:
    with LocalRayCluster(head_cpus=1, worker_cpus=1) as cluster:
        script = f"import test_ray_nodes; test_ray_nodes.lose_a_node({cluster.address!r})"
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "survived" in out.stdout
