"""The process backend paces its workers by the replies the round loop has not folded yet.

Replies are folded in client-id order, so a reply that comes before a lower
client's is held until that one is in. A worker whose earlier replies wait
unfolded past its budget does not start its next client; a reader that holds
every reply without releasing it still gets them all.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.core import Task
from covey.core._weights import freeze
from covey.server import RoundLoop, in_cid_order
from covey.sim import ProcessTransport, _pace

MODEL = 100_003  # float32 entries: 400 kB, a reply that travels in a file


class Marking(covey.Client):
    """Marks each fit's start in ``folder``; client 0 first waits for two other clients.

    Client 0 waits until two clients of the other worker have started, or
    ``window`` seconds, and writes how many had.
    """

    def __init__(self, cid: int, folder: Path, window: float) -> None:
        self.cid, self.folder, self.window = cid, folder, window

    def fit(self, weights: Any, config: Any) -> FitResult:
        (self.folder / f"started-{self.cid}").touch()
        if self.cid == 0:
            deadline = time.monotonic() + self.window
            while time.monotonic() < deadline and self._others() < 2:
                time.sleep(0.01)
            (self.folder / "seen").write_text(str(self._others()))
        return FitResult(weights={"w": weights["w"] + self.cid}, num_examples=1 + self.cid)

    def _others(self) -> int:
        return sum(1 for _ in self.folder.glob("started-*")) - 1


def _fold_in_order(budget: int | None, folder: Path, window: float) -> list[int]:
    """One exchange over 8 clients on 2 workers, read as the round loop reads it."""
    client_fn = functools.partial(Marking, folder=folder, window=window)
    weights = freeze({"w": np.zeros(MODEL, dtype=np.float32)})
    tasks = {cid: Task("fit", 1, {}, weights) for cid in range(8)}
    order = []
    with ProcessTransport(client_fn, 8, num_workers=2, max_waiting_bytes=budget) as transport:
        for reply in in_cid_order(transport.exchange(tasks, timeout=120), list(tasks)):
            assert reply.ok, reply.error
            assert reply.result.weights["w"][0] == reply.cid
            order.append(reply.cid)
            reply.release()  # folded, as the round loop does
            del reply
    return order


def test_a_worker_waits_for_its_reply_to_be_folded(tmp_path: Path, shm_files: list[str]) -> None:
    # Worker 1 runs clients 1, 3, 5, 7. Its reply for client 1 waits for client 0's
    # (worker 0, still running): with a budget of 0 bytes, client 3 cannot start.
    assert _fold_in_order(0, tmp_path, window=2.0) == list(range(8))
    assert int((tmp_path / "seen").read_text()) <= 1


def test_unpaced_workers_run_ahead(tmp_path: Path, shm_files: list[str]) -> None:
    # The same exchange without pacing: worker 1 runs on while client 0 waits, so the
    # replies held for order pile up (what the budget prevents).
    assert _fold_in_order(None, tmp_path, window=60.0) == list(range(8))
    assert int((tmp_path / "seen").read_text()) >= 2


def test_a_reader_holding_every_reply_unreleased_still_gets_them_all(
    shm_files: list[str],
) -> None:
    weights = freeze({"w": np.zeros(MODEL, dtype=np.float32)})
    tasks = {cid: Task("fit", 1, {}, weights) for cid in range(10)}
    with ProcessTransport(_Plain, 10, num_workers=2, max_waiting_bytes=0) as transport:
        replies = list(transport.exchange(tasks, timeout=120))  # none released or freed
        assert sorted(r.cid for r in replies) == list(range(10))
        assert all(r.ok for r in replies)


class _Plain(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        noise = rng.standard_normal(MODEL, dtype=np.float32)
        return FitResult(weights={"w": weights["w"] + noise}, num_examples=2 + self.cid)


@pytest.mark.parametrize("strategy", ["fedavg", "median"])
def test_paced_rounds_are_bit_identical_to_inline(strategy: str, shm_files: list[str]) -> None:
    # The median keeps every reply's arrays until the round ends; the round loop's
    # release after each fold still gives the workers their credit.
    def make() -> covey.Strategy:
        return covey.FedAvg() if strategy == "fedavg" else covey.FedMedian()

    initial = {"w": np.linspace(-1, 1, MODEL, dtype=np.float32)}
    inline = covey.simulate(_Plain, 7, 2, make(), initial, backend="inline")
    with ProcessTransport(_Plain, 7, num_workers=2, max_waiting_bytes=0) as transport:
        loop = RoundLoop(make(), transport, dict(initial))
        history = loop.run(2)
    assert history.rounds[-1].fit_participants == list(range(7))
    assert inline.weights["w"].tobytes() == loop.weights["w"].tobytes()


def test_the_worker_stops_waiting_once_the_server_moved_on() -> None:
    # A message waiting on the pipe (a stop, the next round after a timeout) ends a wait.
    ctx = mp.get_context("fork")
    credits = ctx.Semaphore(0)
    ours, theirs = ctx.Pipe(duplex=True)
    said: list[bytes] = []
    pacer = _pace.Pacer(credits, 10, ours, said.append)
    pacer.sent(0)  # a reply in the message: not counted
    pacer.wait()
    assert said == []
    pacer.sent(64)
    theirs.send_bytes(b"stop")
    pacer.wait()  # returns: the server has moved on
    assert len(said) == 1
    assert _pace.is_wait(said[0])
    assert _pace.waited_at(said[0]) == 0
    credits.release()
    pacer.wait()  # the credit comes: the reply is folded
    assert len(said) == 1
    ours.close()
    theirs.close()


def test_a_bad_budget_is_refused() -> None:
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="max_waiting_bytes"):
            ProcessTransport(_Plain, 2, num_workers=1, max_waiting_bytes=bad)  # type: ignore[arg-type]
