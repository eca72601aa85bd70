"""The process backend lets a client that trains in place train in its reply's file.

A ``writes_weights`` client's fit gets writable views of a reply file that
already holds the broadcast weights; returning those views sends the file
without a second copy. Any other result takes the usual path (a copy into a
new reply file), with the same bits as the inline backend either way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.core import Task, _codec
from covey.core._weights import freeze
from covey.sim import ProcessTransport, _room, _shm

MODEL = 200_003  # float32 entries: 800 kB, a reply that travels in a file, not inline


def mine() -> list[str]:
    """Shared-memory files of pools owned by this process."""
    prefix = f"covey-{os.getpid()}-"
    return [name for name in os.listdir(_shm.shm_dir()) if name.startswith(prefix)]


def _initial() -> dict[str, np.ndarray]:
    return {"w": np.linspace(-1, 1, MODEL, dtype=np.float32), "b": np.zeros((3, 5))}


class InPlace(covey.Client):
    """Adds seeded noise into the weights it is given, in chunks, and returns them.

    Odd clients return the result as a delta (the noise alone, written over the
    weights); every third client also sends extras, which the room cannot carry.
    """

    writes_weights = True

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        w, b = weights["w"], weights["b"]
        if not (w.flags.writeable and b.flags.writeable):
            raise AssertionError("an in-place client was given read-only weights")
        rng = np.random.default_rng([self.cid, config["round"]])
        for start in range(0, MODEL, 65_536):
            chunk = rng.standard_normal(min(65_536, MODEL - start), dtype=np.float32)
            if self.cid % 2:
                w[start : start + chunk.size] = chunk
            else:
                w[start : start + chunk.size] += chunk
        b += self.cid
        if self.cid % 2:
            return FitResult(delta={"w": w, "b": b}, num_examples=3 + self.cid)
        extras = {"seen": {"w": w * 0.5, "b": b}} if self.cid % 3 == 0 else {}
        return FitResult(weights={"w": w, "b": b}, num_examples=3 + self.cid, extras=extras)


class Copying(InPlace):
    """The same numbers, returned in new arrays: the reply is copied into a file as before."""

    def fit(self, weights: Any, config: Any) -> FitResult:
        result = super().fit(weights, config)
        arrays = result.weights if result.weights is not None else result.delta
        assert arrays is not None
        new = {"w": arrays["w"].copy(), "b": arrays["b"].reshape(15).reshape(3, 5).copy()}
        if result.weights is not None:
            return FitResult(weights=new, num_examples=result.num_examples)
        return FitResult(delta=new, num_examples=result.num_examples)


class Plain(covey.Client):
    """The same numbers from a client that does not write into its weights."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        return InPlace(self.cid).fit({k: v.copy() for k, v in weights.items()}, config)


def _run(client: type[covey.Client], backend: str) -> Any:
    return covey.simulate(
        client,
        6,
        3,
        covey.FedAvg(fraction_evaluate=0.0),
        _initial(),
        backend=backend,  # type: ignore[arg-type]
        num_workers=2,
    )


def test_in_place_clients_give_the_inline_bits(shm_files: list[str]) -> None:
    expected = _run(Plain, "inline")
    assert not np.array_equal(expected.weights["w"], _initial()["w"])
    for client, backend in [(InPlace, "inline"), (InPlace, "process"), (Copying, "process")]:
        got = _run(client, backend)
        for name in expected.weights:
            assert got.weights[name].dtype == expected.weights[name].dtype
            assert got.weights[name].tobytes() == expected.weights[name].tobytes(), (client, name)
        assert got.history[3].fit_participants == list(range(6))


