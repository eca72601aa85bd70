"""Inputs a mutation fuzzer of captured replies found mishandled, each refused with WireError.

Found by mutating valid replies captured from a served run (bit flips, truncation,
field swaps, rewritten codec headers with valid checksums) and feeding them to
the server's decoding of a reply.
"""

from __future__ import annotations

import contextlib
import json
import random
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from covey.core import _codec
from covey.core._messages import EvaluateResult, FitResult
from covey.core._weights import WeightsError, WeightsSpec
from covey.strategies._fold import contribution
from covey.transport.grpc import _wire
from covey.transport.grpc._frames import reply_of
from covey.transport.grpc._spill import split_blobs
from covey.transport.grpc._stream import Upload
from covey.transport.grpc.proto import covey_pb2 as pb

pytestmark = pytest.mark.timeout(60)

WEIGHTS = {"w": np.zeros(3)}


def _reply_with_extras(extras: dict[str, np.ndarray]) -> tuple[pb.ReplyHeader, Upload]:
    """A complete fit reply whose encoded extra arrays are named by the peer as ``extras``."""
    weights, flat = bytes(_codec.encode(WEIGHTS)), bytes(_codec.encode(extras))
    header = pb.ReplyHeader(
        task_id=1,
        kind="fit",
        result=_wire.dumps({"type": "fit", "form": "weights", "num_examples": 1, "metrics": {}}),
        weights_size=len(weights),
        extras_size=len(flat),
    )
    upload = Upload(len(weights), len(flat), spill=False)
    assert upload.write(weights + flat)
    assert upload.complete
    return header, upload


def test_deeply_nested_extra_name_is_a_wire_error() -> None:
    deep = "[" * 100_000 + "]" * 100_000  # json.loads raised RecursionError past every check
    header, upload = _reply_with_extras({deep: np.zeros(3)})
    with pytest.raises(_wire.WireError, match="malformed extra array name"):
        reply_of(1, "fit", header, upload, _wire.WireLimits())


@pytest.mark.parametrize(
    "names",
    [
        [json.dumps(["scaffold", "w"]), '["scaffold","w"]'],  # one name spelled twice
        ['{"scaffold": 1, "w": 2}'],  # an object, unpacked to its two keys
        ['["scaffold", "w", "x"]'],
        ['"scaffold"'],
    ],
)
def test_extra_names_not_made_by_flatten_are_refused(names: list[str]) -> None:
    weights = bytes(_codec.encode(WEIGHTS))
    flat = bytes(_codec.encode({name: np.full(3, i, float) for i, name in enumerate(names)}))
    with pytest.raises(_wire.WireError, match="extra array"):
        split_blobs(bytearray(weights + flat), len(weights), len(flat))


def test_extras_flatten_round_trip() -> None:
    extras = {"scaffold": {"w": np.ones(2), "b": np.zeros(1)}, "other": {"w": np.ones(1)}}
    back = _wire.unflatten_extras(_wire.flatten_extras(extras))
    assert {k: sorted(v) for k, v in back.items()} == {"scaffold": ["b", "w"], "other": ["w"]}


@pytest.mark.parametrize(
    ("values", "dtype"),
    [([1e308], "<f2"), ([1e40], "<f4"), ([1e400], "<f8"), ([-1e400, 0.0], "<f4")],
)
def test_array_values_beyond_their_dtype_are_refused(values: list[float], dtype: str) -> None:
    # A value beyond the dtype's range became infinity (with a RuntimeWarning), or 1e400
    # (JSON's way past float64) infinity silently: an array dumps never writes.
    data = json.dumps({"h": {"__array__": values, "dtype": dtype}}).encode()
    with pytest.raises(_wire.WireError, match="not a finite"):
        _wire.loads(data)


def test_array_values_within_their_dtype_are_kept() -> None:
    data = _wire.dumps({"h": np.array([65504.0, -1.5], np.float16)})
    assert _wire.loads(data)["h"].tolist() == [65504.0, -1.5]


@pytest.mark.parametrize(
    ("values", "dtype", "error"),
    [
        ([1.5], "<i8", "int64 cannot carry"),  # became 1
        ([0, 2.0], "<i4", "int32 cannot carry"),  # a float where dumps writes integers
        ([[1, 2], [3, 4.5]], "<u2", "uint16 cannot carry"),
        ([300], "|i1", "int8 cannot carry"),
        ([-1], "<u8", "uint64 cannot carry"),
        ([-1, 2**64 - 1], "<i8", "int64 cannot carry"),  # JSON read as float64
        ([2**70], "<i8", "int64 cannot carry"),
        ([0, 2**64 - 1, 1.5], "<u8", "uint64 cannot carry"),  # JSON read as float64
        ([0, 2**64], "<u8", "uint64 cannot carry"),
        ([1, 0], "|b1", "bool array holds a number"),  # any integer became True
        ([True, 2], "|b1", "bool array holds a number"),
        ([0.5], "|b1", "bool array holds a number"),
    ],
)
def test_array_values_not_of_their_integer_or_bool_dtype_are_refused(
    values: list[Any], dtype: str, error: str
) -> None:
    data = json.dumps({"h": {"__array__": values, "dtype": dtype}}).encode()
    with pytest.raises(_wire.WireError, match=rf"{error}.* \(at 'h'\)$"):
        _wire.loads(data)


def test_a_refused_array_is_named_by_its_path() -> None:
    bad = {"__array__": [1, 2.5], "dtype": "<i8"}
    data = json.dumps({"metrics": {"n": 1, "hist": [{"__array__": [1], "dtype": "<i8"}, bad]}})
    with pytest.raises(_wire.WireError, match=r"\(at 'metrics'\.'hist'\[1\]\)$"):
        _wire.loads(data.encode())
    data = json.dumps([{"x": {"__array__": [1e40], "dtype": "<f4"}}])
    with pytest.raises(_wire.WireError, match=r"not a finite float32 .*\(at \[0\]\.'x'\)$"):
        _wire.loads(data.encode())


