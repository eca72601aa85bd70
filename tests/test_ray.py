"""The Ray backend on a two-node local Ray cluster: same bits as inline, resources, failures, scale.

The cluster (a head and a worker node, on 127.0.0.1) is started once for the
module with ``ray start`` and stopped after by killing exactly the processes it
started (never ``ray stop``, which would stop every Ray of this user).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("the Ray backend needs ray (covey[ray])", allow_module_level=True)

import _backends_outside
import _nearlimits
import _raylogged
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
from _raycluster import LocalRayCluster
from _raylogged import Logged, most_at_once, read_log
from covey import FitResult
from covey.data import Dataset, iid, load_digits
from covey.models import LogisticClient, logistic_evaluate, logistic_init
from covey.sim._raystart import shutdown, start_or_join

pytestmark = pytest.mark.slow


def ray_module() -> Any:
    """Ray, imported only once the cluster's token is in the environment (Ray reads it at import).

    Clients defined here are shipped to the actors by value: the cluster's workers
    cannot import this test module.
    """
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(_backends_outside)
    ray.cloudpickle.register_pickle_by_value(_nearlimits)
    ray.cloudpickle.register_pickle_by_value(_raylogged)
    return ray


Arrays = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    with LocalRayCluster(head_cpus=2, worker_cpus=2, worker_resources={"accel": 1}) as c:
        ray_module()
        yield c
    port = f":{c.port}"
    left = [
        proc.pid
        for proc in psutil.process_iter(["cmdline"])
        if any(part.endswith(port) for part in proc.info["cmdline"] or [])
    ]
    assert not left, f"processes of the Ray cluster outlived it: {left}"


@pytest.fixture
def joined(cluster: LocalRayCluster) -> Iterator[LocalRayCluster]:
    """The cluster, joined by this process for the test: its runs share that connection.

    For tests of several runs whose subject is not joining (each run joined and left).
    """
    ray = ray_module()
    assert start_or_join(ray, cluster.address, None)
    try:
        yield cluster
    finally:
        shutdown(ray)
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


def identical(a: Arrays, b: Arrays) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert a[k].tobytes() == b[k].tobytes(), k


def digits_run(data: Dataset, backend: str, log_dir: Path | None = None, **kw: Any) -> Any:
    parts = iid(data.y_train, 8, seed=1)

    def client_fn(cid: int) -> Any:
        x, y = data.client(parts[cid])
        client = LogisticClient(cid, x, y, lr=0.2, seed=3)
        return client if log_dir is None else Logged(client, cid, str(log_dir))

    def evaluate(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        loss, acc = logistic_evaluate(weights, data.x_test, data.y_test)
        return loss, {"accuracy": acc}

    strategy = covey.FedAvg(
        fraction_fit=0.75, fraction_evaluate=0.5, on_fit_config=lambda rnd: {"epochs": 1}
    )
    return covey.simulate(
        client_fn,
        8,
        3,
        strategy,
        logistic_init(data.num_features, data.num_classes),
        evaluate,
        backend=backend,  # type: ignore[arg-type]
        seed=5,
        **kw,
    )


def test_digits_on_two_nodes_is_bit_identical_to_inline(
    cluster: LocalRayCluster, digits: Dataset, tmp_path: Path
) -> None:
    inline = digits_run(digits, "inline")
    on_ray = digits_run(
        digits,
        "ray",
        tmp_path,
        ray_address=cluster.address,
        client_resources={"num_cpus": 1},
    )
    identical(inline.weights, on_ray.weights)
    assert [r.central_loss for r in inline.history.rounds] == [
        r.central_loss for r in on_ray.history.rounds
    ]
    assert [r.fit_participants for r in inline.history.rounds] == [
        r.fit_participants for r in on_ray.history.rounds
    ]
    rows = read_log(tmp_path)
    assert len({r["node"] for r in rows}) == 2, "clients ran on both nodes"
    # Each client always runs in the same actor, which builds it once.
    homes: dict[int, set[int]] = {}
    for r in rows:
        homes.setdefault(r["cid"], set()).add(r["pid"])
    assert all(len(pids) == 1 for pids in homes.values())
    assert not ray_module().is_initialized(), "the driver left the cluster after the run"


def test_resources_per_client_group_are_respected(
    cluster: LocalRayCluster, digits: Dataset, tmp_path: Path
) -> None:
    parts = iid(digits.y_train, 12, seed=1)
    log = str(tmp_path)

    def group(cid: int) -> str:
        return ("big", "small", "accel")[cid % 3]

    def client_fn(cid: int) -> Logged:
        x, y = digits.client(parts[cid])
        return Logged(LogisticClient(cid, x, y, lr=0.2, seed=3), cid, log, sleep=0.15)

    covey.simulate(
        client_fn,
        12,
        2,
        covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0),
        logistic_init(digits.num_features, digits.num_classes),
        backend="ray",
        ray_address=cluster.address,
        client_group=group,
        client_resources={
            "big": {"num_cpus": 2},
            "small": {"num_cpus": 1},
            "accel": {"num_cpus": 0.25, "accel": 0.5},
        },
    )
    rows = read_log(tmp_path)
    assert len(rows) == 24
    by_group: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_group.setdefault(group(r["cid"]), []).append(r)
    # The cluster has 4 CPUs shared by three groups: 4/3 CPU each. A big client
    # needs 2 CPUs: it still gets one actor, so one big client at a time; small
    # clients at most one at a time; accel clients at most 2 (the one node with
    # `accel` has 1 unit of it), on that node only.
    assert most_at_once(by_group["big"]) <= 1
    assert most_at_once(by_group["small"]) <= 1
    assert most_at_once(by_group["accel"]) <= 2
    assert len({r["node"] for r in by_group["accel"]}) == 1
    cpus = {"big": 2.0, "small": 1.0, "accel": 0.25}
    events = sorted(
        [(r["start"], cpus[group(r["cid"])]) for r in rows]
        + [(r["end"], -cpus[group(r["cid"])]) for r in rows]
    )
    used = peak = 0.0
    for _, step in events:
        used += step
        peak = max(peak, used)
    assert peak <= 4.0 + 1e-9


class Faulty(covey.Client):
    """Client 3 raises in round 1; client 5 kills its own actor process once, in round 2."""

    def __init__(self, cid: int, marker: str) -> None:
        self.cid = cid
        self.marker = marker

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        rnd = config["round"]
        if self.cid == 3 and rnd == 1:
            raise ValueError("bad local data in client 3")
        if self.cid == 5 and rnd == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return FitResult(
            weights={k: np.asarray(v) + self.cid for k, v in weights.items()}, num_examples=1
        )


def test_client_error_and_killed_actor_are_reported_and_the_run_goes_on(
    cluster: LocalRayCluster, tmp_path: Path
) -> None:
    marker = str(tmp_path / "killed")
    result = covey.simulate(
        lambda cid: Faulty(cid, marker),
        8,
        3,
        covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2),
        {"w": np.zeros(3)},
        backend="ray",
        ray_address=cluster.address,
        client_resources={"num_cpus": 1},
        round_timeout=120.0,
    )
    r1, r2, r3 = result.history.rounds[1:]
    (failure,) = r1.fit_failures
    assert failure.cid == 3
    assert "ValueError: bad local data in client 3" in failure.error
    assert "Traceback" in failure.traceback
    assert "fit" in failure.traceback
    assert Path(marker).exists()
    dead = {f.cid: f.error for f in r2.fit_failures}
    assert 5 in dead
    # Quick clients' replies go together: which of the two it was running is unknown.
    assert "died running one of clients 1, 5, " in dead[5]
    assert all("Ray actor" in e and "died" in e for e in dead.values())
    # The killed actor held the odd clients (cid % 2 actors); only they can be lost.
    assert all(cid % 2 == 1 for cid in dead)
    assert r2.aggregated
    assert set(r2.fit_participants) | set(dead) == set(range(8))
    # A new actor replaced the dead one: round 3 has every client.
    assert r3.fit_participants == list(range(8))
    assert not r3.fit_failures


class Seeded(covey.Client):
    """A stateless client built from its id alone: weights plus noise seeded by (cid, round)."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        new = {k: v + rng.normal(scale=0.01, size=v.shape) for k, v in weights.items()}
        return FitResult(weights=new, num_examples=1 + self.cid % 7)


