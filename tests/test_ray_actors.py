"""The Ray backend's actors on one local Ray the module starts: failures, replies, big models.

These tests are about what the actors do, not about the Ray they run on: they share
one local Ray of 2 CPUs, started beforehand (a run joins it). After each test every
actor it started is stopped (the Ray's CPUs all free again); after the module, the
Ray is stopped and none of its processes is left behind.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("the Ray backend needs ray (covey[ray])", allow_module_level=True)

import _raykit
import covey
from _raykit import Plus, ray_children
from covey import FitResult
from covey.core import _codec
from covey.core._messages import Task
from covey.sim._ray import RayTransport
from covey.sim._raystart import ray_module, shutdown, start_or_join

pytestmark = pytest.mark.slow

#: Seconds the actors of a test have to be stopped once it ends (a loaded machine).
RELEASE_SECONDS = 60.0


@pytest.fixture(scope="module")
def shared_ray() -> Iterator[Any]:
    """A local Ray of 2 CPUs for the module, started and stopped as a run's own is."""
    ray = ray_module(local=True)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(_raykit)
    assert not ray.is_initialized()
    assert start_or_join(ray, None, {"num_cpus": 2})
    try:
        yield ray
    finally:
        shutdown(ray)
    left = ray_children()
    if left:
        _gone, alive = psutil.wait_procs([psutil.Process(p) for p in left], timeout=15)
        assert not alive, f"Ray processes outlived the module: {[p.pid for p in alive]}"


@pytest.fixture(autouse=True)
def actors_stopped(shared_ray: Any) -> Iterator[None]:
    """Each test starts with the shared Ray idle and leaves it so: its actors are stopped."""
    total = shared_ray.cluster_resources().get("CPU")
    assert total == 2.0
    yield
    assert shared_ray.is_initialized(), "the shared Ray was stopped"
    deadline = time.monotonic() + RELEASE_SECONDS
    while (free := shared_ray.available_resources().get("CPU")) != total:
        assert time.monotonic() < deadline, f"actors outlived the test: {free} of {total} CPUs free"
        time.sleep(0.1)


