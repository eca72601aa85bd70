r"""Weights <-> bytes: a small header, then the raw array buffers.

Layout (all integers little-endian)::

    offset 0   8 bytes   magic b"COVEYW\x00\x01" (format version 1)
    offset 8   u32       header length H (bytes of JSON)
    offset 12  u32       CRC-32 of the header
    offset 16  u64       payload length P
    offset 24  u32       CRC-32 of the payload
    offset 28  u32       reserved (0)
    offset 32  H bytes   UTF-8 JSON: [[name, dtype, shape, offset, nbytes], ...]
    ...        padding to a multiple of 64
    payload    P bytes   each array's C-order buffer, 64-byte aligned

Decoding makes no copy: arrays are read-only ``np.frombuffer`` views of the
input buffer. Every length is checked before it is used and both CRCs are
verified, so a truncated or corrupt message gives a :class:`CodecError`.
The checksums are zlib's CRC-32, computed by zlib-ng (the same values, several
times faster: a model's bytes are checksummed at both ends of every transfer).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from zlib_ng.zlib_ng import crc32

from covey.core._weights import Array, Weights, WeightsSpec

MAGIC = b"COVEYW\x00\x01"
_PREFIX = struct.Struct("<8sIIQII")
_ALIGN = 64
MAX_HEADER_BYTES = 64 * 1024 * 1024
#: Bytes of an array :func:`encode_into` copies at a time when the caller gives pages back.
STEP = 2 * 1024 * 1024


class CodecError(ValueError):
    """Bytes that are not a valid encoding of weights (truncated, corrupt, unknown)."""


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


#: The header's little-endian dtype string of each dtype met (a model has a few).
_LITTLE: dict[np.dtype[Any], str] = {}


class _Plan:
    """Where each array goes in the encoding; computed once per weights."""

    __slots__ = ("arrays", "header", "payload_len", "payload_start", "total")

    def __init__(self, weights: Weights, spec: WeightsSpec | None = None) -> None:
        if spec is None:
            spec = WeightsSpec.of(weights)
        entries: list[list[Any]] = []
        arrays: list[tuple[Array, int]] = []
        offset = 0
        little = _LITTLE
        for name, shape, dtype in zip(spec.names, spec.shapes, spec.dtypes, strict=True):
            array = weights[name]
            nbytes = array.nbytes
            text = little.get(dtype)
            if text is None:
                text = little[dtype] = dtype.newbyteorder("<").str
            entries.append([name, text, shape, offset, nbytes])
            arrays.append((array, offset))
            offset = (offset + nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
        self.header = json.dumps(entries, separators=(",", ":")).encode()
        self.payload_start = _aligned(_PREFIX.size + len(self.header))
        self.payload_len = offset
        self.total = self.payload_start + offset
        self.arrays = arrays


def encoded_size(weights: Weights, spec: WeightsSpec | None = None) -> int:
    """Number of bytes :func:`encode` produces for ``weights``.

    ``spec`` is ``WeightsSpec.of(weights)`` if the caller has it (None: worked out here).
    """
    return _Plan(weights, spec).total


def encoded_size_at_most(weights: Weights) -> int:
    r"""An upper bound of :func:`encoded_size` for weights ``WeightsSpec.of`` accepts.

    Without laying the header out: per array, its name's JSON takes at most 12
    characters per character (a ``\uXXXX`` escape per UTF-16 unit) and the
    quotes, its dtype 16 with the quotes, its shape 21 per dimension and the
    brackets, its offset and size 20 digits each; its entry 6 more (brackets and
    commas) and a comma after it; its buffer the padding to 64 bytes at most.
    """
    total = _PREFIX.size + 2 + _ALIGN - 1
    for name, array in weights.items():
        total += 12 * len(name) + 21 * array.ndim + array.nbytes + 67 + _ALIGN - 1
    return total


def layout(weights: Weights) -> _Plan:
    """Where :func:`encode_into` puts each array of ``weights``; ``.total`` is the size.

    For a caller that needs the size first and then encodes the same, unchanged
    weights (``encode_into(weights, buffer, plan=...)``): the layout is worked out once.
    """
    return _Plan(weights)


def encode_into(
    weights: Weights,
    buffer: memoryview | bytearray | Any,
    *,
    claim: Callable[[int, int], None] | None = None,
    copied: Callable[[Array, int, int], None] | None = None,
    plan: _Plan | None = None,
) -> int:
    """Encode ``weights`` into ``buffer`` (at least :func:`encoded_size` bytes).

    Lets a sender write straight into shared memory or a preallocated frame.
    Every byte of the encoding is written once (the padding as zeros), so a
    buffer written over gives the same bytes as a new one.

    Args:
        weights: The arrays to encode.
        buffer: Where to write them.
        claim: Called with ``(start, stop)`` before bytes ``start:stop`` of
            ``buffer`` are written (to allocate a file's space as it fills).
        copied: With it, each array is copied in steps of :data:`STEP` bytes and
            ``copied(array, start, stop)`` called once bytes ``start:stop`` of an
            array (C-contiguous, native byte order, the caller's own) are in
            ``buffer``: the caller may give those source bytes' pages back.
        plan: :func:`layout` of these same weights, unchanged since (None: worked out here).

    Returns:
        The number of bytes written.
    """
    if plan is None:
        plan = _Plan(weights)
    out = memoryview(buffer).cast("B")
    if len(out) < plan.total:
        raise ValueError(f"buffer holds {len(out)} bytes, encoding needs {plan.total}")
    base = plan.payload_start
    payload = out[base : plan.total]
    dest = np.frombuffer(payload, dtype=np.uint8)
    _write_arrays(plan, dest, base, claim, copied)
    if claim is not None:
        claim(0, base)
    header_end = _PREFIX.size + len(plan.header)
    out[_PREFIX.size : header_end] = plan.header
    out[header_end:base] = bytes(base - header_end)
    _PREFIX.pack_into(
        out,
        0,
        MAGIC,
        len(plan.header),
        crc32(plan.header),
        plan.payload_len,
        crc32(payload),
        0,
    )
    return plan.total


def _write_arrays(
    plan: _Plan,
    dest: np.ndarray,
    base: int,
    claim: Callable[[int, int], None] | None,
    copied: Callable[[Array, int, int], None] | None,
) -> None:
    """The payload of :func:`encode_into`: each array at its offset, the padding zeroed."""
    if claim is None and copied is None:
        _copy_arrays(plan, dest)
        return
    for array, offset in plan.arrays:
        src = np.ascontiguousarray(array)
        if src.dtype.byteorder == ">":
            src = src.astype(src.dtype.newbyteorder("<"))
        flat = src.reshape(-1).view(np.uint8)
        size = src.nbytes
        step = STEP if copied is not None else max(size, 1)
        for start in range(0, size, step):
            stop = min(size, start + step)
            if claim is not None:
                claim(base + offset + start, base + offset + stop)
            dest[offset + start : offset + stop] = flat[start:stop]
            if copied is not None and src is array:
                copied(array, start, stop)
        end = _aligned(offset + size)
        if end > offset + size:  # padding is deterministic: equal weights give equal bytes
            if claim is not None:
                claim(base + offset + size, base + end)
            dest[offset + size : end] = 0


def _copy_arrays(plan: _Plan, dest: np.ndarray) -> None:
    """:func:`_write_arrays` in one assignment per array (and its padding's).

    Each array is assigned to a little-endian view of its place: strided or
    big-endian, it is copied (and swapped) there, with no copy of its own.
    """
    for array, offset in plan.arrays:
        size = array.nbytes
        if size:
            dtype = array.dtype
            if dtype.byteorder == ">":
                dtype = dtype.newbyteorder("<")
            dest[offset : offset + size].view(dtype).reshape(array.shape)[...] = array
        end = (offset + size + _ALIGN - 1) // _ALIGN * _ALIGN
        if end > offset + size:  # padding is deterministic: equal weights give equal bytes
            dest[offset + size : end] = 0


def reseal(buffer: memoryview | bytearray) -> None:
    """Compute again the payload checksum of an encoding whose arrays were written in place.

    Args:
        buffer: An encoding made by :func:`encode_into`, exactly its length.
    """
    out = memoryview(buffer).cast("B")
    magic, header_len, header_crc, payload_len, _, reserved = _PREFIX.unpack_from(out, 0)
    start = _aligned(_PREFIX.size + header_len)
    crc = crc32(out[start : start + payload_len])
    _PREFIX.pack_into(out, 0, magic, header_len, header_crc, payload_len, crc, reserved)


def _little_endian_bytes(array: Array) -> memoryview:
    src = np.ascontiguousarray(array)
    if src.dtype.byteorder == ">":
        src = src.astype(src.dtype.newbyteorder("<"))
    flat: Any = src.reshape(-1).view(np.uint8)
    return memoryview(flat)


class Encoded:
    """An encoding of weights as a list of segments that view the arrays, not copies.

    The bytes are those :func:`encode` would produce, in order; a sender streams
    the segments (e.g. in chunks) without ever building one contiguous buffer,
    so encoding a model costs no model-sized copy.

    Attributes:
        segments: The pieces, in order: the prefix and header, then each array's
            bytes and its padding.
        nbytes: Their total length.
    """

    __slots__ = ("nbytes", "segments")

    def __init__(self, weights: Weights) -> None:
        plan = _Plan(weights)
        payload: list[memoryview | bytes] = []
        crc = 0
        position = 0
        for array, offset in plan.arrays:
            if offset > position:
                pad = bytes(offset - position)
                payload.append(pad)
                crc = crc32(pad, crc)
            data = _little_endian_bytes(array)
            payload.append(data)
            crc = crc32(data, crc)
            position = offset + len(data)
        if plan.payload_len > position:
            pad = bytes(plan.payload_len - position)
            payload.append(pad)
            crc = crc32(pad, crc)
        head = bytearray(plan.payload_start)
        head[_PREFIX.size : _PREFIX.size + len(plan.header)] = plan.header
        _PREFIX.pack_into(
            head, 0, MAGIC, len(plan.header), crc32(plan.header), plan.payload_len, crc, 0
        )
        self.segments: list[memoryview | bytes] = [bytes(head), *payload]
        self.nbytes = plan.total

    def __len__(self) -> int:
        return self.nbytes

    def tobytes(self) -> bytes:
        """The whole encoding as one bytes object (a copy)."""
        return b"".join(self.segments)


class StreamCheck:
    """Verifies the payload checksum of one encoding while its bytes stream past.

    A receiver that writes incoming chunks straight to disk feeds each chunk to
    :meth:`update` and, at the end, decodes with ``verify=False`` if :meth:`ok`:
    the payload is checked without reading it back.
    """

    __slots__ = ("_crc", "_end", "_expected", "_head", "_pos", "_start")

    def __init__(self) -> None:
        self._head = bytearray()
        self._start: int | None = None
        self._end = 0
        self._expected = 0
        self._crc = 0
        self._pos = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Account for the next bytes of the encoding."""
        view = memoryview(data).cast("B")
        if self._start is None:
            self._head += view[: max(0, _PREFIX.size - len(self._head))]
            if len(self._head) >= _PREFIX.size:
                _, header_len, _, payload_len, payload_crc, _ = _PREFIX.unpack_from(self._head, 0)
                self._start = _aligned(_PREFIX.size + header_len)
                self._end = self._start + payload_len
                self._expected = payload_crc
        if self._start is not None:
            lo = max(self._pos, self._start)
            hi = min(self._pos + len(view), self._end)
            if hi > lo:
                self._crc = crc32(view[lo - self._pos : hi - self._pos], self._crc)
        self._pos += len(view)

    def ok(self) -> bool:
        """Whether the whole payload went past and its checksum matched."""
        return self._start is not None and self._pos >= self._end and self._crc == self._expected


def encode(weights: Weights) -> bytearray:
    """Encode ``weights`` to bytes.

    Args:
        weights: The arrays to encode; :func:`decode` gives them back.

    Returns:
        A new buffer of :func:`encoded_size` bytes.

    Example:
        >>> import numpy as np
        >>> blob = encode({"w": np.arange(3.0)})
        >>> decode(blob)["w"].tolist()
        [0.0, 1.0, 2.0]
    """
    buffer = bytearray(encoded_size(weights))
    encode_into(weights, buffer)
    return buffer


def decode(data: bytes | bytearray | memoryview, *, verify: bool = True) -> dict[str, Array]:
    """Decode bytes made by :func:`encode` into read-only arrays, without copying.

    Args:
        data: The encoded bytes; arrays keep a reference to this buffer.
        verify: Check the payload CRC (the header CRC is always checked).

    Returns:
        Names mapped to read-only arrays that view ``data``.

    Raises:
        CodecError: if the bytes are truncated, corrupt or not an encoding.
    """
    view = memoryview(data).cast("B")
    if len(view) < _PREFIX.size:
        raise CodecError(
            f"truncated: {len(view)} bytes is shorter than the {_PREFIX.size}-byte prefix"
        )
    magic, header_len, header_crc, payload_len, payload_crc, reserved = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        if magic[:6] == MAGIC[:6]:
            raise CodecError(f"unsupported format version {magic[6:]!r}")
        raise CodecError("not covey-encoded weights (bad magic bytes)")
    if reserved != 0:
        raise CodecError(f"corrupt prefix: reserved field is {reserved}, expected 0")
    if header_len > MAX_HEADER_BYTES:
        raise CodecError(f"header length {header_len} exceeds the limit of {MAX_HEADER_BYTES}")
    header_end = _PREFIX.size + header_len
    payload_start = _aligned(header_end)
    if len(view) < payload_start + payload_len:
        raise CodecError(
            f"truncated: expected {payload_start + payload_len} bytes, got {len(view)}"
        )
    if len(view) > payload_start + payload_len:
        raise CodecError(
            f"{len(view) - payload_start - payload_len} unexpected trailing bytes after the payload"
        )
    header = view[_PREFIX.size : header_end]
    if crc32(header) != header_crc:
        raise CodecError("corrupt header (checksum mismatch)")
    if any(view[header_end:payload_start]):
        raise CodecError("corrupt header padding (non-zero bytes)")
    payload = view[payload_start : payload_start + payload_len]
    if verify and crc32(payload) != payload_crc:
        raise CodecError("corrupt payload (checksum mismatch)")
    try:
        entries = json.loads(bytes(header))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CodecError(f"corrupt header: {type(exc).__name__}: {exc}") from None
    return _arrays(entries, payload)


def _brief(value: object, limit: int = 200) -> str:
    """``repr(value)`` (an exception's message) for an error, cut to ``limit`` characters.

    What a peer wrote in a header is quoted, not copied whole: an error goes to
    logs and to the run's failures, and a name can be megabytes long.
    """
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _dtype(text: object) -> np.dtype[Any]:
    """``np.dtype(text)``, from :data:`_DTYPES` for a string seen before (a model's few)."""
    dtype = _DTYPES.get(text) if type(text) is str else None
    if dtype is None:
        dtype = np.dtype(text)  # type: ignore[call-overload]
        if type(text) is str and len(_DTYPES) < 64:
            _DTYPES[text] = dtype
    return dtype


#: Dtypes by the header strings read so far (bounded: a peer's strings are its own).
_DTYPES: dict[str, np.dtype[Any]] = {}


def _arrays(entries: object, payload: memoryview) -> dict[str, Array]:
    if not isinstance(entries, list):
        raise CodecError("corrupt header: expected a list of arrays")
    out: dict[str, Array] = {}
    # One read-only byte array over the payload; each array is a view of its slice
    # (cheaper than a new buffer export per array for a model of hundreds).
    whole = np.frombuffer(payload, dtype=np.uint8)
    if whole.flags.writeable:
        whole.flags.writeable = False
    for entry in entries:
        try:
            name, dtype_str, shape, offset, nbytes = entry
            dtype = _dtype(dtype_str)
            if not isinstance(shape, list) or not set(map(type, shape)) <= _INT:
                raise TypeError(f"shape {shape!r} is not a list of integers")
            shape = tuple(shape)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"corrupt header entry {_brief(entry)}: {_brief(exc)}") from None
        if not isinstance(name, str) or name in out:
            raise CodecError(f"corrupt header: bad or repeated array name {_brief(name)}")
        if dtype.kind not in "biuf" or (shape and min(shape) < 0):
            raise CodecError(
                f"corrupt header: array {_brief(name)} has dtype {dtype} shape {_brief(shape)}"
            )
        count = math.prod(shape)  # exact: a huge shape must not wrap around
        if (
            type(offset) is not int
            or type(nbytes) is not int
            or nbytes != count * dtype.itemsize
            or offset < 0
            or offset + nbytes > len(payload)
        ):
            raise CodecError(f"corrupt header: array {_brief(name)} lies outside the payload")
        try:
            out[name] = whole[offset : offset + nbytes].view(dtype).reshape(shape)
        except ValueError as exc:  # e.g. too many dimensions for NumPy
            raise CodecError(f"corrupt header: array {_brief(name)}: {_brief(exc)}") from None
    return out


_INT = {int}