def test_100000_clients_at_one_percent_for_three_rounds(cluster: LocalRayCluster) -> None:
    kw: dict[str, Any] = {
        "strategy": covey.FedAvg(fraction_fit=0.01, fraction_evaluate=0.0),
        "initial_weights": {"W": np.zeros((64, 10)), "b": np.zeros(10)},
        "client_cache": 0,
        "seed": 7,
    }
    on_ray = covey.simulate(Seeded, 100_000, 3, backend="ray", ray_address=cluster.address, **kw)
    assert [len(r.fit_participants) for r in on_ray.history.rounds[1:]] == [1000] * 3
    inline = covey.simulate(Seeded, 100_000, 3, **kw)
    identical(inline.weights, on_ray.weights)


class Stuck(covey.Client):
    """Client 2 hangs in round 1 (far past the round's deadline); every other fit is instant."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 2 and config["round"] == 1:
            time.sleep(300)
        return FitResult(weights=dict(weights), num_examples=1)


def test_a_hung_client_times_out_and_later_rounds_are_not_held_up(
    cluster: LocalRayCluster,
) -> None:
    result = covey.simulate(
        Stuck,
        8,
        2,
        covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2),
        {"w": np.zeros(2)},
        backend="ray",
        ray_address=cluster.address,
        client_resources={"num_cpus": 1},
        round_timeout=4.0,
    )
    r1, r2 = result.history.rounds[1:]
    late = {f.cid: f.error for f in r1.fit_failures}
    assert late == {2: "no reply in time"} or (2 in late and set(late) <= {2, 6})
    assert r1.aggregated
    # The stuck actor was replaced: round 2 is complete.
    assert r2.fit_participants == list(range(8))


def test_fedbuff_with_stragglers_and_dropouts_is_bit_identical_to_inline(
    cluster: LocalRayCluster,
) -> None:
    kw: dict[str, Any] = {
        "strategy": covey.FedBuff(buffer_size=4, concurrency=8),
        "initial_weights": {"W": np.zeros((8, 3)), "b": np.zeros(3)},
        "client_durations": lambda cid, rng: (1 + cid % 4) * rng.uniform(0.5, 1.5),
        "availability": 0.8,
        "seed": 4,
    }
    inline = covey.simulate(Seeded, 40, 5, **kw)
    on_ray = covey.simulate(Seeded, 40, 5, backend="ray", ray_address=cluster.address, **kw)
    identical(inline.weights, on_ray.weights)
    offline = [f.cid for r in on_ray.history.rounds for f in r.fit_failures]
    assert offline == [f.cid for r in inline.history.rounds for f in r.fit_failures]
    assert offline


def test_without_an_address_a_local_ray_is_started_and_shut_down(digits: Dataset) -> None:
    ray = ray_module()
    assert not ray.is_initialized()
    inline = digits_run(digits, "inline")
    local = digits_run(digits, "ray", client_resources={"num_cpus": 0.5})
    identical(inline.weights, local.weights)
    assert not ray.is_initialized()


# -- the outside-in backend checks (tests/test_backends_outside.py) on this cluster ----------


def on_ray(cluster: LocalRayCluster, client_fn: Any, **kw: Any) -> Any:
    kw.setdefault("client_resources", {"num_cpus": 1})
    return run(client_fn, "ray", ray_address=cluster.address, **kw)


def test_per_client_state_gives_the_same_bits_as_inline(joined: LocalRayCluster) -> None:
    cluster = joined  # its runs use one connection to it
    same_bits(run(Stateful, "inline"), on_ray(cluster, Stateful))
    # Clients built for every task (client_cache=0) lose their state alike.
    same_bits(run(Stateful, "inline", client_cache=0), on_ray(cluster, Stateful, client_cache=0))
    kw: dict[str, Any] = {
        "compression": "topk:0.2",
        "strategy": covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        "initial": {"w": np.zeros(40)},
    }
    same_bits(run(Noisy, "inline", **kw), on_ray(cluster, Noisy, **kw))
    scaffold = {"strategy": covey.Scaffold(num_clients=8, fraction_fit=0.5, fraction_evaluate=0)}
    inline = run(ScaffoldClient, "inline", **scaffold)
    scaffold = {"strategy": covey.Scaffold(num_clients=8, fraction_fit=0.5, fraction_evaluate=0)}
    same_bits(inline, on_ray(cluster, ScaffoldClient, **scaffold))


def test_mistakes_fail_the_client_as_on_the_other_backends(joined: LocalRayCluster) -> None:
    cluster = joined  # its runs use one connection to it
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    # One actor holds all three clients (one actor to start per run, not two): client
    # 1's mistake must still fail client 1 alone, beside the others in its actor.
    kw: dict[str, Any] = {"strategy": strategy, "num_clients": 3, "rounds": 2}
    for mode, error in MISTAKES.items():
        inline = run(mistaken_fn(mode), "inline", **kw)
        ray_run = on_ray(cluster, mistaken_fn(mode), num_workers=1, **kw)
        assert rows(ray_run) == rows(inline), mode
        assert error in ray_run.history.rounds[1].fit_failures[0].error
        assert ray_run.weights["w"].tolist() == [2.0] * 6


def test_results_near_the_limits_fail_as_on_the_other_backends_and_deployed(
    cluster: LocalRayCluster,
) -> None:
    # The table of test_result_limits_alike: the verdicts and errors a deployed client gives.
    strategy = covey.FedAvg(min_fit_clients=1, fraction_evaluate=0.0)
    kw: dict[str, Any] = {"strategy": strategy, "num_clients": len(_nearlimits.NEAR), "rounds": 1}
    ray_run = on_ray(cluster, _nearlimits.Near, initial=_nearlimits.model(), **kw)
    failed = {f.cid: f.error for f in ray_run.history.rounds[1].fit_failures}
    refused = {cid: _nearlimits.refused(cid) for cid, (ok, _) in _nearlimits.NEAR.items() if not ok}
    assert failed == refused


def test_a_client_fn_that_does_not_pickle_is_a_clear_error(cluster: LocalRayCluster) -> None:
    lock = threading.Lock()

    def client_fn(cid: int) -> Noisy:
        with lock:
            return Noisy(cid)

    with pytest.raises(TypeError, match=r"client_fn \(.*client_fn\) .* does not pickle") as info:
        on_ray(cluster, client_fn, strategy=covey.FedAvg(fraction_evaluate=0.0))
    assert "_thread.lock" in str(info.value)
    assert "backend='process'" in str(info.value)
    # Clients that do not pickle are fine: they are built inside the actors.
    same_bits(
        run(mistaken_fn("unpicklable"), "inline", num_clients=3),
        on_ray(cluster, mistaken_fn("unpicklable"), num_clients=3),
    )


class OwnConfig(covey.Client):
    """Steps the model by the ``"epochs"`` it is sent; reports it and its ``"lr"``."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def properties(self) -> dict[str, Any]:
        return {"size": self.cid + 1}

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        own = {f"epochs_{self.cid}": config["epochs"], f"lr_{self.cid}": config["lr"]}
        return FitResult(
            delta={"w": np.full(6, float(config["epochs"]))}, num_examples=1, metrics=own
        )


