"""Shared-memory files of the process backend: the broadcast, and replies without pickle.

Every file is named ``covey-<pid>-<token>-...`` after the process that owns the
pool, so the pool can remove everything it or its workers made (at close, when a
worker dies, and, for files of processes that no longer exist, when a new pool
starts). A worker's reply is a small JSON message over its pipe, as on the
network (:mod:`covey.transport.grpc._wire`); the arrays it carries are written
with the codec into a file of their own, which the parent maps, unlinks at once
and hands on as read-only views: the pages go back to the system as soon as the
round loop has folded the reply and dropped it. Arrays that encode to at most
:data:`INLINE_BYTES` travel in the message itself, after the JSON: for them a
file (made, reserved, mapped, unlinked) costs more than the copy. Nothing is
unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import re
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np

from covey.compress._task import KIND as COMPRESSED_FIT
from covey.core import _codec
from covey.core._messages import Reply
from covey.core._weights import Array, Weights
from covey.sim._logs import Output
from covey.sim._sendable import LIMITS as _LIMITS
from covey.sim._sendable import MAX_MESSAGE_BYTES
from covey.transport.grpc import _wire

if TYPE_CHECKING:
    from covey.sim._room import Room

POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux
_NAME = re.compile(r"covey-(\d+)-[0-9a-f]+-[A-Za-z0-9_.-]+")
#: Most bytes of encoded arrays a reply carries in its message rather than in a file.
INLINE_BYTES = 256 * 1024
_INLINE = b"\x01"  # first byte of a message with arrays after its JSON (JSON starts with "{")
_JSON_LEN = struct.Struct(">I")


def shm_dir() -> str:
    """The shared-memory file system (``/dev/shm``), or the temporary directory without one."""
    path = "/dev/shm"  # noqa: S108 - the shared-memory file system; each file gets a random name
    if os.path.isdir(path) and os.access(path, os.W_OK):
        return path
    return tempfile.gettempdir()


def aligned(n: int) -> int:
    return (n + 63) // 64 * 64


def reserve(fd: int, size: int, path: str, *, offset: int = 0, whole: int = 0) -> None:
    """Allocate the file's pages now, so that a full file system is an error, not a crash.

    Writing through a mapping into a shared-memory file system with no room
    left kills the process with SIGBUS (Docker gives ``/dev/shm`` 64 MB).
    ``offset``: reserve bytes ``offset`` to ``offset + size`` only, of a file of
    ``whole`` bytes filled a part at a time.

    Raises:
        OSError: There is no room for ``size`` bytes (the message says where and what to do).
    """
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, offset, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EFBIG):
            return  # no fallocate on this file system: the mapping is written as before
        folder = os.path.dirname(path)
        raise OSError(
            exc.errno,
            f"no room for {max(size, whole) / 2**20:.1f} MB of shared memory in {folder}: the "
            "process backend keeps the model and each reply there; free space, enlarge it "
            "(docker run --shm-size=...), or use backend='inline'",
        ) from None


def write_file(prefix: str, parts: list[Weights], plans: Any = None) -> tuple[str, list[int]]:
    """Encode ``parts`` one after another into a new shared-memory file.

    ``plans``: each part's :func:`covey.core._codec.layout`, if the caller has them.

    Returns:
        The file's path and each part's encoded size (each part starts 64-byte aligned).
    """
    if plans is None:
        plans = [_codec.layout(part) for part in parts]
    sizes = [plan.total for plan in plans]
    total = sum(aligned(s) for s in sizes)
    # Faulting every page in at once is cheaper than one fault per page while encoding.
    with (
        new_file(prefix, total) as (fd, path),
        mmap.mmap(fd, total, flags=mmap.MAP_SHARED | POPULATE) as mm,
    ):
        _encode_parts(parts, sizes, mm, plans)
    return path, sizes


@contextlib.contextmanager
def new_file(prefix: str, size: int, *, reserved: bool = True) -> Iterator[tuple[int, str]]:
    """A new shared-memory file of ``size`` bytes, its space reserved: ``(descriptor, path)``.

    The descriptor is closed on leaving the block; the file is removed if the block
    (or the reservation) raises. ``reserved=False``: the caller reserves each part
    before it writes it (see :func:`reserve`).
    """
    fd, path = tempfile.mkstemp(prefix=prefix, dir=shm_dir())
    try:
        os.ftruncate(fd, size)
        if reserved:
            reserve(fd, size, path)
        yield fd, path
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(fd)


def map_file(
    path: str, sizes: list[int], *, unlink: bool, on_free: Callable[[], None] | None = None
) -> list[dict[str, Array]]:
    """Map a file made by :func:`write_file` read-only and decode its parts without copying.

    Args:
        path: The file.
        sizes: Each part's encoded size, as :func:`write_file` returned them.
        unlink: Remove the file once mapped: its pages live as long as the arrays do.
        on_free: Called once the mapping is freed (no array views it any more).

    Returns:
        Each part as read-only arrays that view the mapping.

    Raises:
        covey.core.CodecError: if the sizes do not match the file or a part is corrupt.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    finally:
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(path)
    try:
        size = os.fstat(fd).st_size
        total = sum(aligned(s) for s in sizes)
        if any(s < 1 for s in sizes) or total != size:
            raise _codec.CodecError(f"parts of {sizes} bytes do not fit a file of {size} bytes")
        flags = mmap.MAP_SHARED | (POPULATE if unlink else 0)  # a reply is read in full
        mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    if on_free is not None:
        weakref.finalize(mm, on_free)
    view = memoryview(mm)
    out = []
    offset = 0
    for s in sizes:
        # Our own worker wrote it: the header's checksum is checked, the payload's is not.
        out.append(_codec.decode(view[offset : offset + s], verify=False))
        offset += aligned(s)
    return out