class Sleepy(covey.Client):
    """Client 0 takes a second to fit in round 1, client 1 a minute; later rounds are quick."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if config["round"] == 1:
            time.sleep(1 + 59 * self.cid)
        return FitResult(weights=dict(weights), num_examples=1)


def test_an_exchange_given_up_early_is_not_called_a_missed_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fit = {"w": np.zeros(2)}
    with RayTransport(Sleepy, 2) as transport:
        replies: Any = transport.exchange(  # a generator: closed below
            {0: Task("fit", 1, {"round": 1}, fit), 1: Task("fit", 1, {"round": 1}, fit)}
        )
        assert next(replies).cid == 0  # client 1 is still in its fit
        with caplog.at_level(logging.WARNING, logger="covey"):
            # What Ctrl-C (or any error of the loop) does to an exchange in progress.
            replies.close()
        assert "missed the deadline" not in caplog.text
        # The actor stopped with the exchange is replaced: the next exchange is answered.
        again = transport.exchange({1: Task("fit", 2, {"round": 2}, fit)}, timeout=60)
        assert [r.cid for r in again if r.ok] == [1]
        # A deadline that passes is one.
        with caplog.at_level(logging.WARNING, logger="covey"):
            late = list(transport.exchange({1: Task("fit", 1, {"round": 1}, fit)}, timeout=0.5))
        # The client is told why it failed, as on the process backend.
        assert [(r.cid, r.ok) for r in late] == [(1, False)]
        assert "no reply in time: Ray actor 1 had not answered" in str(late[0].error)
        assert "timeout of 0.5 s" in str(late[0].error)
    assert "missed the deadline with 1 client unanswered (1)" in caplog.text


class Calls:
    """Stands in for an actor handle: records how many clients each ``run`` call carries."""

    def __init__(self, actor: Any, sizes: list[int]) -> None:
        self.actor = actor
        self.sizes = sizes
        self.run = self

    def remote(self, token: int, encoded: Any, items: list[Any], *sent: Any) -> Any:
        self.sizes.append(len(items))
        return self.actor.run.remote(token, encoded, items, *sent)


def test_an_actor_is_not_handed_many_copies_of_a_large_model_in_one_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 8 clients of a 24 MB model on one actor: one call of 8 replies would hold 192 MB
    # of updates in the actor, and again in the object store, before the first is folded.
    big = {"w": np.zeros(3 * 2**20)}
    small = {"w": np.zeros(3)}
    with RayTransport(Plus, 8, num_actors=1) as transport:
        sizes: list[int] = []
        actor = transport._actors[""][0]
        transport._actors[""][0] = Calls(actor, sizes)
        replies = list(transport.exchange({c: Task("fit", 1, {}, big) for c in range(8)}))
        assert sorted(r.cid for r in replies if r.ok) == list(range(8))
        assert sum(sizes) == 8
        assert max(sizes) * big["w"].nbytes <= 64 * 2**20, sizes
        sizes.clear()
        list(transport.exchange({c: Task("fit", 1, {}, small) for c in range(8)}))
        assert sizes == [8]  # a small model still goes in one call
        transport._actors[""][0] = actor
        # Tasks of one exchange that carry two models (FedBuff's clients train on
        # different versions) put each model in the object store once, not per switch.
        encoded: list[int] = []
        encode_into = _codec.encode_into

        def counted(weights: Any, out: Any) -> Any:
            encoded.append(len(weights["w"]))
            return encode_into(weights, out)

        monkeypatch.setattr(_codec, "encode_into", counted)
        one, two = {"w": np.zeros(2)}, {"w": np.ones(2)}
        tasks = {c: Task("fit", 1, {}, (one, two)[c % 2]) for c in range(6)}
        replies = list(transport.exchange(tasks))
        assert len(encoded) == 2
        assert {r.cid: r.result.weights["w"].tolist() for r in replies} == {
            c: [c + c % 2] * 2 for c in range(6)
        }


def test_a_client_the_actors_cannot_import_is_a_clear_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module only this process can import (its folder added to sys.path here).
    (tmp_path / "unshipped_clients.py").write_text(
        "import covey\n"
        "class Local(covey.Client):\n"
        "    def fit(self, weights, config):\n"
        "        return covey.FitResult(weights=dict(weights), num_examples=1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("unshipped_clients")
    monkeypatch.setitem(sys.modules, "unshipped_clients", module)  # gone after the test
    with pytest.raises(RuntimeError, match="No module named 'unshipped_clients'") as info:
        RayTransport(module.Local, 2, num_actors=1)
    assert "register_pickle_by_value" in str(info.value)
    assert "\x1b[" not in str(info.value)


class Exits(covey.Client):
    """Client 1 calls ``sys.exit`` in fit, client 2 raises asyncio's ``CancelledError``."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1:
            sys.exit(4)
        if self.cid == 2:
            import asyncio

            raise asyncio.CancelledError
        return FitResult(weights={"w": weights["w"] + self.cid}, num_examples=1)


def test_a_client_calling_sys_exit_fails_alone_and_its_actor_lives_on() -> None:
    # One actor runs all four clients in one call: an exit that ended the actor
    # would fail clients 0 and 3 too, and the round with them.
    fit = {"w": np.zeros(2)}
    with RayTransport(Exits, 4, num_actors=1) as transport:
        pid = transport._where[("", 0)][0]
        for rnd in (1, 2):
            replies = {
                r.cid: r
                for r in transport.exchange({c: Task("fit", rnd, {}, fit) for c in range(4)})
            }
            assert sorted(c for c, r in replies.items() if r.ok) == [0, 3]
            assert "called sys.exit(4) (SystemExit) in its fit task: it fails alone" in str(
                replies[1].error
            )
            assert "raised CancelledError, which is no Exception" in str(replies[2].error)
        assert transport._where[("", 0)][0] == pid
        assert transport._actors[""][0] is not None


