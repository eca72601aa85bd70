"""Models of many small arrays (a ResNet's or a transformer's state_dict).

Per-array work is what such models pay hundreds of times per reply: each
reply's layout is worked out once, a reply's shared-memory file is reserved a
step at a time rather than once per array, and the codec's per-array reading
keeps every byte and check it had.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from typing import Any

import numpy as np
import pytest
from zlib_ng.zlib_ng import crc32

import covey
from covey import FitResult
from covey.core import _codec
from covey.core._messages import Reply
from covey.core._weights import WeightsSpec
from covey.sim import _move, _shm

needs_moving = pytest.mark.skipif(
    not _move.CAN_RELEASE_OWNED or not _move.EXACT_REFCOUNTS,
    reason="pages are given back on Linux with CPython's exact reference counts only",
)


def _resnet_like(blocks: int = 60) -> dict[str, np.ndarray]:
    """Conv weights, BatchNorm's four arrays and its int64 counter per block."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for i in range(blocks):
        out[f"layer{i}.conv.weight"] = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
        for part in ("weight", "bias", "running_mean", "running_var"):
            out[f"layer{i}.bn.{part}"] = rng.standard_normal(8).astype(np.float32)
        out[f"layer{i}.bn.num_batches_tracked"] = np.array(i, dtype=np.int64)
    return out


def _unusual() -> dict[str, np.ndarray]:
    """0-d, empty, float16, bool, big-endian, strided and memory-sharing arrays."""
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    return {
        "scalar": np.array(3.5, dtype=np.float32),
        "count": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 5), np.float32),
        "half": np.linspace(-2, 2, 9, dtype=np.float16),
        "mask": np.array([True, False, True]),
        "big": np.arange(5, dtype=">i4"),
        "strided": base[:, ::2],
        "transposed": base.T,
        "same": base,
        "alias": base,
    }


def _old_encoding(weights: dict[str, np.ndarray]) -> bytes:
    """The format as its module docstring states it, written independently."""
    entries, payload, offset = [], bytearray(), 0
    for name, array in weights.items():
        little = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
        data = little.tobytes()
        entries.append([name, little.dtype.str, list(array.shape), offset, len(data)])
        payload += data
        payload += bytes(-len(payload) % 64)
        offset = len(payload)
    header = json.dumps(entries, separators=(",", ":")).encode()
    head = struct.pack(
        "<8sIIQII", _codec.MAGIC, len(header), crc32(header), len(payload), crc32(bytes(payload)), 0
    )
    start = (len(head) + len(header) + 63) // 64 * 64
    return head + header + bytes(start - len(head) - len(header)) + bytes(payload)


@pytest.mark.parametrize("weights", [_resnet_like(), _unusual()], ids=["resnet", "unusual"])
def test_the_encoding_of_many_arrays_is_the_documented_one(weights: dict[str, Any]) -> None:
    expected = _old_encoding(weights)
    assert bytes(_codec.encode(weights)) == expected
    assert _codec.Encoded(weights).tobytes() == expected
    decoded = _codec.decode(expected)
    assert list(decoded) == list(weights)
    for name, array in weights.items():
        got = decoded[name]
        assert got.shape == array.shape
        assert got.dtype == array.dtype.newbyteorder("<")
        assert np.array_equal(got, array), name
        assert not got.flags.writeable
    spec = WeightsSpec.of(weights)
    assert spec.shapes == tuple(a.shape for a in weights.values())
    assert all(type(d) is int for s in spec.shapes for d in s)
    assert spec.nbytes == sum(a.nbytes for a in weights.values())


