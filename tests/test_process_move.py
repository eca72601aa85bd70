"""A worker moves a reply nothing else holds into shared memory, giving each copied page back.

``covey.sim._move``: the arrays of a plain ``FitResult`` that only the reply can
reach are copied into the reply's file a step at a time, and each step's pages
are given back to the system. The file's bytes are those ``write_file`` gives;
a client that keeps its result (the array, the dict, or the ``FitResult``)
keeps it whole, and every run gives the inline backend's bits.
"""

from __future__ import annotations

import errno
import os
import signal
import types
import weakref
from typing import Any

import numpy as np
import pytest

import covey
from covey import EvaluateResult, FitResult
from covey.core import _codec
from covey.sim import _move, _shm, _worker

MODEL = 1_000_003  # float32 entries: 4 MB, two steps of a copy, an odd size
CONN: Any = types.SimpleNamespace(context=None)  # what _run_one needs of its pipe

needs_moving = pytest.mark.skipif(
    not _move.CAN_RELEASE_OWNED or not _move.EXACT_REFCOUNTS,
    reason="pages are given back on Linux with CPython's exact reference counts only",
)


def _weights() -> dict[str, np.ndarray]:
    w = np.linspace(-1, 1, MODEL, dtype=np.float32)
    w.flags.writeable = False  # as the broadcast a worker maps
    return {"w": w}


