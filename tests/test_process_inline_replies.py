"""Small replies of the process backend travel in the worker's message, large ones in files.

A shared-memory file per reply (made, reserved, mapped, unlinked) costs more
than copying a small model: below ``INLINE_BYTES`` the encoded arrays follow
the reply's JSON in the message. Both forms are checked as strictly: a message
that lies about its arrays is refused naming what is wrong.
"""

from __future__ import annotations

import json
import os
import struct
from multiprocessing import Pipe
from typing import Any, Literal

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.core._messages import Reply
from covey.sim import _shm
from covey.transport.grpc._wire import WireError


def _sent(reply: Reply, prefix: str) -> bytes:
    ours, theirs = Pipe()
    try:
        _shm.send_reply(theirs, 7, reply, prefix)
        return ours.recv_bytes()
    finally:
        ours.close()
        theirs.close()


def _files(prefix: str) -> list[str]:
    return [name for name in os.listdir(_shm.shm_dir()) if name.startswith(prefix)]


@pytest.fixture
def prefix() -> Any:
    name = f"covey-{os.getpid()}-abc-r"
    yield name
    for leftover in _files(name):
        os.unlink(os.path.join(_shm.shm_dir(), leftover))


def _fit(elements: int) -> Reply:
    w = np.arange(elements, dtype=np.float32)
    extras = {"seen": {"w": w * 2}}
    return Reply(3, "fit", result=FitResult(weights={"w": w}, num_examples=5, extras=extras))


def test_a_small_reply_travels_in_its_message_and_comes_back_equal(prefix: str) -> None:
    data = _sent(_fit(1000), prefix)
    assert data[:1] == b"\x01"
    assert not _files(prefix)  # no file was made for it
    seq, message, blob = _shm.parse_reply(data)
    assert seq == 7
    assert blob is not None
    reply = _shm.build_reply(message, prefix, blob)
    assert reply.ok
    w = reply.result.weights["w"]
    assert w.tobytes() == np.arange(1000, dtype=np.float32).tobytes()
    assert w.ctypes.data % 64 == 0  # aligned as in a file
    assert not w.flags.writeable
    assert reply.result.extras["seen"]["w"].tobytes() == (w * 2).tobytes()


def test_a_large_reply_still_goes_through_a_file(prefix: str) -> None:
    data = _sent(_fit(_shm.INLINE_BYTES // 4), prefix)  # twice the limit with its extras
    _, message, blob = _shm.parse_reply(data)
    assert blob is None
    assert "file" in message
    reply = _shm.build_reply(message, prefix, blob)
    assert reply.result.weights["w"].shape == (_shm.INLINE_BYTES // 4,)
    assert not _files(prefix)  # unlinked once mapped


def _inline(message: dict[str, Any], blob: bytes) -> bytes:
    text = json.dumps(message).encode()
    return b"\x01" + struct.pack(">I", len(text)) + text + blob


def test_an_inline_reply_that_lies_is_refused_naming_what_is_wrong(prefix: str) -> None:
    good = _sent(_fit(100), prefix)
    _, message, blob = _shm.parse_reply(good)
    assert blob is not None
    with pytest.raises(WireError, match="truncated"):
        _shm.parse_reply(b"\x01\x00")
    with pytest.raises(WireError, match="announces 999 bytes of JSON"):
        _shm.parse_reply(b"\x01" + struct.pack(">I", 999) + b"{}")
    short = _shm.parse_reply(_inline(dict(message), bytes(blob)[:-64]))
    with pytest.raises(WireError, match=r"carries .* bytes of arrays, not the"):
        _shm.build_reply(short[1], prefix, short[2])
    both = dict(message, file=f"{prefix}x")
    with pytest.raises(WireError, match="both inline and in a file"):
        _shm.parse_reply(_inline(both, bytes(blob)))
    no_sizes = dict(message)
    del no_sizes["sizes"]
    parsed = _shm.parse_reply(_inline(no_sizes, bytes(blob)))
    with pytest.raises(WireError, match="no valid part sizes"):
        _shm.build_reply(parsed[1], prefix, parsed[2])
    flipped = bytearray(blob)
    flipped[-1] ^= 0xFF
    parsed = _shm.parse_reply(_inline(dict(message), bytes(flipped)))
    with pytest.raises(covey.CodecError, match="checksum"):
        _shm.build_reply(parsed[1], prefix, parsed[2])


class Plus(covey.Client):
    def fit(self, weights: Any, config: Any) -> FitResult:
        return FitResult(weights={k: v + 1.5 for k, v in weights.items()}, num_examples=2)


def test_small_and_large_models_are_bit_identical_to_inline() -> None:
    backends: tuple[Literal["inline"], Literal["process"]] = ("inline", "process")
    for elements in (10, _shm.INLINE_BYTES // 4 + 1):
        initial: dict[str, np.ndarray] = {
            "w": np.linspace(-1, 1, elements, dtype=np.float32),
            "b": np.ones(3),
        }
        out = [
            covey.simulate(
                lambda cid: Plus(),
                5,
                2,
                covey.FedAvg(fraction_evaluate=0.0),
                initial,
                backend=backend,
                num_workers=2,
            ).weights
            for backend in backends
        ]
        for name in initial:
            assert out[0][name].tobytes() == out[1][name].tobytes(), (elements, name)
