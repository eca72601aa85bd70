"""Server and client keep no model they no longer need.

The server's step-0 model goes once round 2 starts; a client's received model
goes once its task is done, not when the next task arrives. (A client keeps
the buffer itself for the next task, its pages given back for the kernel to
reclaim, see ``test_receive_buffers.py``; one something holds a weak
reference to can never be reused, and goes at once, as here.)

Until then the transport keeps the step-0 model's encoding (for clients still
to be sent round 1's task); from round 2 on, nothing in the server may hold it.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.core import _pages

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

APPS = Path(__file__).parent / "apps"


def test_serve_with_a_weights_function_frees_the_step_0_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    import held_app  # its initial weights and evaluation note whether the step-0 model lives

    held_app.made.clear()
    held_app.alive.clear()
    made, alive = held_app.made, held_app.alive
    served = Served(
        covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0),
        2,
        initial_weights=held_app.initial,
        evaluate_fn=held_app.evaluate,
    )
    client = Joined(served.port, name="c0")
    result = served.join()
    client.join()
    assert len(made) == 1  # called once
    assert alive[0]
    assert not alive[2]
    np.testing.assert_array_equal(result.weights["w"], np.full(1 << 16, 2.0))


def test_the_server_command_keeps_no_reference_to_the_step_0_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(APPS))
    port_file = tmp_path / "port"
    joined: list[Joined] = []

    def join_when_listening() -> None:
        deadline = time.monotonic() + 60
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if port_file.exists():
            joined.append(Joined(int(port_file.read_text()), name="c0"))

    import held_app

    held_app.made.clear()
    held_app.alive.clear()
    helper = threading.Thread(target=join_when_listening, daemon=True)
    helper.start()
    args = ["server", "--app", "held_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    result = CliRunner().invoke(app, [*args, "--port-file", str(port_file), "--wait-timeout", "60"])
    helper.join(60)
    for client in joined:
        client.join()
    assert result.exit_code == 0, result.output
    assert held_app.alive[0]
    assert not held_app.alive[2]


def _buffer_of(array: np.ndarray) -> Any:
    obj: Any = array
    while isinstance(obj, np.ndarray):
        obj = obj.base
    return obj.obj if isinstance(obj, memoryview) else obj


class _Remembers(covey.Client):
    """Adds one, keeping a weak reference to the buffer each round's model arrived in."""

    def __init__(self) -> None:
        self.buffers: list[weakref.ref[Any]] = []

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        self.buffers.append(weakref.ref(_buffer_of(weights["w"])))
        return covey.FitResult(weights={"w": weights["w"] + 1}, num_examples=1)


def _gone(ref: weakref.ref[Any], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def test_a_client_frees_the_model_it_received_once_its_task_is_done() -> None:
    client = _Remembers()
    idle_holds: dict[int, bool] = {}

    def evaluate(rnd: int, weights: Any) -> tuple[float, dict[str, Any]]:
        # The client has sent its reply and waits for the next task: it should hold no model
        # (the weak reference below keeps its buffer from being kept for reuse).
        if rnd > 0:
            idle_holds[rnd] = not _gone(client.buffers[-1])
        return 0.0, {}

    served = Served(
        covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0),
        3,
        initial_weights={"w": np.zeros(1 << 16)},
        evaluate_fn=evaluate,
    )
    joined = Joined(served.port, client=client, name="c0")
    result = served.join()
    joined.join()
    assert len(client.buffers) == 3  # each round's model arrived in a buffer of its own
    assert idle_holds == {1: False, 2: False, 3: False}
    np.testing.assert_array_equal(result.weights["w"], np.full(1 << 16, 3.0))


# In a fresh interpreter, so the heap's state does not depend on the tests run before.
_TRIM_SCRIPT = """
import os

from covey.core._pages import trim_heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

big = bytearray(8 << 20)  # freeing a mapped block raises glibc's mmap threshold past 2 MiB,
del big  # so the frames below come from the heap, as gRPC's received frames do
frames = [bytearray(os.urandom(16)) * (1 << 17) for _ in range(48)]  # 48 x 2 MiB, touched
keep = bytearray(1 << 20)  # allocated last: the heap's top stays in use
del frames
before = rss()
if os.environ.get("TRIM") == "1":
    trim_heap()
print(before, rss())
"""


def _heap_after_frames(trim: bool) -> tuple[float, float]:
    env = {**os.environ, "TRIM": "1" if trim else "0"}
    out = subprocess.run(
        [sys.executable, "-c", _TRIM_SCRIPT], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    before, after = map(float, out.stdout.split())
    return before, after


@pytest.mark.skipif(_pages._TRIM is None, reason="the C library has no malloc_trim (not glibc)")
def test_trim_heap_gives_freed_frames_back() -> None:
    before, after = _heap_after_frames(trim=False)
    assert before - after < 8, (
        "glibc gave the frames back by itself: the check below proves nothing"
    )
    before, after = _heap_after_frames(trim=True)
    assert before - after > 48, (before, after)


class _PlusOne(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 1.0}, num_examples=1)


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_simulate_with_a_weights_function_frees_the_step_0_model(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    import held_app

    held_app.made.clear()
    held_app.alive.clear()
    result = covey.simulate(
        lambda cid: _PlusOne(),
        2,
        2,
        covey.FedAvg(fraction_evaluate=0.0),
        held_app.initial,
        held_app.evaluate,
        backend=backend,  # type: ignore[arg-type]
        num_workers=1,
    )
    assert len(held_app.made) == 1  # called once
    assert held_app.alive[0]
    assert not held_app.alive[1]  # round 1's model replaced it and nothing else holds it
    np.testing.assert_array_equal(result.weights["w"], np.full(1 << 16, 2.0))
