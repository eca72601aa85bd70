"""What a server tells a client whose reply it refused, and how the client shows it.

The deployed processes are in ``test_deploy_refusal_told``; here: the round loops'
calls (which round, what, and the reason without the client's name), the
client's bounds on a hostile server's notice, and older peers.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc_tools import protoc

import covey
from covey.clients._client import run_task
from covey.compress import CompressedTransport, scheme_named
from covey.compress._counted import CountedAsyncTransport
from covey.compress._task import KIND
from covey.core._messages import Reply, Task
from covey.server import AsyncLoop
from covey.server._sync import RoundLoop
from covey.transport import SimulatedAsyncTransport
from covey.transport._memory import MemoryTransport
from covey.transport.grpc._frames import server_message
from covey.transport.grpc._told import REFUSAL_CHARS, REPLIES_KEPT, Told, refusal_frame
from covey.transport.grpc.proto import covey_pb2 as pb

Said = tuple[int, int, str, str, str]  # cid, round, reason, stage, unit


class Wrong(covey.Client):
    """Client 1 sends a delta of seven entries where the model has six, and a NaN loss."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        size = 7 if self.cid == 1 else 6
        return covey.FitResult(delta={"w": np.ones(size)}, num_examples=1)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=math.nan if self.cid == 1 else 0.5, num_examples=1)


class Telling(MemoryTransport):
    """Clients in this process, whose refusals are kept as a network's are sent."""

    def __init__(self, clients: list[int]) -> None:
        super().__init__(clients, lambda cid, task: run_task(Wrong(cid), cid, task))
        self.told: list[Said] = []

    def refused(
        self, cid: int, rnd: int, reason: str, *, stage: str = "fit", unit: str = ""
    ) -> None:
        self.told.append((cid, rnd, reason, stage, unit))


def test_a_round_loop_tells_a_client_of_its_refused_update_and_evaluation() -> None:
    transport = Telling([0, 1, 2])
    loop = RoundLoop(covey.FedAvg(min_fit_clients=2), transport, {"w": np.zeros(6)})
    loop.client_names = {1: "site-1"}
    history = loop.run(2)
    fit, evaluate = history.rounds[2].fit_failures[0], history.rounds[2].evaluate_failures[0]
    assert fit.error == "site-1's delta: 'w' has shape (7,), expected (6,)"  # as it was
    assert evaluate.error == "its loss is nan, not a finite number"
    said = "delta: 'w' has shape (7,), expected (6,)"  # without its name
    assert transport.told == [
        (1, 1, said, "fit", ""),
        (1, 1, evaluate.error, "evaluate", ""),
        (1, 2, said, "fit", ""),
        (1, 2, evaluate.error, "evaluate", ""),
    ]


def test_a_client_that_failed_by_itself_is_told_nothing() -> None:
    # Its own error is in its own log already; only what the server refused is told.
    transport = Telling([0, 1])
    transport._handler = lambda cid, task: Reply(cid, task.kind, error="RuntimeError: boom")
    loop = RoundLoop(covey.FedAvg(fraction_evaluate=0.0), transport, {"w": np.zeros(6)})
    with pytest.raises(covey.FederationError):
        loop.run(1)
    assert transport.told == []


class TellingAsync(SimulatedAsyncTransport):
    def __init__(self) -> None:
        self.inner = Telling([0, 1])
        super().__init__(self.inner, durations=[1.0, 3.0])

    def refused(
        self, cid: int, rnd: int, reason: str, *, stage: str = "fit", unit: str = ""
    ) -> None:
        self.inner.refused(cid, rnd, reason, stage=stage, unit=unit)


def test_an_asynchronous_loop_names_the_update_of_the_refused_task() -> None:
    # Client 1's task of update 1 comes back during update 3: it is told of update 1,
    # the task it answered, as its own log numbers it.
    transport = TellingAsync()
    loop = AsyncLoop(covey.FedBuff(buffer_size=1, concurrency=2), transport, {"w": np.zeros(6)})
    history = loop.run(3)
    assert [f.cid for r in history.rounds for f in r.fit_failures] == [1]
    assert history.rounds[3].fit_failures[0].error.startswith("client 1's delta:")
    said = "delta: 'w' has shape (7,), expected (6,)"
    assert transport.inner.told == [(1, 1, said, "fit", "update")]


def _refusal(frame: bytes) -> pb.Refusal:
    message = server_message(frame)
    assert message.WhichOneof("body") == "heartbeat"
    return message.heartbeat.refusal


