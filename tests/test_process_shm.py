"""The process backend's shared memory: replies without pickle, and no file left on any path."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import time
from multiprocessing.connection import Connection
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.core import RoundRecord, Task
from covey.core._weights import freeze
from covey.sim import ProcessTransport, _shm

MODEL = 1_000_003  # float32 entries: 4 MB, an odd size so arrays are not 64-byte multiples


def mine() -> list[str]:
    """Shared-memory files of pools owned by this process."""
    prefix = f"covey-{os.getpid()}-"
    return [name for name in os.listdir(_shm.shm_dir()) if name.startswith(prefix)]


class Big(covey.Client):
    """Returns weights or a delta (alternating), with extras, from a seeded generator."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        noise = rng.standard_normal(MODEL, dtype=np.float32)
        step: dict[str, np.ndarray] = {"w": noise, "b": rng.standard_normal((3, 5))}
        extras = {"seen": {"w": noise * 0.5, "b": step["b"]}} if self.cid % 3 == 0 else {}
        if self.cid % 2:
            return FitResult(delta=step, num_examples=3 + self.cid, metrics={"m": 0.5})
        new = {k: weights[k] + v for k, v in step.items()}
        return FitResult(weights=new, num_examples=3 + self.cid, extras=extras)


def _big_initial() -> dict[str, np.ndarray]:
    return {"w": np.linspace(-1, 1, MODEL, dtype=np.float32), "b": np.zeros((3, 5))}


def test_a_large_model_is_bit_identical_to_inline(shm_files: list[str]) -> None:
    def run(backend: str) -> Any:
        return covey.simulate(
            Big,
            7,
            3,
            covey.FedAvg(fraction_evaluate=0.0),
            _big_initial(),
            backend=backend,  # type: ignore[arg-type]
            num_workers=2,
        )

    inline, process = run("inline"), run("process")
    assert shm_files
    for name in inline.weights:
        assert process.weights[name].dtype == inline.weights[name].dtype
        assert process.weights[name].tobytes() == inline.weights[name].tobytes(), name
        assert process.weights[name].flags.writeable  # the result is the caller's own copy
    assert process.history[3].fit_participants == list(range(7))
    assert not np.array_equal(process.weights["w"], _big_initial()["w"])


