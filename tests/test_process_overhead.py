"""The process backend's work per client: what is done once per round stays once per round.

Counts, never times: the JSON of a config all of a round's clients share, the
codec's layout of a small reply, the JSON calls of a result's head.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.core import Task, _codec
from covey.core._messages import Reply
from covey.core._weights import freeze
from covey.sim import ProcessTransport, _shm, _tasktexts
from covey.transport.grpc import _wire


class Echo(covey.Client):
    """Returns the weights plus its round and cid, and says which config it was given."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        new = {k: v + config["round"] + self.cid for k, v in weights.items()}
        return FitResult(weights=new, num_examples=1, metrics={"lr": config.get("lr", -1.0)})


def _counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    calls: list[Any] = []
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_config_shared_by_the_round_is_put_in_json_once(
    shm_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = freeze({"w": np.arange(4.0)})
    shared = {"round": 2, "lr": 0.5}
    own = {"round": 2, "lr": 0.25}
    tasks = {cid: Task("fit", 2, shared, weights) for cid in range(12)}
    tasks[5] = Task("fit", 2, own, weights)  # a client with a config of its own
    with ProcessTransport(Echo, 12, num_workers=2) as transport:
        calls = _counting(monkeypatch, _tasktexts, "_within")
        replies = {r.cid: r for r in transport.exchange(tasks)}
    configs = [args for args in calls if args[0] == "config"]
    # The shared config, client 5's own, then the shared one again for client 6.
    assert [args[1] for args in configs] == [shared, own, shared]
    assert len([args for args in calls if args[0] == "payload"]) == 1
    for cid, reply in replies.items():
        assert reply.ok, reply.error
        assert reply.result.metrics == {"lr": 0.25 if cid == 5 else 0.5}
        assert reply.result.weights["w"].tolist() == (np.arange(4.0) + 2 + cid).tolist()


def test_an_unsendable_shared_config_fails_every_client_alike(shm_files: list[str]) -> None:
    weights = freeze({"w": np.arange(4.0)})
    bad = {"round": 1, "blob": "x" * (5 * 1024 * 1024)}
    tasks = {cid: Task("fit", 1, bad, weights) for cid in range(3)}
    with ProcessTransport(Echo, 3, num_workers=2) as transport:
        replies = sorted(transport.exchange(tasks), key=lambda r: r.cid)
    assert [r.cid for r in replies] == [0, 1, 2]
    for reply in replies:
        assert reply.error is not None
        assert reply.error.startswith(f"cannot send the fit task to client {reply.cid}: its config")
        assert "(at 'blob')" in reply.error


class _Sink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def send_bytes(self, data: bytes) -> None:
        self.messages.append(data)


def test_a_small_reply_is_laid_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = {"W": np.arange(640.0).reshape(64, 10), "b": np.arange(10, dtype=np.float32)}
    reply = Reply(7, "fit", result=FitResult(weights=arrays, num_examples=3))
    plans = _counting(monkeypatch, _codec, "_Plan")
    sink = _Sink()
    assert _shm.send_reply(sink, 4, reply, "covey-0-00-r1-") == 0  # in the message itself
    assert len(plans) == 1
    seq, message, blob = _shm.parse_reply(sink.messages[0])
    back = _shm.build_reply(message, "covey-0-00-r1-", blob)
    assert seq == 4
    assert back.cid == 7
    for name, array in arrays.items():
        assert back.result.weights[name].dtype == array.dtype
        assert back.result.weights[name].tobytes() == array.tobytes()


def test_json_within_limits_is_dumped_once(monkeypatch: pytest.MonkeyPatch) -> None:
    head = {"type": "fit", "form": "weights", "num_examples": 3, "metrics": {"a": 1.5, "b": "x"}}
    expected = json.dumps(head, separators=(",", ":")).encode()
    dumps = _counting(monkeypatch, _wire.json, "dumps")
    assert _wire.dumps_within(head, _wire.WireLimits()) == expected
    assert len(dumps) == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"a": "x" * 9, "b": 2},
            "23 bytes of JSON exceed the limit of 16; the largest entry takes 11 bytes (at 'a')",
        ),
        (
            {"a": 1, "bb": [1, 2, 3, 4, 5, 6]},
            "26 bytes of JSON exceed the limit of 16; the largest entry takes 13 bytes (at 'bb')",
        ),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9], "19 bytes of JSON exceed the limit of 16"),
        ({}, None),
    ],
)
def test_json_over_the_limit_names_its_largest_entry(value: Any, message: str | None) -> None:
    limits = _wire.WireLimits(max_bytes=16)
    if message is None:
        assert _wire.dumps_within(value, limits) == b"{}"
        return
    with pytest.raises(_wire.WireError) as info:
        _wire.dumps_within(value, limits)
    assert str(info.value) == message