def _merge(results: Any) -> dict[str, Any]:
    return {k: v for _, metrics in results for k, v in metrics.items()}


def test_per_client_configs_reach_each_client_as_inline(cluster: LocalRayCluster) -> None:
    strategy = covey.FedAvg(
        fraction_fit=0.5,
        fraction_evaluate=0.0,
        on_fit_config=lambda r: {"lr": 0.5},
        on_client_fit_config=lambda r, c: {"epochs": (c.properties or {})["size"] * r},
        fit_metrics=_merge,
    )
    inline = run(OwnConfig, "inline", strategy=strategy)
    ray_run = on_ray(cluster, OwnConfig, strategy=strategy)
    same_bits(inline, ray_run)
    for record in ray_run.history.rounds[1:]:
        assert record.fit_metrics == {
            **{f"epochs_{c}": (c + 1) * record.round for c in record.fit_participants},
            **{f"lr_{c}": 0.5 for c in record.fit_participants},
        }


def test_a_clusters_ray_client_and_head_ports_are_told_apart(cluster: LocalRayCluster) -> None:
    # Both of a real head's servers, token auth on: each port given with the other's scheme
    # is refused at once (Ray failed after 20 s, or waited 30 s, naming neither mistake).
    from covey.sim._rayplan import check_reachable

    check_reachable(cluster.address)
    check_reachable(f"ray://127.0.0.1:{cluster.client_port}")
    with pytest.raises(ConnectionError, match="names a Ray Client server port"):
        check_reachable(f"127.0.0.1:{cluster.client_port}")
    with pytest.raises(ConnectionError, match="names a Ray head node's port"):
        check_reachable(f"ray://{cluster.address}")