def sweep(prefix: str) -> None:
    """Remove every file in the shared-memory directory whose name starts with ``prefix``."""
    directory = shm_dir()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


def sweep_orphans() -> None:
    """Remove the files of pools whose owning process no longer exists (e.g. it was killed)."""
    directory = shm_dir()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            match = _NAME.fullmatch(name)
            if match is None or _alive(int(match.group(1))):
                continue
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


# -- replies -------------------------------------------------------------------------------


def send_reply(
    conn: Output,
    seq: int,
    reply: Reply,
    prefix: str,
    room: Room | None = None,
    moving: frozenset[int] = frozenset(),
) -> int:
    """Send ``reply`` as JSON, its arrays after it in the message or in a file ``prefix...``.

    ``room``: the file the client trained in (see :mod:`covey.sim._room`); a
    result of exactly its arrays is sent as that file, without a copy.
    ``moving``: the ids of the result's arrays whose pages may be given back as
    they are copied into the file (see :mod:`covey.sim._move`).

    Returns:
        The size of the file sent, 0 if none (the arrays travelled in the message).
    """
    message: dict[str, Any] = {"seq": seq, "cid": reply.cid, "kind": reply.kind}
    path: str | None = None
    file_size = 0
    blob = bytearray()
    try:
        if reply.error is None:
            text, arrays = _wire.result_to_wire(reply.result, _LIMITS)
            extras = getattr(reply.result, "extras", None) or {}
            parts = {"arrays": arrays, "extras": _wire.flatten_extras(extras) if extras else None}
            present = [part for part in parts.values() if part]
            if room is not None and not extras and room.holds(arrays):
                path = room.seal()
                message["file"] = os.path.basename(path)
                message["sizes"] = {"arrays": room.size, "extras": 0}
            elif present:
                if room is not None:  # another result: the room goes before the copy is made
                    room.release()
                plans = [_codec.layout(part) for part in present]
                sizes = [plan.total for plan in plans]
                total = sum(aligned(size) for size in sizes)
                if total <= INLINE_BYTES:
                    blob = bytearray(total)
                    _encode_parts(present, sizes, blob, plans)
                elif moving and len(present) == 1:
                    from covey.sim._move import write_moving

                    path, sizes = write_moving(prefix, present[0], moving, plans[0])
                    message["file"] = os.path.basename(path)
                else:
                    path, sizes = write_file(prefix, present, plans)
                    message["file"] = os.path.basename(path)
                it = iter(sizes)
                message["sizes"] = {k: next(it) if part else 0 for k, part in parts.items()}
            message["result"] = text.decode()
        else:
            message["error"] = reply.error
        data = json.dumps(message, separators=(",", ":")).encode()
        if blob:
            data = b"".join((_INLINE, _JSON_LEN.pack(len(data)), data, blob))
        if path is not None:
            file_size = sum(aligned(part) for part in message["sizes"].values() if part)
    except Exception as exc:  # noqa: BLE001 - an unsendable result is the client's error
        file_size = 0
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        error = f"cannot send the result to the server process: {type(exc).__name__}: {exc}"
        data = json.dumps(
            {"seq": seq, "cid": reply.cid, "kind": reply.kind, "error": error}
        ).encode()
    if room is not None and not room.sent:  # gone before the server hears of the reply
        room.release()
    conn.send_bytes(data)
    return file_size