def _count_reply_writes(monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
    """Log each reply file the workers write with ``write_file`` (a copy of a result)."""
    real = _shm.write_file

    def write_file(prefix: str, parts: list[Any], plans: Any = None) -> Any:
        if "-r" in os.path.basename(prefix):  # a worker's reply, not the broadcast
            with log.open("a") as out:
                out.write(f"{os.getpid()}\n")
        return real(prefix, parts, plans)

    monkeypatch.setattr(_shm, "write_file", write_file)


@pytest.mark.parametrize("client", [InPlace, Copying])
def test_a_client_returning_its_room_sends_it_without_a_second_copy(
    shm_files: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, client: type[InPlace]
) -> None:
    log = tmp_path / "writes"
    log.touch()
    _count_reply_writes(monkeypatch, log)  # forked workers run the patched writer
    with ProcessTransport(client, 4, num_workers=2, start_method="fork") as transport:
        weights = freeze(_initial())
        tasks = {cid: Task("fit", 1, {}, weights) for cid in range(4)}
        replies = sorted(transport.exchange(tasks), key=lambda r: r.cid)
    assert [r.cid for r in replies] == [0, 1, 2, 3]
    assert all(r.ok for r in replies), [r.error for r in replies]
    copies = len(log.read_text().split())
    if client is InPlace:
        # Client 0 sends extras, which its room cannot carry: its reply alone is copied.
        assert copies == 1
    else:
        assert copies == 4
    for reply in replies:
        arrays = reply.result.weights or reply.result.delta
        assert not arrays["w"].flags.writeable  # the server's view, read-only as ever
        assert float(arrays["b"][0, 0]) == reply.cid


class Raising(InPlace):
    """Writes half its update into its weights, then fails."""

    def fit(self, weights: Any, config: Any) -> FitResult:
        weights["w"][: MODEL // 2] += 1.0
        if self.cid == 1:
            raise RuntimeError("boom mid-fit")
        return super().fit(weights, config)


def test_a_client_raising_mid_fit_leaves_no_file(shm_files: list[str]) -> None:
    with ProcessTransport(Raising, 2, num_workers=1) as transport:
        weights = freeze(_initial())
        for rnd in (1, 2):
            replies = {
                r.cid: r
                for r in transport.exchange({cid: Task("fit", rnd, {}, weights) for cid in (0, 1)})
            }
            assert replies[0].ok, replies[0].error
            assert "boom mid-fit" in (replies[1].error or "")
            del replies
            # The failed client's room went before its reply was sent: only the broadcast is left.
            assert len(mine()) == 1
    assert mine() == []


class Dying(InPlace):
    """Writes into its weights, then its worker exits without a word."""

    def fit(self, weights: Any, config: Any) -> FitResult:
        weights["w"][:10] = 5.0
        if self.cid == 1:
            os._exit(3)
        return super().fit(weights, config)


def test_a_worker_dying_mid_fit_leaves_no_file(shm_files: list[str]) -> None:
    with ProcessTransport(Dying, 2, num_workers=1) as transport:
        weights = freeze(_initial())
        tasks = {cid: Task("fit", 1, {}, weights) for cid in (0, 1)}
        replies = {r.cid: r for r in transport.exchange(tasks)}
        assert replies[0].ok, replies[0].error
        assert "worker process died (exit code 3)" in (replies[1].error or "")
        del replies
        assert len(mine()) == 1  # the dead worker's room was swept with its other files


def test_a_sealed_room_is_a_valid_encoding_with_its_checksum(tmp_path: Path) -> None:
    weights = freeze(_initial())
    room = _room.for_task(InPlace(0), Task("fit", 1, {}, weights), f"covey-{os.getpid()}-0-r0-")
    assert room is not None
    try:
        assert room.holds(room.weights)
        assert not room.holds({k: v.copy() for k, v in room.weights.items()})
        assert not room.holds({"b": room.weights["b"], "w": room.weights["w"]})  # name order
        assert not room.holds({"w": room.weights["w"], "b": room.weights["b"].reshape(15)})
        room.weights["w"] += 2.0
        path = room.seal()
        with open(path, "rb") as f:
            data = f.read()
        decoded = _codec.decode(data[: room.size], verify=True)
        np.testing.assert_array_equal(decoded["w"], weights["w"] + 2.0)
        room.release()
        assert os.path.exists(path)  # sent: the server unlinks it
    finally:
        os.unlink(room.path)
    small = {"w": np.zeros(10, np.float32)}
    assert _room.for_task(InPlace(0), Task("fit", 1, {}, small), "covey-x-") is None
    assert _room.for_task(Plain(0), Task("fit", 1, {}, weights), "covey-x-") is None
    assert _room.for_task(InPlace(0), Task("evaluate", 1, {}, weights), "covey-x-") is None
