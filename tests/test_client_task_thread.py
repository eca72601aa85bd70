"""A deployed client's task thread: bounded waits for a task that hangs, and late results.

Hanging is made with events, never with sleeps; no test asserts a duration.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from _live import Joined, Served
from _procs import undated
from covey.cli import app
from covey.core._messages import Reply
from covey.transport.grpc import _client, _taskthread
from covey.transport.grpc._frames import PROTOCOL
from covey.transport.grpc._server import GrpcServerTransport
from covey.transport.grpc._tasks import UNKNOWN_KIND, ConnectResult
from covey.transport.grpc._wire import WireLimits
from covey.transport.grpc.proto import covey_pb2 as pb

APPS = Path(__file__).parent / "apps"


class Hung(covey.Client):
    """A client whose first fit hangs until the test lets it go."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        self.started.set()
        assert self.release.wait(60), "the test never let the fit go"
        return covey.FitResult(weights=weights, num_examples=1)


@pytest.mark.slow
def test_a_client_whose_fit_hangs_after_its_connection_dropped_reconnects_and_hears_goodbye(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It waited for that fit without bound: never reconnected, never heard the run end.
    monkeypatch.setattr(_client._Session.close, "__defaults__", (0.1,))
    monkeypatch.setattr(_taskthread, "TASK_WAIT", 0.2)
    joins: list[str] = []
    rejoined = threading.Event()

    def on_event(name: str, event: str, detail: str) -> None:
        if event == "join":
            joins.append(name)
            if len(joins) == 2:
                rejoined.set()

    hung = Hung()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=on_event)
    client = Joined(transport.port, hung, name="hung")
    try:
        with caplog.at_level(logging.INFO, logger="covey"):
            assert transport.wait_for_clients(1, 30)
            (cid,) = transport.clients()
            transport.submit(cid, covey.core.Task("fit", 1, {}, {"w": np.zeros(2)}))
            assert hung.started.wait(30)
            transport._registry.drop(transport._registry.fleet[cid], "cut off by the test")
            assert rejoined.wait(30), "the client never reconnected while its fit hung"
            transport.close("the run is over")
            client.join(30)  # the goodbye reached it, its fit still hanging
    finally:
        transport.close("the run is over")
        hung.release.set()
    assert client.result is not None
    assert client.result.reason == "the run is over"
    assert client.result.tasks == 0  # the fit that hung had its connection gone
    assert "the fit task of update 1 (thread covey-task-1) still runs" in caplog.text
    assert "leaving while the fit task of update 1 (thread covey-task-1) still runs" in caplog.text


class _Gated:
    """``perform_task`` whose tasks each wait for the test to let them go."""

    def __init__(self) -> None:
        self.started: dict[int, threading.Event] = {}
        self.release: dict[int, threading.Event] = {}
        self.order: list[int] = []

    def gate(self, task_id: int) -> None:
        self.started[task_id] = threading.Event()
        self.release[task_id] = threading.Event()

    def __call__(self, client: Any, cid: int, header: Any, *rest: Any) -> Any:
        self.order.append(header.task_id)
        self.started[header.task_id].set()
        assert self.release[header.task_id].wait(30), "the test never let the task go"
        self.order.append(-header.task_id)
        return Reply(cid, header.kind, error="late" if header.task_id == 1 else None), WireLimits()


def _session(shared: _taskthread.Shared) -> Any:
    limits = _client.TaskLimits.of(None, 1 << 20)
    session = _client._Session(object(), "c", {}, 5.0, limits, None, shared)
    session.worker = threading.Thread(target=_taskthread.serve_tasks, args=(session, _client._END))
    session.worker.start()
    return session


def _replies(session: Any) -> list[Any]:
    items = []
    while not session.outbound.empty():
        items.append(session.outbound.get_nowait())
    return [item for item in items if item is not _client._END]


def _abandoned(monkeypatch: pytest.MonkeyPatch) -> tuple[_Gated, Any, Any]:
    """A session whose fit task (id 1) is running, gated, as its connection goes."""
    gated = _Gated()
    monkeypatch.setattr(_taskthread, "perform_task", gated)
    shared = _taskthread.Shared(ConnectResult())
    old = _session(shared)
    gated.gate(1)
    old.tasks.put((0, pb.TaskHeader(task_id=1, kind="fit", round=1), None, True))
    assert gated.started[1].wait(30)
    old.close(deadline=0)  # its connection is gone: the task runs on, abandoned
    return gated, shared, old


def test_a_task_that_ends_after_its_session_changes_nothing_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gated, shared, old = _abandoned(monkeypatch)
    new = _session(shared)  # the session after it
    gated.gate(2)
    new.tasks.put((0, pb.TaskHeader(task_id=2, kind="evaluate", round=2), None, True))
    gated.release[1].set()  # the old task ends late, its session over
    old.worker.join(30)
    assert gated.started[2].wait(30)
    gated.release[2].set()
    new.close()
    new.worker.join(30)
    assert gated.order == [1, -1, 2, -2]  # one task at a time, on the client object
    assert shared.result.tasks == 1  # the live session's task alone
    assert shared.result.kinds == {"evaluate": 1}
    assert _replies(old) == []  # its reply had no connection to go to
    assert len(_replies(new)) == 1
    assert shared.running == ""