def _encode_parts(parts: list[Weights], sizes: list[int], out: Any, plans: Any = None) -> None:
    """Encode ``parts`` one after another into ``out``, each starting 64-byte aligned.

    ``plans``: each part's :func:`covey.core._codec.layout`, if the caller has them.
    """
    view = memoryview(out)
    offset = 0
    try:
        for i, (part, size) in enumerate(zip(parts, sizes, strict=True)):
            plan = None if plans is None else plans[i]
            _codec.encode_into(part, view[offset : offset + size], plan=plan)
            offset += aligned(size)
    finally:
        view.release()


def parse_reply(data: bytes) -> tuple[int, Mapping[str, Any], memoryview | None]:
    """The sequence number, fields and inline arrays of a worker's message.

    Raises:
        covey.WireError: the message is malformed.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise _wire.WireError(f"a reply of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    blob: memoryview | None = None
    text: bytes | memoryview = data
    if data[:1] == _INLINE:
        if len(data) < 1 + _JSON_LEN.size:
            raise _wire.WireError("a worker's reply is truncated")
        (size,) = _JSON_LEN.unpack_from(data, 1)
        start = 1 + _JSON_LEN.size
        if size > len(data) - start:
            raise _wire.WireError(f"a worker's reply announces {size} bytes of JSON it lacks")
        view = memoryview(data)
        text, blob = view[start : start + size], view[start + size :]
    try:
        message = json.loads(bytes(text))
    except (ValueError, RecursionError) as exc:
        raise _wire.WireError(f"malformed reply from a worker: {exc}") from None
    if not isinstance(message, dict):
        raise _wire.WireError("a worker's reply is not a JSON object")
    seq, cid, kind = message.get("seq"), message.get("cid"), message.get("kind")
    if type(seq) is not int or type(cid) is not int or not isinstance(kind, str):
        raise _wire.WireError("a worker's reply lacks seq, cid or kind")
    if blob is not None and "file" in message:
        raise _wire.WireError("a worker's reply carries its arrays both inline and in a file")
    return seq, message, blob


def reply_file(message: Mapping[str, Any], prefix: str) -> str | None:
    """The path of the file a reply names, if it names one this worker may have written."""
    name = message.get("file")
    if name is None:
        return None
    if not isinstance(name, str) or not name.startswith(prefix) or "/" in name:
        raise _wire.WireError(f"a worker named a file it does not own: {name!r:.80}")
    return os.path.join(shm_dir(), name)


def _part_sizes(message: Mapping[str, Any]) -> dict[str, int]:
    sizes = message.get("sizes")
    if (
        not isinstance(sizes, dict)
        or sorted(sizes) != ["arrays", "extras"]
        or any(type(s) is not int or s < 0 for s in sizes.values())
    ):
        raise _wire.WireError("a worker's reply gives no valid part sizes for its arrays")
    return sizes


def _inline_parts(blob: memoryview, sizes: list[int]) -> list[dict[str, Array]]:
    """Decode parts that followed a reply's JSON, from a 64-byte aligned copy (it is small)."""
    total = sum(aligned(s) for s in sizes)
    if any(s < 1 for s in sizes) or total != len(blob):
        raise _wire.WireError(
            f"a worker's reply carries {len(blob)} bytes of arrays, not the {total} it announces"
        )
    room = np.empty(total + 64, dtype=np.uint8)
    start = -room.ctypes.data % 64
    copy = room[start : start + total]
    copy[:] = np.frombuffer(blob, dtype=np.uint8)
    view = memoryview(copy.data).toreadonly()
    out, offset = [], 0
    for size in sizes:
        out.append(_codec.decode(view[offset : offset + size]))
        offset += aligned(size)
    return out


