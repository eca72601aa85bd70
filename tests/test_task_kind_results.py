"""A task kind's result of one's own is refused alike in simulation and deployed.

A result holding arrays that cannot be sent (a string or complex dtype, a name
that is not a string) failed a deployed client's task (``cannot send the result:
weight 'x' has dtype complex128; ...``) and the process backend's, but passed on
the inline and Ray backends: a run that worked in simulation failed deployed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import covey
from _live import Joined
from covey.clients._client import _HANDLERS
from covey.core._messages import Reply, Task
from covey.sim import ProcessTransport, inline_transport
from covey.transport.grpc import GrpcServerTransport

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")]

#: Results of a task kind of one's own, keyed by their name in the task's payload.
RESULTS: dict[str, Any] = {
    "complex": {"x": np.array([1j])},
    "text": {"x": np.array(["a"]), "n": 1},
    "number_name": {3: np.ones(2)},
    "fine": {"x": np.arange(3.0), "n": 1},
}

ERRORS = {
    "complex": "cannot send the result: weight 'x' has dtype complex128; only bool, integer "
    "and floating-point arrays are supported: keep the real and imaginary parts as a float "
    "array (np.stack([w.real, w.imag], axis=-1); in a torch model, a real parameter of a "
    "trailing dimension 2 that forward() reads with torch.view_as_complex)",
    "text": "cannot send the result: weight 'x' has dtype <U1; only bool, integer and "
    "floating-point arrays are supported",
    "number_name": "cannot send the result: weight names must be non-empty strings, got 3",
    "fine": None,
}


def _answer(client: Any, task: Task) -> Any:
    return RESULTS[task.payload["name"]]


def _tasks() -> dict[int, Task]:
    return {i: Task("answer", 1, payload={"name": name}) for i, name in enumerate(RESULTS)}


def _errors(replies: Any) -> dict[str, str | None]:
    names = list(RESULTS)
    return {names[r.cid]: r.error for r in replies}


def _simulated(backend: str, tasks: dict[int, Task]) -> list[Reply]:
    """The replies of ``tasks`` run by plain clients on ``backend`` (inline or process)."""
    if backend == "inline":
        return list(inline_transport(lambda cid: covey.Client(), len(tasks)).exchange(tasks))
    with ProcessTransport(lambda cid: covey.Client(), len(tasks), num_workers=1) as processes:
        return list(processes.exchange(tasks))


def _deployed(tasks: dict[int, Task]) -> list[Reply]:
    """The replies of ``tasks``, one at a time, from a plain client joined over gRPC.

    Each reply carries the number of its task, as a simulated one its client's.
    """
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=5.0)
    client = Joined(transport.port, covey.Client(), name="site", max_attempts=1)
    try:
        assert transport.wait_for_clients(1, 20)
        (cid,) = transport.clients()
        replies: list[Reply] = []
        for task in tasks.values():
            (reply,) = transport.exchange({cid: task})
            replies.append(Reply(len(replies), reply.kind, reply.result, reply.error))
    finally:
        transport.close()
        client.join(30)
    return replies


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_simulation_refuses_unsendable_arrays_of_a_task_kind_as_deployed(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_HANDLERS, "answer", _answer)
    assert _errors(_simulated(backend, _tasks())) == ERRORS


def test_a_deployed_client_refuses_the_same_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_HANDLERS, "answer", _answer)
    assert _errors(_deployed(_tasks())) == ERRORS


#: What a task kind of one's own answers, and what a deployed server reads of it.
VALUES: dict[str, tuple[Any, Any]] = {
    "number_keys": ({0: 1, 1: "b"}, {"0": 1, "1": "b"}),
    "tuple": ((1, 2.5), [1, 2.5]),
    "scalar": (np.float32(1.5), 1.5),
    "nested": ({"counts": (np.int64(3),), 2: None}, {"counts": [3], "2": None}),
    "with_arrays": ({"n": np.int32(2), "x": np.arange(2.0)}, {"n": 2, "x": np.arange(2.0)}),
}


def _value(client: Any, task: Task) -> Any:
    """Answers the value its payload names, and what it was sent as the payload."""
    return {"sent": task.payload["sent"], "answer": VALUES[task.payload["name"]][0]}


def _value_tasks() -> dict[int, Task]:
    sent = {"keys": {7: (1, 2)}, "scalar": np.float64(0.5)}
    return {
        i: Task("value", 1, payload={"name": name, "sent": sent}) for i, name in enumerate(VALUES)
    }


def _received(replies: Any) -> dict[str, Any]:
    names = list(VALUES)
    out = {}
    for r in replies:
        assert r.error is None, r.error
        assert r.result["sent"] == {"keys": {"7": [1, 2]}, "scalar": 0.5}
        assert type(r.result["sent"]["scalar"]) is float
        out[names[r.cid]] = r.result["answer"]
    return out


def _check_received(received: dict[str, Any]) -> None:
    for name, (_, want) in VALUES.items():
        got = received[name]
        if name == "with_arrays":
            assert got.keys() == want.keys()
            assert type(got["n"]) is int
            np.testing.assert_array_equal(got["x"], want["x"])
        else:
            assert got == want, name
            assert type(got) is type(want), name
            if name == "scalar":
                assert type(got) is float


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_every_backend_hands_over_a_task_kinds_payload_and_result_as_deployed(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_HANDLERS, "value", _value)
    _check_received(_received(_simulated(backend, _value_tasks())))


def test_a_deployed_server_reads_a_task_kinds_values_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_HANDLERS, "value", _value)
    _check_received(_received(_deployed(_value_tasks())))