def test_a_header_offset_that_is_a_boolean_is_corrupt() -> None:
    weights = {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)}
    blob = bytearray(_codec.encode(weights))
    (length,) = struct.unpack_from("<I", blob, 8)
    header = bytes(blob[32 : 32 + length])
    forged = header.replace(b",[2],0,8]", b",[2],false,8]", 1)
    assert forged != header
    start = (32 + len(forged) + 63) // 64 * 64
    payload = bytes(blob[(32 + length + 63) // 64 * 64 :])
    head = struct.pack(
        "<8sIIQII", _codec.MAGIC, len(forged), crc32(forged), len(payload), crc32(payload), 0
    )
    data = head + forged + bytes(start - 32 - len(forged)) + payload
    with pytest.raises(_codec.CodecError, match="lies outside the payload"):
        _codec.decode(data)


class _Pipe:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


def _count_layouts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    made: list[int] = []
    real = _codec._Plan.__init__

    def counting(self: Any, weights: Any) -> None:
        made.append(len(weights))
        real(self, weights)

    monkeypatch.setattr(_codec._Plan, "__init__", counting)
    return made


@pytest.mark.parametrize("owned", [False, True], ids=["copied", "moved"])
def test_a_workers_reply_file_is_laid_out_once(
    monkeypatch: pytest.MonkeyPatch, owned: bool
) -> None:
    # 300 arrays of 2 pages: a reply file (over the inline limit) of a many-array model.
    update = {f"w{i}": np.full(2048, float(i), np.float32) for i in range(300)}
    moving = frozenset(id(a) for a in update.values()) if owned else frozenset()
    made = _count_layouts(monkeypatch)
    pipe = _Pipe()
    reply = Reply(0, "fit", result=FitResult(weights=update, num_examples=1))
    size = _shm.send_reply(pipe, 1, reply, "covey-test-many-", None, moving)
    message = json.loads(pipe.sent[0])
    path = os.path.join(_shm.shm_dir(), message["file"])
    try:
        assert size > 0
        assert "error" not in message
        assert made == [300]
        with open(path, "rb") as f:
            data = f.read()
    finally:
        os.unlink(path)
    decoded = _codec.decode(data[: message["sizes"]["arrays"]])
    assert list(decoded) == list(update)
    assert float(decoded["w299"][0]) == 299.0


@needs_moving
def test_a_moved_reply_of_many_arrays_is_reserved_a_step_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []
    real = os.posix_fallocate

    def fallocate(fd: int, offset: int, size: int) -> None:
        calls.append((offset, size))
        real(fd, offset, size)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    source = {f"w{i}": np.full(2048, float(i), np.float32) for i in range(600)}  # 4.9 MB
    expected = {k: v.copy() for k, v in source.items()}
    owned = frozenset(id(a) for a in source.values())
    path, sizes = _move.write_moving("covey-test-many-", source, owned)
    try:
        with open(path, "rb") as f:
            data = f.read()
    finally:
        os.unlink(path)
    # Three 2 MiB steps of the payload and the header: not two calls per array.
    assert len(calls) <= 4, len(calls)
    covered = sorted(calls)
    assert covered[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(covered))
    assert covered[-1][0] + covered[-1][1] == len(data)
    decoded = _codec.decode(data[: sizes[0]])
    for name, array in expected.items():
        assert np.array_equal(decoded[name], array), name


def test_arrays_smaller_than_a_page_are_not_moved() -> None:
    # Nothing of theirs could be given back: copied as a kept result is, at no per-array cost.
    result = FitResult(
        weights={"small": np.ones(16, np.float32), "large": np.ones(1 << 16, np.float32)},
        num_examples=1,
    )
    reply = Reply(0, "fit", result=result)
    del result
    moving = _move.movable(reply)
    if not _move.CAN_RELEASE_OWNED or not _move.EXACT_REFCOUNTS:
        assert moving == frozenset()
    else:
        assert moving == frozenset({id(reply.result.weights["large"])})


NAMES = [
    "layer1.conv.weight",
    "bn.num_batches_tracked",
    'quote"inside',
    'a", "b',
    "back\\slash",
    "tab\there",
    "new\nline",
    "del\x7f",
    "accent\u00e9",
    "emoji\U0001f600",
    "nbsp\u00a0",
    "x",
    " ",
]


def test_encoded_updates_name_their_arrays_as_json_does() -> None:
    from covey.compress._plain import _array_name, encoded_to_plain
    from covey.compress._schemes import Encoded

    array = np.zeros(1, np.float32)
    parts = {name: {"codes": array, name: array} for name in NAMES}
    extras = {name: {name: array} for name in NAMES}
    plain = encoded_to_plain(Encoded("q8", parts, 1, {}, extras))
    expected = [json.dumps(["part", n, k]) for n in NAMES for k in parts[n]]
    expected += [json.dumps(["extra", n, n]) for n in NAMES]
    assert list(plain)[3:] == expected
    for key in expected:
        assert list(_array_name(key, 100)) == json.loads(key), key


@pytest.mark.parametrize(
    "key",
    [
        '["part", "a", "b", "c"]',
        '["part", "a"b", "c"]',
        '["part", "a", "b" ]',
        '["part","a","b"]',
        '["part", "a\nb", "c"]',
        '["part", "a\x7f", "c"]',
        '["other", "a", "b"]',
        '["part", "a", 1]',
        '["part", "a", "b"',
        '["extra", "", ""]',
    ],
)
def test_a_field_of_an_encoded_update_is_read_as_json_reads_it(key: str) -> None:
    from covey.compress._plain import _array_name
    from covey.core._weights import WeightsError

    try:
        parsed = json.loads(key)
    except ValueError:
        parsed = None
    valid = (
        isinstance(parsed, list)
        and len(parsed) == 3
        and parsed[0] in ("part", "extra")
        and all(isinstance(p, str) for p in parsed)
    )
    if valid:
        assert list(_array_name(key, 100)) == parsed
    else:
        with pytest.raises(WeightsError, match="unexpected field"):
            _array_name(key, 100)


class _Adds(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> FitResult:
        out = {
            k: v + np.asarray(0.25, v.dtype) if v.dtype.kind == "f" else v + 1
            for k, v in weights.items()
        }
        return FitResult(weights=out, num_examples=1 + self.cid)


def _secure(**options: Any) -> Any:
    from covey.secagg import secure

    fedavg = covey.FedAvg(fraction_fit=1.0, min_fit_clients=3, fraction_evaluate=0.0)
    with pytest.warns(UserWarning, match="honest-but-curious"):
        return secure(fedavg, **options)


def test_a_secure_update_of_many_arrays_is_quantized_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from covey.secagg import _fit_input

    calls: list[int] = []
    real = _fit_input.quantize

    def counting(values: np.ndarray, clip: float, bits: int) -> np.ndarray:
        calls.append(values.size)
        return real(values, clip, bits)

    monkeypatch.setattr(_fit_input, "quantize", counting)
    initial = _resnet_like(20)
    strategy = _secure(clip_range=2.0, bits=24)
    result = covey.simulate(_Adds, 3, 1, strategy, initial)
    size = sum(a.size for a in initial.values())
    assert calls == [size] * 3  # one per client, not one per array
    for name, array in initial.items():
        got = result.weights[name]
        if array.dtype.kind == "f":
            assert np.allclose(got, array + 0.25, atol=1e-5), name
        else:
            assert np.array_equal(got, array + 1), name


def test_a_secure_update_out_of_range_names_its_array() -> None:
    class Jumps(_Adds):
        def fit(self, weights: Any, config: Any) -> FitResult:
            out = dict(weights)
            out["layer3.bn.bias"] = weights["layer3.bn.bias"] + 5.0
            return FitResult(weights=out, num_examples=1)

    strategy = _secure(clip_range=2.0, bits=24)
    with pytest.raises(covey.FederationError) as info:
        covey.simulate(Jumps, 3, 1, strategy, _resnet_like(5))
    assert "'layer3.bn.bias'" in str(info.value)