def build_reply(
    message: Mapping[str, Any],
    prefix: str,
    blob: memoryview | None = None,
    on_free: Callable[[], None] | None = None,
) -> Reply:
    """The :class:`Reply` of a parsed message.

    Its arrays view the mapped (and unlinked) file, or a copy of ``blob``, the
    arrays that came in the message itself. ``on_free`` is called once the
    file's mapping is freed.
    """
    cid, kind = message["cid"], message["kind"]
    path = reply_file(message, prefix)
    # No file, or none for the arrays: a result with no arrays at all (say, a fit result
    # of weights={}), which the round loop then refuses naming the model's missing names.
    arrays: dict[str, Array] = {}
    extras: dict[str, dict[str, Any]] | None = None
    if path is not None or blob is not None:
        try:
            sizes = _part_sizes(message)
        except _wire.WireError:
            if path is not None:
                os.unlink(path)
            raise
        present = [sizes[k] for k in ("arrays", "extras") if sizes[k]]
        if blob is not None:
            parts = iter(_inline_parts(blob, present))
        else:
            parts = iter(map_file(str(path), present, unlink=True, on_free=on_free))
        arrays = next(parts) if sizes["arrays"] else {}
        extras = _wire.unflatten_extras(next(parts)) if sizes["extras"] else None
    error = message.get("error")
    if error is not None:
        return Reply(cid, kind, error=str(error))
    text = message.get("result")
    if not isinstance(text, str):
        raise _wire.WireError("a worker's reply has neither a result nor an error")
    result = _wire.result_from_wire(text.encode(), arrays, extras, _LIMITS)
    return Reply(cid, kind, result=result)


# -- tasks ---------------------------------------------------------------------------------

#: One task as it travels: cid, kind, round, config JSON, payload JSON (None: the broadcast's
#: extras are the payload).
TaskItem = tuple[int, str, int, str, str | None]


def broadcast_extras(kind: str, payload: Any) -> Any:
    """The model-shaped arrays a fit task's payload carries: they travel in the broadcast file."""
    if kind in ("fit", COMPRESSED_FIT) and _wire.is_extras(payload):
        return payload
    return None


def send_tasks(
    conn: Connection, seq: int, path: str | None, sizes: Mapping[str, int], items: list[TaskItem]
) -> None:
    """Send a batch of tasks that share one broadcast file (or none) as one JSON message."""
    name = None if path is None else os.path.basename(path)
    message = {"seq": seq, "file": name, "sizes": dict(sizes), "tasks": items}
    conn.send_bytes(json.dumps(message, separators=(",", ":")).encode())


def read_tasks(data: bytes) -> tuple[int, str | None, dict[str, int], list[TaskItem]]:
    """The fields of a message made by :func:`send_tasks` (the parent's, so checked lightly)."""
    message = json.loads(data)
    name = message["file"]
    if name is not None and (not isinstance(name, str) or "/" in name):
        raise _wire.WireError(f"a broadcast file name with a slash: {name!r:.80}")
    path = None if name is None else os.path.join(shm_dir(), name)
    items = [(int(c), str(k), int(r), str(cf), p) for c, k, r, cf, p in message["tasks"]]
    return int(message["seq"]), path, dict(message["sizes"]), items


def map_broadcast(path: str, sizes: Mapping[str, int]) -> tuple[Weights | None, Any]:
    """The weights and the fit extras in a broadcast file, as read-only views of its mapping."""
    present = [key for key in ("weights", "extras") if sizes.get(key)]
    parts = dict(
        zip(present, map_file(path, [sizes[k] for k in present], unlink=False), strict=True)
    )
    extras = parts.get("extras")
    return parts.get("weights"), None if extras is None else _wire.unflatten_extras(extras)


def task_fields(item: TaskItem, extras: Any) -> tuple[Mapping[str, Any], Any]:
    """The config and payload of one task (``extras`` when its payload is the broadcast's)."""
    _, _, _, config, text = item
    payload = extras if text is None else _wire.loads(text.encode(), _LIMITS)
    return _wire.loads(config.encode(), _LIMITS) or {}, payload
