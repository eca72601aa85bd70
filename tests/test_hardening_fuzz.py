"""Fuzzing what a peer sends: codec frames, JSON messages, chunk sequences.

Every input is either decoded correctly or refused with covey's own error
(:class:`CodecError`, :class:`WireError`), and decoding it never takes more than
a fixed amount of memory, whatever sizes the input declares.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from covey.core import _codec
from covey.transport.grpc import _wire
from covey.transport.grpc._stream import Upload, chunks, split_blobs

pytestmark = pytest.mark.timeout(240)

PEAK = 16 * 1024 * 1024  # bytes any one decode may allocate, whatever the input declares
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


@contextmanager
def bounded_memory() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK, f"decoding took {peak / 2**20:.1f} MiB"


def refused_or_decoded(decode: Callable[[], Any], error: type[Exception]) -> Any:
    with bounded_memory():
        try:
            return decode()
        except error:
            return None


WEIGHTS: dict[str, Any] = {
    "w": np.arange(12, dtype=np.float32).reshape(3, 4),
    "b": np.ones(5, np.int64),
}
ENCODED = bytes(_codec.encode(WEIGHTS))

DTYPES = ["<f4", "<f8", "<i8", "|b1", "<U40000000", "|S100000000", "|O", "<M8[s]", "V8", "x"]
entry = st.tuples(
    st.text(max_size=8),
    st.sampled_from(DTYPES),
    st.lists(st.integers(-(2**62), 2**62), max_size=4),
    st.integers(-(2**40), 2**62),
    st.integers(-(2**40), 2**62),
)


def frame(header: bytes, payload: bytes) -> bytes:
    """A codec frame with valid checksums around ``header`` and ``payload``."""
    pad = b" " * ((-len(header) - 32) % 64)
    prefix = struct.pack(
        "<8sIIQII",
        _codec.MAGIC,
        len(header) + len(pad),
        zlib.crc32(header + pad),
        len(payload),
        zlib.crc32(payload),
        0,
    )
    return prefix + header + pad + payload


@FUZZ
@given(st.binary(max_size=4096))
def test_codec_random_bytes(data: bytes) -> None:
    refused_or_decoded(lambda: _codec.decode(data), _codec.CodecError)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(ENCODED) - 1), st.integers(0, 255)), max_size=8))
def test_codec_mutated_frames(flips: list[tuple[int, int]]) -> None:
    data = bytearray(ENCODED)
    for at, value in flips:
        data[at] = value
    out = refused_or_decoded(lambda: _codec.decode(bytes(data)), _codec.CodecError)
    if out is not None and not flips:
        assert all(np.array_equal(out[k], WEIGHTS[k]) for k in WEIGHTS)


@FUZZ
@given(st.lists(entry, max_size=4), st.binary(max_size=256))
def test_codec_hostile_headers_with_valid_checksums(entries: list[Any], payload: bytes) -> None:
    data = frame(json.dumps(entries).encode(), payload)
    out = refused_or_decoded(lambda: _codec.decode(data), _codec.CodecError)
    if out is not None:
        for array in out.values():
            assert array.dtype.kind in "biuf"
            assert array.nbytes <= len(payload)


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
hostile_json = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
        st.fixed_dictionaries({"__array__": st.lists(inner, max_size=4), "dtype": st.text()}),
        st.fixed_dictionaries({"__array__": inner, "dtype": st.sampled_from(DTYPES)}),
        st.fixed_dictionaries({"__bytes__": inner}),
        st.fixed_dictionaries({"__float__": inner}),
    ),
    max_leaves=30,
)


@FUZZ
@given(hostile_json)
def test_wire_hostile_json(tree: Any) -> None:
    data = json.dumps(tree).encode()
    out = refused_or_decoded(lambda: _wire.loads(data), _wire.WireError)
    _no_unsafe_arrays(out)
    refused_or_decoded(lambda: _wire.result_from_wire(data, None), _wire.WireError)


@FUZZ
@given(st.binary(max_size=2048))
def test_wire_random_bytes(data: bytes) -> None:
    refused_or_decoded(lambda: _wire.loads(data), _wire.WireError)


def _no_unsafe_arrays(value: Any) -> None:
    if isinstance(value, np.ndarray):
        assert value.dtype.kind in "biuf"
    elif isinstance(value, dict):
        for v in value.values():
            _no_unsafe_arrays(v)
    elif isinstance(value, list):
        for v in value:
            _no_unsafe_arrays(v)


EXTRAS: dict[str, dict[str, Any]] = {"scaffold": {"w": np.full((3, 4), 0.5, np.float32)}}
BLOBS = (_codec.Encoded(WEIGHTS), _codec.Encoded(_wire.flatten_extras(EXTRAS)))
STREAM = b"".join(chunks(*BLOBS))


@FUZZ
@given(
    st.lists(st.integers(1, 700), min_size=1, max_size=40),
    st.lists(st.tuples(st.integers(0, len(STREAM) - 1), st.integers(0, 255)), max_size=3),
    st.integers(-64, 64),
)
def test_chunk_reassembly(cuts: list[int], flips: list[tuple[int, int]], extra: int) -> None:
    data = bytearray(STREAM)
    for at, value in flips:
        data[at] = value
    if extra < 0:
        data = data[:extra]
    else:
        data += bytes(extra)
    sizes = (len(BLOBS[0]), len(BLOBS[1]))
    with bounded_memory():
        upload = Upload(*sizes, spill=False)
        pieces = _pieces(bytes(data), cuts)
        accepted = all(upload.write(piece) for piece in pieces)
        if not accepted or not upload.complete:
            upload.discard()
            assert extra != 0
            return
        try:
            weights, extras = upload.decode()
        except (_codec.CodecError, _wire.WireError):
            assert flips
            return
    if bytes(data) == STREAM:
        assert weights is not None
        assert extras is not None
        assert all(np.array_equal(weights[k], WEIGHTS[k]) for k in WEIGHTS)
        assert np.array_equal(extras["scaffold"]["w"], EXTRAS["scaffold"]["w"])


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    out, at, i = [], 0, 0
    while at < len(data):
        size = cuts[i % len(cuts)]
        out.append(data[at : at + size])
        at += size
        i += 1
    return out


@FUZZ
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=512))
def test_split_blobs_with_declared_sizes(weights_size: int, extras_size: int, data: bytes) -> None:
    refused_or_decoded(
        lambda: split_blobs(bytearray(data), weights_size, extras_size),
        (_codec.CodecError, _wire.WireError),  # type: ignore[arg-type]
    )