class EndsItsProcess(covey.Client):
    """Client 1 ends its actor's process in fit (``os._exit``), as a crash would."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1:
            os._exit(3)
        return FitResult(weights={"w": weights["w"] + self.cid}, num_examples=1)


def test_an_actor_that_died_blames_no_client_it_cannot_know_it_was_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Client 0 had replied and clients 2 and 3 never ran, yet each was told that the
    # actor "died running client 0" (2, 3): only client 1 ended it.
    monkeypatch.setattr("covey.sim._ray.CHUNK", 2)  # calls of clients 0, 1 and 2, 3
    fit = {"w": np.zeros(2)}
    with RayTransport(EndsItsProcess, 4, num_actors=1) as transport:
        pid = transport._where[("", 0)][0]
        tasks = {c: Task("fit", 1, {}, fit) for c in range(4)}
        errors = {r.cid: str(r.error) for r in transport.exchange(tasks)}
    assert sorted(errors) == [0, 1, 2, 3]
    assert all(
        not e.startswith(f"Ray actor 0 (pid {pid}) died running client") for e in errors.values()
    )
    for cid in (0, 1):  # quick clients: their replies go together, so which one is not known
        assert errors[cid].startswith(
            f"Ray actor 0 (pid {pid}) died running one of clients 0, 1, those of its call it "
            "had not answered: it runs them one after another and sends the replies of those "
            "that finish in quick succession together"
        )
    for cid in (2, 3):
        assert errors[cid].startswith(
            f"Ray actor 0 (pid {pid}) died before running client {cid}, queued behind the "
            "call it died in; it held 4 clients this round: "
        )


class SlowThenEnds(covey.Client):
    """Clients 0-2 take 0.1 s; client 3 then ends its actor's process (``os._exit(3)``) once."""

    def __init__(self, cid: int, marker: str) -> None:
        self.cid = cid
        self.marker = marker

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid < 3:
            time.sleep(0.1)  # more than an actor gathers replies for: each is sent alone
        elif self.cid == 3 and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write("ended")
            os._exit(3)
        return FitResult(weights={"w": weights["w"] + self.cid}, num_examples=self.cid + 1)


class FailsFrom3(covey.Client):
    """Clients 3-7 fail in round 1: those the actor did not answer when client 3 ended it."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid >= 3 and config["round"] == 1:
            raise ValueError(f"client {self.cid} left out")
        return FitResult(weights={"w": weights["w"] + self.cid}, num_examples=self.cid + 1)


def test_replies_an_actor_sent_before_it_died_are_aggregated(tmp_path: Any) -> None:
    # One actor runs clients 0-7 in one call; client 3 ends its process after clients
    # 0-2 finished. Their replies were lost with the actor (all eight clients failed
    # and round 1 aggregated nothing); they are the round's results now.
    # The run joins the module's Ray, started beforehand.
    marker = str(tmp_path / "ended")
    strategy = covey.FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2)
    result = covey.simulate(
        lambda cid: SlowThenEnds(cid, marker),
        8,
        2,
        strategy,
        {"w": np.zeros(3)},
        backend="ray",
        num_workers=1,
        seed=3,
    )
    assert os.path.exists(marker)
    r1, r2 = result.history.rounds[1:]
    assert sorted(r1.fit_participants) == [0, 1, 2]
    errors = {f.cid: f.error for f in r1.fit_failures}
    assert sorted(errors) == [3, 4, 5, 6, 7]
    pid = "pid " + errors[3].split("(pid ", 1)[1].split(")", 1)[0]
    assert errors[3].startswith(f"Ray actor 0 ({pid}) died running one of clients 3, 4, 5, 6, 7")
    assert "its worker process has died" in errors[3]  # Ray's words for the cause
    assert r1.aggregated
    assert r2.fit_participants == list(range(8))  # a new actor runs them all
    # The same model as a run in which clients 3-7 failed in round 1.
    reference = covey.simulate(
        FailsFrom3, 8, 2, strategy, {"w": np.zeros(3)}, backend="inline", seed=3
    )
    assert [len(r.fit_participants) for r in reference.history.rounds[1:]] == [3, 8]
    assert result.weights["w"].tobytes() == reference.weights["w"].tobytes()


def test_a_ray_address_other_than_the_ray_joined_already_is_refused(shared_ray: Any) -> None:
    ray = shared_ray  # joined already: started beforehand, by the caller
    joined = str(ray.get_runtime_context().gcs_address)
    other = int(joined.rpartition(":")[2]) + 1
    # Run on the Ray joined already, the cluster asked for being another: refused.
    with pytest.raises(ValueError, match=rf"ray_address='127.0.0.1:{other}' names another"):
        covey.simulate(
            Plus,
            2,
            1,
            None,
            {"w": np.zeros(2)},
            backend="ray",
            ray_address=f"127.0.0.1:{other}",
        )
    assert ray.is_initialized()  # the caller's Ray is left as it was
    # The Ray joined, named by its port, is the one the run uses.
    port = joined.rpartition(":")[2]
    result = covey.simulate(
        Plus, 2, 1, None, {"w": np.zeros(2)}, backend="ray", ray_address=f"127.0.0.1:{port}"
    )
    assert result.weights["w"].tolist() == [0.5, 0.5]
    assert ray.is_initialized()


class Unpicklable(covey.Client):
    """Client 1 returns an object array of locks: no pickle carries it back from the actor."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        if self.cid == 1:
            locks = np.empty(2, dtype=object)
            locks[:] = [threading.Lock(), threading.Lock()]
            return FitResult(weights={"w": locks}, num_examples=1)
        return FitResult(weights={"w": weights["w"] + self.cid}, num_examples=1)


