"""covey.core.encode and decode: exact round trips, zero copy, and corruption always detected."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import covey
from covey.core._codec import MAGIC, encode_into, encoded_size

PREFIX = struct.Struct("<8sIIQII")
BASE_DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
]


def _le(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return dtype.newbyteorder("<")


def assert_bit_identical(decoded: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> None:
    """Same names in the same order, same shapes, same values bit for bit."""
    assert list(decoded) == list(weights)
    for name, original in weights.items():
        got = decoded[name]
        assert got.shape == original.shape, name
        assert got.dtype == _le(original.dtype), name
        # tobytes() compares the exact bits: NaN payloads, -0.0, every integer value.
        assert got.tobytes() == original.astype(_le(original.dtype)).tobytes(), name


@st.composite
def arrays_any_layout(draw: st.DrawFn) -> np.ndarray:
    base = np.dtype(draw(st.sampled_from(BASE_DTYPES)))
    dtype = base.newbyteorder(draw(st.sampled_from(["<", ">"])))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    array = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["c", "fortran", "transposed", "strided"]))
    if layout == "fortran":
        array = np.asfortranarray(array)
    elif layout == "transposed":
        array = array.T
    elif layout == "strided" and array.ndim >= 1:
        array = np.repeat(array, 2, axis=0)[::2]
    return array


weights_strategy = st.dictionaries(
    st.text(min_size=1, max_size=12), arrays_any_layout(), min_size=1, max_size=5
)


def small_weights() -> dict[str, np.ndarray]:
    return {
        "W": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "b": np.array([-1, 0, 7], dtype=np.int8),
        "flag": np.array(True),
    }


def craft(entries: object, payload: bytes, *, header: bytes | None = None) -> bytearray:
    """An encoding with a hand-written header and correct lengths and checksums."""
    head = json.dumps(entries).encode() if header is None else header
    payload_start = (PREFIX.size + len(head) + 63) // 64 * 64
    out = bytearray(payload_start + len(payload))
    PREFIX.pack_into(
        out, 0, MAGIC, len(head), zlib.crc32(head), len(payload), zlib.crc32(payload), 0
    )
    out[PREFIX.size : PREFIX.size + len(head)] = head
    out[payload_start:] = payload
    return out


# -- round trips -------------------------------------------------------------------------


@settings(max_examples=150)
@given(weights_strategy)
def test_round_trip_is_bit_identical(weights: dict[str, np.ndarray]) -> None:
    blob = covey.core.encode(weights)
    assert len(blob) == encoded_size(weights)
    assert_bit_identical(covey.core.decode(blob), weights)
    assert_bit_identical(covey.core.decode(bytes(blob)), weights)
    assert_bit_identical(covey.core.decode(memoryview(blob)), weights)


@settings(max_examples=100)
@given(weights_strategy)
def test_decoded_arrays_are_read_only_views_of_the_input(weights: dict[str, np.ndarray]) -> None:
    blob = covey.core.encode(weights)
    buffer = np.frombuffer(blob, dtype=np.uint8)
    for name, array in covey.core.decode(blob).items():
        assert not array.flags.writeable, name
        if array.size:
            assert np.shares_memory(array, buffer), f"{name} was copied"
            with pytest.raises(ValueError, match="read-only"):
                array.reshape(-1)[0] = array.reshape(-1)[0]


def test_decoded_arrays_follow_the_buffer_they_view() -> None:
    blob = covey.core.encode({"x": np.zeros(4)})
    decoded = covey.core.decode(blob, verify=False)
    payload_start = len(blob) - 64
    blob[payload_start : payload_start + 8] = np.float64(2.5).tobytes()
    assert decoded["x"][0] == 2.5  # a view, not a copy


def test_payload_is_64_byte_aligned() -> None:
    blob = covey.core.encode({"a": np.ones(3, np.int8), "b": np.ones(5), "c": np.ones(2, np.int16)})
    assert len(blob) % 64 == 0
    start = np.frombuffer(blob, np.uint8).ctypes.data
    for name, array in covey.core.decode(blob).items():
        assert (array.ctypes.data - start) % 64 == 0, name


@settings(max_examples=60)
@given(weights_strategy)
def test_encode_is_deterministic(weights: dict[str, np.ndarray]) -> None:
    blob = covey.core.encode(weights)
    assert covey.core.encode(weights) == blob
    # Equal weights in another layout or byte order encode to the same bytes.
    same = {k: np.array(v, dtype=_le(v.dtype), order="C") for k, v in weights.items()}
    assert covey.core.encode(same) == blob
    # encode_into a dirty, larger buffer writes the same bytes and reports their number.
    dirty = bytearray(b"\xaa" * (len(blob) + 100))
    assert encode_into(weights, dirty) == len(blob)
    assert dirty[: len(blob)] == blob
    assert dirty[len(blob) :] == b"\xaa" * 100


def test_equal_values_different_dtype_encode_differently() -> None:
    a = covey.core.encode({"w": np.arange(3, dtype=np.float32)})
    b = covey.core.encode({"w": np.arange(3, dtype=np.float64)})
    assert a != b
    assert covey.core.decode(b)["w"].dtype == np.float64


def test_encode_into_a_too_small_buffer_raises() -> None:
    weights = small_weights()
    size = encoded_size(weights)
    buffer = bytearray(size - 1)
    with pytest.raises(ValueError, match=f"needs {size}"):
        encode_into(weights, buffer)
    assert buffer == bytearray(size - 1)  # nothing written


def test_encode_refuses_invalid_weights() -> None:
    with pytest.raises(covey.WeightsError, match="empty"):
        covey.core.encode({})
    with pytest.raises(covey.WeightsError, match=r"'s'.*dtype"):
        covey.core.encode({"s": np.array(["text"])})
    with pytest.raises(covey.WeightsError, match="'x' must be a NumPy array"):
        covey.core.encode({"x": [1.0, 2.0]})  # type: ignore[dict-item]


# -- corruption ----------------------------------------------------------------------------


def test_every_truncation_raises_codec_error() -> None:
    blob = bytes(covey.core.encode(small_weights()))
    for n in range(len(blob)):
        with pytest.raises(covey.CodecError):
            covey.core.decode(blob[:n])


def test_trailing_bytes_are_rejected() -> None:
    blob = covey.core.encode(small_weights())
    for extra in (b"\x00", b"\x00" * 64, b"junk"):
        with pytest.raises(covey.CodecError, match="trailing"):
            covey.core.decode(bytes(blob) + extra)


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_flip_raises_codec_error(mask: int) -> None:
    blob = covey.core.encode(small_weights())
    for i in range(len(blob)):
        corrupt = bytearray(blob)
        corrupt[i] ^= mask
        with pytest.raises(covey.CodecError):
            covey.core.decode(corrupt, verify=True)


def test_header_flips_are_detected_without_payload_verification() -> None:
    blob = covey.core.encode(small_weights())
    header_len = PREFIX.unpack_from(blob, 0)[1]
    payload_start = (PREFIX.size + header_len + 63) // 64 * 64
    payload_crc = range(24, 28)
    for i in range(payload_start):
        if i in payload_crc:
            continue
        corrupt = bytearray(blob)
        corrupt[i] ^= 0x10
        with pytest.raises(covey.CodecError):
            covey.core.decode(corrupt, verify=False)
    # A payload flip is only caught by the payload checksum.
    corrupt = bytearray(blob)
    corrupt[payload_start] ^= 0x10
    covey.core.decode(corrupt, verify=False)
    with pytest.raises(covey.CodecError, match="corrupt payload"):
        covey.core.decode(corrupt)


@settings(max_examples=100)
@given(weights_strategy, st.data())
def test_random_single_byte_corruption_raises_codec_error(
    weights: dict[str, np.ndarray], data: st.DataObject
) -> None:
    blob = covey.core.encode(weights)
    i = data.draw(st.integers(0, len(blob) - 1))
    mask = data.draw(st.integers(1, 255))
    blob[i] ^= mask
    with pytest.raises(covey.CodecError):
        covey.core.decode(blob)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_raise_codec_error(data: bytes) -> None:
    with pytest.raises(covey.CodecError):
        covey.core.decode(data)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_after_the_magic_raise_codec_error(data: bytes) -> None:
    with pytest.raises(covey.CodecError):
        covey.core.decode(MAGIC + data)


def test_bad_magic_and_unknown_version() -> None:
    blob = bytes(covey.core.encode(small_weights()))
    with pytest.raises(covey.CodecError, match="bad magic"):
        covey.core.decode(b"NOTCOVEY" + blob[8:])
    with pytest.raises(covey.CodecError, match="unsupported format version"):
        covey.core.decode(MAGIC[:6] + b"\x00\x02" + blob[8:])
    with pytest.raises(covey.CodecError, match="truncated"):
        covey.core.decode(b"")


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ({"a": 1}, "expected a list"),
        ([3], "corrupt header entry"),
        ([["a", "<f8", [2], 0, 16, "extra"]], "corrupt header entry"),
        ([["a", "<f8", "ab", 0, 16]], "corrupt header entry"),
        ([["a", "<f8", None, 0, 16]], "corrupt header entry"),
        ([["a", 5, [2], 0, 16]], "corrupt header entry"),
        ([["a", "nonsense", [2], 0, 16]], "corrupt header entry"),
        ([["a", "<M8", [2], 0, 16]], "dtype"),
        ([["a", "O", [2], 0, 16]], "dtype"),
        ([["a", "|S8", [2], 0, 16]], "dtype"),
        ([["a", "<c16", [1], 0, 16]], "dtype"),
        ([["a", "<f8", [-2], 0, 16]], "shape"),
        ([[7, "<f8", [2], 0, 16]], "name"),
        ([["a", "<f8", [1], 0, 8], ["a", "<f8", [1], 8, 8]], "repeated"),
        ([["a", "<f8", [2], -8, 16]], "outside the payload"),
        ([["a", "<f8", [2], 8, 16]], "outside the payload"),
        ([["a", "<f8", [2], 0.0, 16]], "outside the payload"),
        ([["a", "<f8", [2], 0, 8]], "outside the payload"),
        ([["a", "<f8", [3], 0, 24]], "outside the payload"),
        ([["a", "<f8", [2**32, 2**32], 0, 0]], "corrupt header"),
        ([["a", "<f8", [2**70], 0, 0]], "corrupt header"),
        ([["a", "<f8", [2**32, 2**32, 0], 0, 0]], "corrupt header"),
        ([["a", "<f8", [1] * 70, 0, 8]], "corrupt header"),
    ],
)
def test_checksummed_but_invalid_headers_raise_codec_error(entries: object, match: str) -> None:
    with pytest.raises(covey.CodecError, match=match):
        covey.core.decode(craft(entries, bytes(16)))


def test_checksummed_non_json_header_raises_codec_error() -> None:
    with pytest.raises(covey.CodecError, match="corrupt header"):
        covey.core.decode(craft(None, bytes(16), header=b"\xff\xfe not json"))
    with pytest.raises(covey.CodecError, match="corrupt header"):
        covey.core.decode(craft(None, bytes(16), header=b"[[1, 2"))


def test_crafted_valid_header_decodes() -> None:
    # The helper itself is right: a well-formed crafted message decodes.
    payload = np.array([1.5, -2.0]).tobytes()
    decoded = covey.core.decode(craft([["a", "<f8", [2], 0, 16]], payload))
    assert decoded["a"].tolist() == [1.5, -2.0]


def test_oversized_header_length_is_refused_before_use() -> None:
    blob = bytearray(covey.core.encode(small_weights()))
    struct.pack_into("<I", blob, 8, 0xFFFFFFFF)
    with pytest.raises(covey.CodecError, match="header length"):
        covey.core.decode(blob)


def test_a_header_with_a_fractional_shape_is_refused() -> None:
    blob = bytes(covey.core.encode({"w": np.zeros(4)}))
    prefix = struct.Struct("<8sIIQII")
    magic, header_len, _, payload_len, payload_crc, reserved = prefix.unpack_from(blob)
    payload = blob[-payload_len:]
    header = json.loads(blob[prefix.size : prefix.size + header_len])
    header[0][2] = [4.0]  # the right size, as a float
    new_header = json.dumps(header, separators=(",", ":")).encode()
    start = (prefix.size + len(new_header) + 63) // 64 * 64
    forged = bytearray(start) + payload
    forged[prefix.size : prefix.size + len(new_header)] = new_header
    prefix.pack_into(
        forged,
        0,
        magic,
        len(new_header),
        zlib.crc32(new_header),
        payload_len,
        payload_crc,
        reserved,
    )
    with pytest.raises(covey.CodecError, match="not a list of integers"):
        covey.core.decode(forged)