def test_a_welcome_read_after_its_session_ended_changes_no_id() -> None:
    shared = _taskthread.Shared(ConnectResult())
    limits = _client.TaskLimits.of(None, 1 << 20)
    old = _client._Session(object(), "c", {}, 5.0, limits, None, shared)
    new = _client._Session(object(), "c", {}, 5.0, limits, None, shared)
    new._welcome(pb.Welcome(cid=7, name="c", protocol=PROTOCOL), shared.result)
    # A call given up (it did not end once cancelled) reads its welcome late.
    old._welcome(pb.Welcome(cid=3, name="c", protocol=PROTOCOL), shared.result)
    assert shared.result.cid == 7


def test_the_client_command_ends_at_once_with_its_code_after_its_last_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its end went through Python's finalization, which waits on gRPC's shutdown: seconds
    # after `done:` on a busy machine. It flushes and ends the process instead.
    monkeypatch.syspath_prepend(str(APPS))
    ended: list[int] = []

    def end(code: int) -> None:
        ended.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", end)
    flushed: list[bool] = []
    monkeypatch.setattr(logging, "shutdown", lambda: flushed.append(True))
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 1, initial_weights={"w": np.zeros(8)})
    args = ["client", "--app", "tiny_app:client_fn", "--cid", "0", "--insecure"]
    result = CliRunner().invoke(app, [*args, "--server", f"127.0.0.1:{served.port}"])
    served.join(60)
    assert ended == [0], result.output
    assert flushed == [True]  # log files the app opened are flushed first
    assert result.exit_code == 0
    lines = undated(result.output).strip().splitlines()
    assert lines[-1].startswith("done: 1 task(s) in 1 session(s)"), result.output
    assert "Traceback" not in result.output


def _waits(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The log records of a task waiting for another."""
    return [r for r in caplog.records if " waits for " in r.getMessage()]


def test_a_task_waiting_for_one_an_earlier_connection_left_running_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An INFO line alone: a client without --verbose showed nothing while its task waited.
    gated, shared, old = _abandoned(monkeypatch)
    with caplog.at_level(logging.INFO, logger="covey"):
        new = _session(shared)
        gated.gate(2)
        new.tasks.put((0, pb.TaskHeader(task_id=2, kind="fit", round=2), None, True))
        for _ in range(600):  # until the task says it waits (a bound, not a timing)
            if _waits(caplog):
                break
            new.worker.join(0.05)
        gated.release[1].set()
        assert gated.started[2].wait(30)
        gated.release[2].set()
        new.close()
        new.worker.join(30)
        old.worker.join(30)
    [record] = _waits(caplog)
    assert record.levelno == logging.WARNING
    warning = record.getMessage()
    assert warning.startswith("the fit task of round 2 waits for the fit task of round 1 (thread ")
    assert "left running by an earlier connection: a client runs one task at a time" in warning
    assert "the fit task of round 2 starts after waiting" in caplog.text


@pytest.mark.slow
def test_a_server_times_out_a_task_queued_behind_a_hung_one_and_then_calls_the_client_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_client._Session.close, "__defaults__", (0.1,))
    monkeypatch.setattr(_taskthread, "TASK_WAIT", 0.2)
    rejoined = threading.Event()

    def on_event(name: str, event: str, detail: str) -> None:
        if event in ("join", "rejoin") and name == "hung":
            rejoined.set()

    hung = Hung()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0, on_event=on_event)
    client = Joined(transport.port, hung, name="hung")
    task = covey.core.Task("fit", 1, {}, {"w": np.zeros(2)})
    try:
        assert transport.wait_for_clients(1, 30)
        (cid,) = transport.clients()
        assert list(transport.exchange({cid: task}, timeout=0.5)) == []  # the fit hangs
        assert hung.started.wait(30)
        rejoined.clear()
        transport._registry.drop(transport._registry.fleet[cid], "cut off by the test")
        assert rejoined.wait(30), "the client never reconnected while its fit hung"
        assert transport.wait_for_clients(1, 30)
        # Sent on the new connection, queued behind the hung fit: no reply before the deadline.
        assert list(transport.exchange({cid: task}, timeout=0.5)) == []
        assert transport.reached(cid)  # it was sent: its bytes count
        # The server knows the client still has that task: the next one is not sent.
        [busy] = list(transport.exchange({cid: task}, timeout=0.5))
        assert busy.error is not None
        assert busy.error.startswith("busy: still working on its fit")
        assert not transport.reached(cid)
        hung.release.set()  # the hung fit ends; the queued one runs, its late reply dropped
        [reply] = list(transport.exchange({cid: task}, timeout=60))
        assert reply.ok, reply.error
    finally:
        hung.release.set()
        transport.close("the run is over")
        client.join(30)


def test_tasks_of_kinds_the_client_has_no_handler_for_are_counted_under_one_key() -> None:
    # Counted by the kind the server named: a server naming a new kind in each task grew
    # the client's count without bound, by keys of its own text (escape sequences too).
    shared = _taskthread.Shared(ConnectResult())
    limits = _client.TaskLimits.of(None, 1 << 20)
    session = _client._Session(covey.Client(), "c", {}, 5.0, limits, None, shared)
    session.worker = threading.Thread(target=_taskthread.serve_tasks, args=(session, _client._END))
    session.worker.start()
    made_up = [f"\x1b[2Jkind {i}" for i in range(50)]
    for task_id, kind in enumerate(["properties", *made_up, "properties"], start=1):
        header = pb.TaskHeader(task_id=task_id, kind=kind, round=1, config=b"{}")
        session.tasks.put((0, header, None, True))
    for _ in range(600):  # until every task ran (a bound, not a timing)
        if shared.result.tasks == 52:
            break
        session.worker.join(0.05)
    session.close()
    session.worker.join(30)
    assert shared.result.tasks == 52
    assert shared.result.kinds == {"properties": 2, UNKNOWN_KIND: 50}