def test_a_client_logs_a_refusal_once_for_each_reply_it_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    told = Told()
    told.replied("", 3)
    told.replied("update", 4)
    with caplog.at_level(logging.WARNING, logger="covey"):
        frame = refusal_frame(3, "weights: 'w' has shape (3,), expected (4,)")
        assert told.heard(_refusal(frame))
        assert not told.heard(_refusal(frame))  # once: it sent one reply in round 3
        assert not told.heard(_refusal(refusal_frame(5, "made up")))  # no reply in round 5
        assert told.heard(_refusal(refusal_frame(4, "its loss is nan", "evaluate", "update")))
    assert [r.getMessage() for r in caplog.records] == [
        "round 3: the server refused this site's update: "
        "weights: 'w' has shape (3,), expected (4,)",
        "update 4: the server refused this site's evaluation: its loss is nan",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_a_hostile_servers_refusal_is_cut_short_and_shown_safely(
    caplog: pytest.LogCaptureFixture,
) -> None:
    told = Told()
    told.replied("", 1)
    refusal = pb.Refusal(round=1, stage="fit", reason="\x1b[2J\x1b]0;owned\x07" + "x" * 10**6)
    with caplog.at_level(logging.WARNING, logger="covey"):
        assert told.heard(refusal)
    (said,) = [r.getMessage() for r in caplog.records]
    assert "\x1b" not in said
    assert "\x07" not in said
    assert said.startswith(
        "round 1: the server refused this site's update: \\x1b[2J\\x1b]0;owned\\x07xxx"
    )
    assert "characters left out" in said
    assert len(said) < REFUSAL_CHARS + 200


def test_a_refusal_all_of_escapes_is_cut_once_escaped_and_its_stage_is_never_quoted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Cut to 2,000 characters first, then escaped: each tag character took ten, 20,000 a line.
    told = Told()
    told.replied("", 1)
    told.replied("", 2)
    tags = "\U000e0001" * 10**5
    stage = "\x1b[2J" * 1000  # no stage a server sends
    with caplog.at_level(logging.WARNING, logger="covey"):
        assert told.heard(pb.Refusal(round=1, stage="fit", reason=tags))
        assert told.heard(pb.Refusal(round=2, stage=stage, reason="too big"))
    first, second = [r.getMessage() for r in caplog.records]
    assert first.startswith("round 1: the server refused this site's update: \\U000e0001")
    assert "characters left out" in first
    assert len(first) < REFUSAL_CHARS + 200
    assert second == "round 2: the server refused this site's reply: too big"


def test_a_client_keeps_the_rounds_of_its_last_replies_only() -> None:
    told = Told()
    for rnd in range(1, REPLIES_KEPT + 11):
        told.replied("", rnd)
    assert not told.heard(pb.Refusal(round=1, reason="too late"))
    assert told.heard(pb.Refusal(round=REPLIES_KEPT + 10, reason="the last"))


def test_a_server_sends_at_most_its_cap_of_a_reason() -> None:
    refusal = _refusal(refusal_frame(2, "y" * 10**5, "evaluate"))
    assert len(refusal.reason) <= REFUSAL_CHARS + 60
    assert (refusal.round, refusal.stage, refusal.unit) == (2, "evaluate", "")


def test_a_reason_holding_a_lone_surrogate_is_sent_escaped() -> None:
    # A client's name or metric may hold one (from undecodable bytes): the reason
    # quoting it must still make a frame, or the round loop telling it would fail.
    refusal = _refusal(refusal_frame(1, "metric 'loss\udcff' is no number"))
    assert refusal.reason == "metric 'loss\\udcff' is no number"


def test_a_client_of_an_older_covey_takes_a_refusal_for_a_heartbeat(tmp_path: Path) -> None:
    # covey.proto as it was before Refusal: such a client reads the frame as a heartbeat
    # and goes on (a body it did not know would have ended its connection).
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = Path(pb.__file__).with_name("covey.proto").read_text(encoding="utf-8")
    head, _, rest = proto.partition("message Refusal {")
    _, _, tail = rest.partition("}\n")
    older = head.replace("  Refusal refusal = 2;\n", "") + tail
    assert "Refusal" not in older
    (tmp_path / "covey.proto").write_text(older, encoding="utf-8")
    out = tmp_path / "set.pb"
    args = ["protoc", f"-I{tmp_path}", f"--descriptor_set_out={out}", "covey.proto"]
    assert protoc.main(args) == 0
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    old = message_factory.GetMessageClass(pool.FindMessageTypeByName("covey.v1.ServerMessage"))
    message = old.FromString(refusal_frame(3, "weights: wrong"))
    assert message.WhichOneof("body") == "heartbeat"
    assert not message.heartbeat.data_ready


def _garbled(cid: int, task: Task) -> Reply:
    """Client 1 sends an encoded update that decodes to nothing; the others train."""
    if cid == 1 and task.kind == KIND:
        return Reply(cid, KIND, result={"parts": "garbage"})
    return run_task(Wrong(0), cid, task)


def test_an_encoded_update_the_server_cannot_decode_is_told() -> None:
    inner = Telling([0, 1])
    inner._handler = _garbled
    transport = CompressedTransport(inner, scheme_named("q8"))
    strategy = covey.FedAvg(min_fit_clients=1, fraction_evaluate=0.0)
    history = RoundLoop(strategy, transport, {"w": np.zeros(6)}).run(2)
    (failure,) = history.rounds[2].fit_failures
    assert failure.error.startswith("refused the encoded update: ")
    assert inner.told == [(1, 1, failure.error, "fit", ""), (1, 2, failure.error, "fit", "")]


def test_an_asynchronous_encoded_update_the_server_cannot_decode_is_told() -> None:
    inner = TellingAsync()
    inner.inner._handler = _garbled
    transport = CountedAsyncTransport(inner, scheme_named("q8"))
    strategy = covey.FedBuff(buffer_size=1, concurrency=2)
    history = AsyncLoop(strategy, transport, {"w": np.zeros(6)}).run(2)
    errors = [f.error for r in history.rounds for f in r.fit_failures]
    assert errors
    assert all(e.startswith("refused the encoded update: ") for e in errors)
    assert inner.inner.told
    assert all(cid == 1 and unit == "update" for cid, _, _, _, unit in inner.inner.told)


def test_a_refusal_that_comes_back_before_the_task_thread_goes_on_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The reply is on the stream once it is queued: the server may refuse it, and the
    # client read the refusal, before the thread that queued it runs again.
    from types import SimpleNamespace

    from covey.transport.grpc import _taskthread

    reply = Reply(0, "fit", result=covey.FitResult(weights={"w": np.zeros(2)}, num_examples=1))
    monkeypatch.setattr(_taskthread, "perform_task", lambda *args: (reply, None))
    shared = _taskthread.Shared()
    heard: list[bool] = []
    refusal = _refusal(refusal_frame(3, "weights: 'w' has shape (2,), expected (4,)"))
    session = SimpleNamespace(
        shared=shared,
        token=shared.begin(),
        client=None,
        limits=None,
        lanes=SimpleNamespace(up=None),
        outbound=SimpleNamespace(put=lambda frames: heard.append(shared.told.heard(refusal))),
    )
    header = pb.TaskHeader(task_id=1, kind="fit", round=3)
    with caplog.at_level(logging.WARNING, logger="covey"):
        _taskthread._perform(session, "fit task of round 3", 0, header, None, True)
    assert heard == [True]
    assert [r.getMessage() for r in caplog.records] == [
        "round 3: the server refused this site's update: weights: 'w' has shape (2,), expected (4,)"
    ]


class NoLoss(covey.Client):
    """Client 1 reports no ``loss`` metric, which q-FedAvg's aggregation step needs."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> covey.FitResult:
        metrics = {} if self.cid == 1 else {"loss": 0.5}
        return covey.FitResult(delta={"w": np.ones(6)}, num_examples=1, metrics=metrics)


def test_a_refusal_by_the_aggregation_step_names_the_site_as_this_site() -> None:
    # The step names the client by the server's id for it, which is not the site's own
    # --cid (site-1 may be the server's client 0): the site reads "this site" instead.
    transport = Telling([0, 1, 11])
    transport._handler = lambda cid, task: run_task(NoLoss(cid), cid, task)
    strategy = covey.QFedAvg(min_fit_clients=2, fraction_evaluate=0.0)
    history = RoundLoop(strategy, transport, {"w": np.zeros(6)}).run(1)
    (failure,) = history.rounds[1].fit_failures
    assert "qfedavg: client 1 reported no numeric 'loss' metric" in failure.error  # as it was
    ((cid, rnd, said, stage, _),) = transport.told
    assert (cid, rnd, stage) == (1, 1, "fit")
    assert said.startswith(
        "refused by the aggregation step: qfedavg: this site reported no numeric 'loss' metric"
    )
    assert "client 1" not in said


@pytest.mark.parametrize(
    "reason", ["y" * 2500, "é" * 10**5, "weights: " + "\x1b" * 900 + "z" * 1500]
)
def test_a_long_refusal_is_shown_with_one_note_counting_what_was_left_out(
    reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The server cut it to 2,000 characters and a note of its own, the client cut that again
    # to 2,000: the server's note was left out, and the client's counted its characters alone.
    told = Told()
    told.replied("", 1)
    with caplog.at_level(logging.WARNING, logger="covey"):
        assert told.heard(_refusal(refusal_frame(1, reason)))
    (said,) = [r.getMessage() for r in caplog.records]
    shown = said.removeprefix("round 1: the server refused this site's update: ")
    assert len(shown) <= REFUSAL_CHARS
    (note,) = re.findall(r" \[\.\.\. (\d+) characters left out \.\.\.\] ", shown)
    head, tail = shown.split(f" [... {note} characters left out ...] ")
    kept = sum(len(_unescaped(part)) for part in (head, tail))
    assert int(note) + kept == len(reason)


def _unescaped(shown: str) -> str:
    """The text ``shown`` escaped, as it was."""
    return shown.encode("ascii", "backslashreplace").decode("unicode_escape")