def test_replies_are_views_of_unlinked_shared_memory_and_never_unpickled(
    shm_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with ProcessTransport(Big, 4, num_workers=2) as transport:
        # The workers exist: from now on this process may not unpickle anything they send.
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a reply was unpickled")

        monkeypatch.setattr(pickle, "loads", refuse)
        monkeypatch.setattr(Connection, "recv", refuse)
        weights = freeze(_big_initial())
        heap = weights["w"]
        replies = list(transport.exchange({cid: Task("fit", 1, {}, weights) for cid in range(4)}))
        assert sorted(r.cid for r in replies) == [0, 1, 2, 3]
        # The caller's read-only model now views the broadcast file: one copy, shared.
        assert weights["w"] is not heap
        assert np.array_equal(weights["w"], heap)
        assert not weights["w"].flags.writeable
        for reply in replies:
            assert reply.ok, reply.error
            arrays = reply.result.weights or reply.result.delta
            assert not arrays["w"].flags.writeable
            assert arrays["w"].shape == (MODEL,)
        extras = next(r for r in replies if r.cid == 0).result.extras
        assert extras["seen"]["w"].shape == (MODEL,)
        # Every reply file was unlinked as it was mapped: only the broadcast remains.
        assert len(mine()) == 1


def _kill_while_writing(real: Any) -> Any:
    """A ``write_file`` that, in the worker of client 3, dies by SIGKILL halfway through."""

    def write_file(prefix: str, parts: list[Any], plans: Any = None) -> Any:
        path, sizes = real(prefix, parts, plans)
        if "-r" in os.path.basename(path) and parts[0]["b"][0, 0] == -3.0:
            os.kill(os.getpid(), signal.SIGKILL)  # the file is on disk, its message unsent
        return path, sizes

    return write_file


class Marked(covey.Client):
    """Client 3 marks its reply so the patched writer knows when to die.

    It keeps its result (as a client keeping state would): the worker copies it
    into the reply's file with ``write_file`` rather than moving it there
    (``covey.sim._move``, see ``test_process_move.py``).
    """

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.last: dict[str, np.ndarray] = {}

    def fit(self, weights: Any, config: Any) -> FitResult:
        b = np.full((3, 5), float(self.cid))
        if self.cid == 3 and config["round"] == 2:
            b[0, 0] = -3.0
        self.last = {"w": weights["w"] + 1, "b": b}
        return FitResult(weights=self.last, num_examples=1)


def test_no_file_is_left_by_a_worker_killed_while_writing_a_reply(
    shm_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_shm, "write_file", _kill_while_writing(_shm.write_file))
    result = covey.simulate(
        Marked,
        6,
        3,
        covey.FedAvg(fraction_evaluate=0.0),
        _big_initial(),
        backend="process",
        num_workers=2,
        start_method="fork",  # the workers run the patched writer
    )
    failures = result.history[2].fit_failures
    assert [f.cid for f in failures] == [3, 5]
    assert failures[0].error == "worker process died (exit code -9) running this client"
    assert result.history[3].fit_participants == list(range(6))
    # shm_files checks at teardown that no file of this process is left.


def _interrupt_mid_exchange() -> None:
    with ProcessTransport(Big, 6, num_workers=2) as transport:
        weights = freeze(_big_initial())
        for _ in transport.exchange({cid: Task("fit", 1, {}, weights) for cid in range(6)}):
            raise KeyboardInterrupt  # the other replies are still being written


@pytest.mark.parametrize("where", ["mid-exchange", "after a round"])
def test_no_file_is_left_after_a_keyboard_interrupt(shm_files: list[str], where: str) -> None:
    if where == "mid-exchange":
        with pytest.raises(KeyboardInterrupt):
            _interrupt_mid_exchange()
    else:

        def interrupt(record: RoundRecord) -> None:
            if record.round == 1:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            covey.simulate(
                Big,
                4,
                3,
                covey.FedAvg(fraction_evaluate=0.0),
                _big_initial(),
                backend="process",
                num_workers=2,
                on_round=interrupt,
            )
    assert mine() == []


def test_no_file_is_left_after_a_normal_run_or_an_exception(shm_files: list[str]) -> None:
    class Failing(Big):
        def fit(self, weights: Any, config: Any) -> FitResult:
            if config["round"] == 2:
                raise RuntimeError("boom")
            return super().fit(weights, config)

    covey.simulate(
        Big, 4, 2, covey.FedAvg(fraction_evaluate=0.0), _big_initial(), backend="process"
    )
    assert mine() == []
    with pytest.raises(covey.FederationError, match="boom"):
        covey.simulate(
            Failing, 4, 3, covey.FedAvg(fraction_evaluate=0.0), _big_initial(), backend="process"
        )
    assert mine() == []


def test_files_of_a_pool_whose_process_is_gone_are_swept(shm_files: list[str]) -> None:
    gone = subprocess.Popen(["true"])  # a process that exits at once
    gone.wait()
    dead = gone.pid
    orphan = os.path.join(_shm.shm_dir(), f"covey-{dead}-0123abcd-r1-x")
    with open(orphan, "wb") as f:
        f.write(b"left by a killed run")
    with ProcessTransport(Big, 1, num_workers=1):
        assert not os.path.exists(orphan)


@pytest.mark.parametrize(
    "scheme", ["q4", "bfloat16", covey.compress.TopK(0.1), covey.compress.Identity()]
)
def test_compressed_updates_cross_the_processes_bit_identically(
    shm_files: list[str], scheme: Any
) -> None:
    """A compressed fit (scheme spec in the task, parts in the reply file) needs no pickle."""

    def run(backend: str) -> Any:
        return covey.simulate(
            Big,
            5,
            2,
            covey.FedAvg(fraction_evaluate=0.0),
            _big_initial(),
            backend=backend,  # type: ignore[arg-type]
            num_workers=2,
            compression=scheme,
        )

    inline, process = run("inline"), run("process")
    assert process.history[2].fit_participants == list(range(5))
    for name in inline.weights:
        assert process.weights[name].tobytes() == inline.weights[name].tobytes(), name
    assert process.history[2].bytes_received == inline.history[2].bytes_received > 0


def test_a_scheme_the_workers_cannot_rebuild_is_refused_before_the_run(
    shm_files: list[str],
) -> None:
    class Halve(covey.compress.Identity):
        """A scheme of the user's own: the workers know only covey's."""

    scheme: Any = Halve()

    # It used to be each client's error in every round ("cannot send the task").
    with pytest.raises(
        ValueError, match="compression Halve is a scheme of your own: it runs on backend='inline'"
    ):
        covey.simulate(
            Big,
            2,
            1,
            covey.FedAvg(fraction_evaluate=0.0),
            _big_initial(),
            backend="process",
            num_workers=2,
            compression=scheme,
        )


class Slow(Big):
    """Client 1 never answers its round-1 task: its worker is stopped at the deadline."""

    def fit(self, weights: Any, config: Any) -> FitResult:
        if self.cid == 1 and config["round"] == 1:
            time.sleep(3600)
        return super().fit(weights, config)


def test_a_late_reply_is_dropped_and_its_file_removed(
    shm_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.sim import _process

    # The exchange's clock: its deadline passes once client 0 has answered, however
    # long a loaded machine takes to run client 0's first fit.
    clock = [0.0]
    monkeypatch.setattr(_process, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    with ProcessTransport(Slow, 2, num_workers=2) as transport:
        weights = freeze(_big_initial())
        first = []
        tasks = {0: Task("fit", 1, {}, weights), 1: Task("fit", 1, {}, weights)}
        for reply in transport.exchange(tasks, timeout=60):
            first.append(reply)
            clock[0] += 3600
        # Client 1 missed the deadline: its worker, still busy, is stopped (its reply and
        # file never come) and the next exchange replaces it.
        assert [(r.cid, r.ok) for r in first] == [(0, True), (1, False)]
        assert "no reply in time" in (first[1].error or "")
        second = list(transport.exchange({1: Task("fit", 2, {}, weights)}))
        assert [(r.cid, r.ok) for r in second] == [(1, True)]
        assert len(mine()) == 1  # the broadcast only


class Sized(covey.Client):
    """Reports a size, and steps the model by a seeded amount."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def properties(self) -> dict[str, Any]:
        return {"size": 1 + self.cid % 3}

    def fit(self, weights: Any, config: Any) -> FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        return FitResult(delta={"w": rng.normal(size=4) * config["lr"]}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=float(weights["w"].sum()), num_examples=1)


def test_asking_properties_between_two_exchanges_of_one_model_keeps_its_file(
    shm_files: list[str],
) -> None:
    # Round 1's evaluation wrote the model's file; round 2 asked its new clients for
    # their properties (a task without weights), which unlinked that file, and then
    # sent the same model to train: the worker that had not mapped it failed its
    # clients with FileNotFoundError.
    def run(backend: str) -> Any:
        strategy = covey.FedAvg(
            fraction_fit=0.25,
            fraction_evaluate=0.025,
            min_evaluate_clients=1,
            accept_failures=False,
            on_client_fit_config=lambda r, c: {"lr": (c.properties or {}).get("size", 0)},
        )
        return covey.simulate(
            Sized,
            40,
            3,
            strategy,
            {"w": np.zeros(4)},
            backend=backend,  # type: ignore[arg-type]
            num_workers=2,
        )

    inline, process = run("inline"), run("process")
    assert process.weights["w"].tobytes() == inline.weights["w"].tobytes()
    assert [r.fit_participants for r in process.history.rounds] == [
        r.fit_participants for r in inline.history.rounds
    ]