@pytest.mark.parametrize(
    "array",
    [
        np.array([-(2**63), 2**63 - 1]),
        np.array([0, 2**64 - 1], np.uint64),
        np.array([[-128, 127], [0, 1]], np.int8),
        np.array([65535], np.uint16),
        np.array([True, False]),
        np.array(3, np.int32),
        np.zeros((2, 0), np.int16),
        np.zeros(0, bool),
    ],
)
def test_integer_and_bool_arrays_dumps_writes_are_kept(array: np.ndarray) -> None:
    back = _wire.loads(_wire.dumps({"a": array}))["a"]
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    assert (back == array).all()


# -- a bounded, seeded mutation fuzzer over valid replies --------------------------------------

_ODD: list[Any] = [None, True, -1, 1.5, 2**64, "", [], {}, {"__float__": "nan"}, [1, 2]]


def _valid_replies() -> list[tuple[pb.ReplyHeader, bytes]]:
    """A fit reply with extras, a fit delta, an evaluate reply and a value reply with arrays."""
    out = []
    fits = [
        FitResult(weights={"w": np.ones(3)}, num_examples=2, metrics={"acc": 0.5}, extras={}),
        FitResult(delta={"w": np.ones(3)}, num_examples=1, extras={"scaffold": {"w": np.ones(3)}}),
        EvaluateResult(loss=0.25, num_examples=3, metrics={"acc": 0.75}),
        {"masked": np.arange(4, dtype=np.int64), "n": 2},
    ]
    for result in fits:
        head, arrays = _wire.result_to_wire(result)
        extras = getattr(result, "extras", None)
        blob = bytes(_codec.encode(arrays)) if arrays is not None else b""
        more = bytes(_codec.encode(_wire.flatten_extras(extras))) if extras else b""
        header = pb.ReplyHeader(
            task_id=1, kind="fit", result=head, weights_size=len(blob), extras_size=len(more)
        )
        out.append((header, blob + more))
    return out


def _mutated(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(4)
    if op == 0 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1 and b:
        del b[rng.randrange(len(b)) :]
    elif op == 2:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif b:
        at = rng.randrange(len(b))
        b[at:at] = b[at : at + rng.randint(1, 64)]  # a stretch repeated
    return bytes(b)


def _odd_tree(rng: random.Random, tree: Any) -> Any:
    """``tree`` with one value swapped for an odd one, or a field dropped or repeated."""
    if isinstance(tree, dict) and tree:
        key = rng.choice(list(tree))
        out = dict(tree)
        roll = rng.random()
        if roll < 0.4:
            out[key] = _odd_tree(rng, tree[key])
        elif roll < 0.8:
            out[key] = rng.choice(_ODD)
        else:
            del out[key]
        return out
    if isinstance(tree, list) and tree:
        at = rng.randrange(len(tree))
        return [*tree[:at], _odd_tree(rng, tree[at]), *tree[at:]]
    return rng.choice(_ODD)


def _reframed(rng: random.Random, blob: bytes) -> bytes:
    """``blob`` (an encoding) with its header's JSON rewritten, its checksums valid again."""
    header_len = struct.unpack_from("<I", blob, 8)[0]
    header = json.loads(blob[32 : 32 + header_len])
    payload = blob[_codec._aligned(32 + header_len) :]
    text = json.dumps(_odd_tree(rng, header)).encode()
    pad = b" " * ((-len(text) - 32) % 64)
    prefix = struct.pack(
        "<8sIIQII",
        _codec.MAGIC,
        len(text) + len(pad),
        zlib.crc32(text + pad),
        len(payload),
        zlib.crc32(payload),
        0,
    )
    return prefix + text + pad + payload


def _fuzzed(rng: random.Random, header: pb.ReplyHeader, data: bytes) -> tuple[Any, bytes]:
    header = pb.ReplyHeader.FromString(header.SerializeToString())
    roll = rng.random()
    if roll < 0.3:
        header.result = _mutated(rng, header.result)
    elif roll < 0.6:
        header.result = json.dumps(_odd_tree(rng, json.loads(header.result))).encode()
    elif roll < 0.8 and header.weights_size:
        weights = _reframed(rng, data[: header.weights_size])
        data = weights + data[header.weights_size :]
        header.weights_size = len(weights)
    else:
        data = _mutated(rng, data)
    return header, data


def test_mutated_replies_are_decoded_or_refused_with_covey_errors() -> None:
    # What the server's reader refuses as a malformed reply; anything else escaped it.
    rng = random.Random(20261207)
    valid = _valid_replies()
    limits = _wire.WireLimits.for_spec(WeightsSpec.of({"w": np.zeros(3)}))
    spec = WeightsSpec.of({"w": np.zeros(3)})
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(2000):
        header, data = _fuzzed(rng, *rng.choice(valid))
        size = header.weights_size + header.extras_size
        if size != len(data):
            continue  # the server refuses a reply that sends more or less than it declares
        upload = None
        if size:
            upload = Upload(header.weights_size, header.extras_size, spill=False)
            assert upload.write(data)
        try:
            reply = reply_of(1, "fit", header, upload, limits)
        except (_codec.CodecError, _wire.WireError, ValueError, TypeError):
            outcomes["refused"] += 1
            continue
        outcomes["decoded"] += 1
        if isinstance(reply.result, FitResult):
            with contextlib.suppress(WeightsError):
                contribution(1, reply.result, spec)
    assert min(outcomes.values()) > 100, outcomes  # both ways taken, many times