class New(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        return FitResult(weights={"w": weights["w"] + 1}, num_examples=1)


class NewDelta(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        return FitResult(delta={"w": np.ones_like(weights["w"])}, num_examples=1)


class KeepsArray(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        self.kept = weights["w"] + 1
        return FitResult(weights={"w": self.kept}, num_examples=1)


class KeepsDict(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        self.kept = {"w": weights["w"] + 1}
        return FitResult(weights=self.kept, num_examples=1)


class KeepsResult(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        self.kept = FitResult(weights={"w": weights["w"] + 1}, num_examples=1)
        return self.kept


class ReturnsView(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        return FitResult(weights={"w": (weights["w"] + 1)[:]}, num_examples=1)


class SameArrayTwice(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        new = weights["w"] + 1
        return FitResult(weights={"w": new, "v": new}, num_examples=1)


class WeaklyKept(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        new = weights["w"] + 1
        self.kept = weakref.ref(new)
        return FitResult(weights={"w": new}, num_examples=1)


class WithExtras(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        new = {"w": weights["w"] + 1}
        return FitResult(weights=new, num_examples=1, extras={"e": {"w": new["w"] * 2}})


class Evaluates(covey.Client):
    def evaluate(self, weights: Any, config: Any) -> EvaluateResult:
        return EvaluateResult(loss=0.5, num_examples=1)


def _moving(client: type[covey.Client], kind: str = "fit") -> int:
    """How many arrays of ``client``'s reply a worker's batch would move (as ``_run_batch``)."""
    clients: dict[int, Any] = {}  # the worker keeps its clients, and what they hold
    reply, room = _worker._run_one(
        CONN, (0, kind, 1, "{}", None), _weights(), None, clients, lambda cid: client(), "x-"
    )
    assert room is None
    assert reply.error is None, reply.error
    moving = _move.movable(reply)
    return len(moving)


@needs_moving
def test_only_arrays_nothing_but_the_reply_holds_are_moved() -> None:
    assert _moving(New) == 1
    assert _moving(NewDelta) == 1
    # A client that keeps its result, at any level, keeps it whole: copied as before.
    kept = (KeepsArray, KeepsDict, KeepsResult, ReturnsView, SameArrayTwice, WeaklyKept)
    for client in (*kept, WithExtras):
        assert _moving(client) == 0, client.__name__
    assert _moving(Evaluates, "evaluate") == 0


def _mixed() -> dict[str, np.ndarray]:
    """Arrays of every kind the codec takes: odd sizes, empty, ints, strided, big-endian."""
    rng = np.random.default_rng(7)
    return {
        "a": rng.standard_normal(MODEL, dtype=np.float32),
        "b": np.arange(3 * 1_048_579, dtype=np.int16).reshape(3, -1),
        "c": np.zeros(0, np.float64),
        "d": rng.standard_normal((700, 900))[:, ::3],  # not contiguous: copied, kept
        "e": rng.standard_normal(300_001).astype(">f8"),  # big-endian: swapped, kept
        "f": np.full((), 2.5),  # 0-d
    }


@needs_moving
def test_a_moved_reply_has_a_copied_ones_bytes_and_its_copied_pages_are_given_back() -> None:
    expected = _mixed()
    path, sizes = _shm.write_file("covey-test-move-", [expected])
    try:
        with open(path, "rb") as f:
            copied = f.read()
    finally:
        os.unlink(path)
    source = {k: v.copy() for k, v in expected.items()}
    source["d"] = np.array(expected["d"].base)[:, ::3]  # strided again: encoded from a copy
    owned = frozenset(id(source[k]) for k in ("a", "b", "c", "d", "e"))
    path, moved_sizes = _move.write_moving("covey-test-move-", source, owned)
    try:
        with open(path, "rb") as f:
            moved = f.read()
    finally:
        os.unlink(path)
    assert moved_sizes == sizes
    assert moved == copied
    (decoded,) = [_codec.decode(memoryview(moved)[: sizes[0]])]
    for name, array in expected.items():
        assert np.array_equal(decoded[name], array), name
    page = os.sysconf("SC_PAGE_SIZE")
    for name in ("a", "b"):  # given back: every page wholly inside reads 0 now
        raw = source[name].reshape(-1).view(np.uint8)
        inner = raw[page : raw.size - page]
        assert inner.size > 0
        assert not inner.any(), name
    # Not the caller's to give back (a copy was encoded, or not owned): untouched.
    for name in ("d", "e", "f"):
        assert np.array_equal(source[name], expected[name]), name


@needs_moving
def test_no_room_halfway_is_an_error_and_leaves_no_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def fallocate(fd: int, offset: int, size: int) -> None:
        calls.append(offset)
        if len(calls) == 2:  # the first step went in, its pages given back
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    before = set(os.listdir(_shm.shm_dir()))
    source = {"w": np.ones(MODEL, np.float32)}
    with pytest.raises(OSError, match=r"no room for 3\.8 MB of shared memory"):
        _move.write_moving("covey-test-move-", source, frozenset({id(source["w"])}))
    # Another test's run may make files of its own meanwhile: only this prefix counts.
    made = set(os.listdir(_shm.shm_dir())) - before
    assert {name for name in made if name.startswith("covey-test-move-")} == set()
    assert calls[1] > 0


class Stateful(covey.Client):
    """Trains from its own last result: a client whose result is its state."""

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.last: np.ndarray | None = None

    def fit(self, weights: Any, config: Any) -> FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        base = weights["w"] if self.last is None else (weights["w"] + self.last) / 2
        self.last = base + rng.standard_normal(MODEL, dtype=np.float32)
        return FitResult(weights={"w": self.last}, num_examples=1 + self.cid)


class Fresh(covey.Client):
    """Returns a new array nothing else holds: its reply is moved."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        out = rng.standard_normal(MODEL, dtype=np.float32)
        out += weights["w"]
        return FitResult(weights={"w": out}, num_examples=1 + self.cid)


@pytest.mark.parametrize("client", [Stateful, Fresh])
def test_process_runs_give_the_inline_bits(shm_files: list[str], client: type) -> None:
    def run(backend: str) -> Any:
        return covey.simulate(
            client,
            5,
            3,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.linspace(-1, 1, MODEL, dtype=np.float32)},
            backend=backend,  # type: ignore[arg-type]
            num_workers=2,
        )

    expected, got = run("inline"), run("process")
    assert got.weights["w"].tobytes() == expected.weights["w"].tobytes()
    assert got.history[3].fit_participants == list(range(5))


def _die_while_moving(real: Any) -> Any:
    """``release_owned`` that, in the worker of client 3's round-2 reply, dies after one step."""

    def release(array: np.ndarray, start: int, stop: int) -> None:
        real(array, start, stop)
        if start == 0 and float(array[-1]) == -3.0:  # the last entry is past the given-back pages
            os.kill(os.getpid(), signal.SIGKILL)

    return release


class MarkedFresh(Fresh):
    def fit(self, weights: Any, config: Any) -> FitResult:
        result = super().fit(weights, config)
        if self.cid == 3 and config["round"] == 2:
            result.weights["w"][-1] = -3.0  # type: ignore[index]
        return result


@needs_moving
def test_no_file_is_left_by_a_worker_killed_while_moving_a_reply(
    shm_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_move, "release_owned", _die_while_moving(_move.release_owned))
    result = covey.simulate(
        MarkedFresh,
        6,
        3,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.linspace(-1, 1, MODEL, dtype=np.float32)},
        backend="process",
        num_workers=2,
        start_method="fork",  # the workers run the patched function
    )
    failures = result.history[2].fit_failures
    assert [f.cid for f in failures][:1] == [3]
    assert failures[0].error == "worker process died (exit code -9) running this client"
    assert result.history[3].fit_participants == list(range(6))
    # shm_files checks at teardown that no file of this process is left.
