"""Chunking weights onto a stream and putting them back together, in memory and spilled."""

from __future__ import annotations

import numpy as np
import pytest

from covey import CodecError
from covey.core import encode
from covey.core._codec import Encoded
from covey.transport.grpc._stream import CHUNK_BYTES, Upload, chunks
from covey.transport.grpc._wire import flatten_extras


def _weights(seed: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "big": rng.standard_normal(size).astype(np.float32),
        "small": rng.integers(0, 9, (3, 5)),
        "scalar": np.array(2.5),
        "strided": rng.standard_normal((40, 30))[:, ::3],
        "big_endian": np.arange(7, dtype=">i4"),
    }


@pytest.mark.parametrize("size", [0, 1, 1000, CHUNK_BYTES // 4 + 17, CHUNK_BYTES])
def test_segments_equal_the_contiguous_encoding(size: int) -> None:
    weights = _weights(size, size)
    encoded = Encoded(weights)
    assert encoded.tobytes() == bytes(encode(weights))
    pieces = list(chunks(encoded))
    assert b"".join(pieces) == bytes(encode(weights))
    assert all(len(p) == CHUNK_BYTES for p in pieces[:-1])
    assert 0 < len(pieces[-1]) <= CHUNK_BYTES


@pytest.mark.parametrize("spill", [False, True])
def test_upload_reassembles_weights_and_extras(spill: bool) -> None:
    weights = _weights(1, CHUNK_BYTES // 2 + 3)
    extras: dict[str, dict[str, np.ndarray]] = {
        "control": {"w": np.arange(5.0)},
        "other": {"x": np.ones((2, 2), np.float32)},
    }
    first, second = Encoded(weights), Encoded(flatten_extras(extras))
    upload = Upload(len(first), len(second), spill=spill)
    for piece in chunks(first, second):
        assert upload.write(piece)
    assert upload.complete
    got, got_extras = upload.decode()
    assert got is not None
    assert got_extras is not None
    for name, value in weights.items():
        assert np.array_equal(got[name], value)
        assert got[name].dtype == value.dtype.newbyteorder("<")
    assert np.array_equal(got_extras["control"]["w"], extras["control"]["w"])
    assert np.array_equal(got_extras["other"]["x"], extras["other"]["x"])


@pytest.mark.parametrize("spill", [False, True])
def test_upload_detects_a_flipped_byte_and_an_overrun(spill: bool) -> None:
    blob = Encoded(_weights(2, 5000)).tobytes()
    corrupt = bytearray(blob)
    corrupt[-100] ^= 0x40
    upload = Upload(len(corrupt), 0, spill=spill)
    assert upload.write(bytes(corrupt))
    with pytest.raises(CodecError, match="checksum"):
        upload.decode()
    short = Upload(len(blob) - 1, 0, spill=spill)
    assert not short.write(blob)
    short.discard()