def test_a_reply_that_does_not_pickle_fails_its_client_alone_as_inline() -> None:
    # The actor answers for a call's clients together: a reply Ray cannot send
    # back would fail clients 0 and 2 with it.
    fit = {"w": np.zeros(2)}
    tasks = {c: Task("fit", 1, {}, fit) for c in range(3)}
    with RayTransport(Unpicklable, 3, num_actors=1) as transport:
        replies = {r.cid: r for r in transport.exchange(tasks)}
    assert sorted(c for c, r in replies.items() if r.ok) == [0, 2]
    # The server's own words for this mistake, as on the inline and process backends.
    assert replies[1].error == "client 1's weights: 'w' has dtype object, expected float64"


def test_a_config_a_deployed_server_cannot_send_fails_its_client_alone_as_inline() -> None:
    # Ray pickled any config to its actors: an object, or 5 MB of JSON, reached the
    # client, where a deployed server (and the inline and process backends) fail it.
    fit = {"w": np.zeros(2)}
    big = {f"part{i}": "z" * (1024 * 1024 - 100 * i) for i in range(5)}
    configs: list[dict[str, Any]] = [{"model": object()}, big, {"lr": 0.1}]
    tasks = {c: Task("fit", 1, config, fit) for c, config in enumerate(configs)}
    with RayTransport(Plus, 3, num_actors=1) as transport:
        replies = {r.cid: r for r in transport.exchange(tasks)}
    assert sorted(c for c, r in replies.items() if r.ok) == [2]
    assert replies[0].error == (
        "cannot send the fit task to client 0: its config: cannot send a value of type "
        "object over the network (at 'model')"
    )
    assert replies[1].error == (
        "cannot send the fit task to client 1: its config: 5241936 bytes of JSON exceed the "
        "limit of 4194304; the largest entry takes 1048578 bytes (at 'part0')"
    )


def test_a_payload_a_deployed_server_cannot_send_fails_its_client_alone_as_inline() -> None:
    # Ray pickled any payload to its actors: 5 MB of JSON reached the client, where a
    # deployed server (and the inline and process backends) fail it.
    big = {f"part{i}": "z" * (1024 * 1024 - 100 * i) for i in range(5)}
    payloads: list[Any] = [{"model": object()}, big, {"rows": 3}]
    tasks = {c: Task("properties", 1, payload=p) for c, p in enumerate(payloads)}
    with RayTransport(Plus, 3, num_actors=1) as transport:
        replies = {r.cid: r for r in transport.exchange(tasks)}
    assert sorted(c for c, r in replies.items() if r.ok) == [2]
    assert replies[0].error == (
        "cannot send the properties task to client 0: its payload: cannot send a value of "
        "type object over the network (at 'model')"
    )
    assert replies[1].error == (
        "cannot send the properties task to client 1: its payload: 5241936 bytes of JSON "
        "exceed the limit of 4194304; the largest entry takes 1048578 bytes (at 'part0')"
    )


class Overwrites(covey.Client):
    """Client 1 writes into its read-only weights through ctypes, as a compiled library may."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        w = weights["w"]
        if self.cid == 1:
            import ctypes

            ctypes.memmove(w.ctypes.data, np.full(w.shape, 99.0).ctypes.data, w.nbytes)
        return FitResult(weights={"w": w + 1}, num_examples=1)


def test_weights_changed_in_the_object_store_are_refused_in_every_later_call() -> None:
    # 40 clients on one actor go in calls of 16: the calls after client 1's read the
    # same changed buffer, and their replies, trained on it, must be refused too.
    fit = {"w": np.zeros(3)}
    tasks = {c: Task("fit", 1, {}, fit) for c in range(40)}
    with RayTransport(Overwrites, 40, num_actors=1) as transport:
        replies = list(transport.exchange(tasks))
        assert len(replies) == 40
        # Client 0 ran before the write: its reply, if sent before client 1 ran, stands.
        assert [r.cid for r in replies if r.ok] in ([], [0])
        assert all("the global weights changed in place" in str(r.error) for r in replies)
        assert fit["w"].tolist() == [0.0, 0.0, 0.0]  # the server's model is unchanged
        # The next model goes out in a new buffer: its round is answered as usual.
        again = {c: Task("fit", 2, {}, {"w": np.zeros(3)}) for c in (0, 2)}
        assert [r.result.weights["w"].tolist() for r in transport.exchange(again)] == [
            [1.0] * 3
        ] * 2
