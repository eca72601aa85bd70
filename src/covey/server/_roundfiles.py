"""The files of a run store: one safetensors file of global weights per round.

A round's weights are written to a temporary file in ``RUN_DIR/weights``,
flushed to disk and renamed to their final name; their SHA-256 is recorded
with the round's row and checked on every read. :func:`sweep` removes what a
crashed save left behind. The round records stored beside them are checked
here too (:func:`record_json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np
import safetensors.numpy

from covey.core._files import atomic_write, regular_reader
from covey.core._history import History, RoundRecord, unknown_fields
from covey.core._jsonvalues import jsonable
from covey.core._version import covey_version
from covey.core._weights import Array, Weights, WeightsSpec
from covey.server._rundb import NewerFormatError
from covey.server._sortedmeta import sort_metadata

__all__ = [
    "WEIGHTS_DIR",
    "check_finite",
    "check_storable",
    "damaged_record_error",
    "lost_rounds_error",
    "read_record",
    "read_weights",
    "record_json",
    "remove",
    "round_number",
    "round_of_file",
    "save_error",
    "stored_file",
    "stored_state",
    "sweep",
    "weights_file_name",
    "write_weights",
]

WEIGHTS_DIR: Final = "weights"
_ROUND_FILE = re.compile(r"round-(\d+)\.safetensors")
_CHUNK: Final = 1 << 20


def weights_file_name(round: int) -> str:
    """The file name of a round's weights inside ``RUN_DIR/weights``."""
    return f"round-{round:05d}.safetensors"


def stored_file(db: Path, round: int, name: str, step: str = "round") -> str:
    """``name``, the weights file ``db`` records for ``round``, checked to be that round's own.

    The name is only ever the round's file in ``weights/``: a database naming
    another path (``../history.json``, an absolute one) is damaged or was
    tampered with, and its file is neither read nor deleted.

    Raises:
        ValueError: naming the database, the round and the name it holds.
    """
    if name != weights_file_name(round):
        raise ValueError(
            f"{db} records {name!r} as the weights file of {step} {round}, not "
            f"{weights_file_name(round)!r} in {WEIGHTS_DIR}/: the database is damaged"
        )
    return name


def round_number(given: object, run_dir: Path, step: str = "round") -> int:
    """``given`` as the number of a round to load from the run in ``run_dir``.

    Raises:
        KeyError: ``given`` is None (what ``last_round()`` gives for a run that
            saved none) or negative: no such round is saved.
        TypeError: ``given`` is no int (a str, a float, a bool, ``best_round``'s tuple).
    """
    if given is None:  # load_round(last_round()) of a run that saved none
        raise KeyError(f"no {step} is saved yet in the run at {run_dir}")
    if isinstance(given, tuple):  # load_round(history.best_round(...)), not unpacked
        raise TypeError(
            f"load_round takes a round number, got the tuple {given!r}: "
            "best_round gives (round, value), so pass its first item"
        )
    if isinstance(given, bool) or not isinstance(given, int | np.integer):
        raise TypeError(
            f"load_round takes a round number (an int), got {type(given).__name__} "
            f"{given!r}; rounds() lists the rounds saved"
        )
    if given < 0:
        raise KeyError(f"{step} {given} was never saved in the run at {run_dir}")
    return int(given)


def stored_state(db: Path, round: int, state: object, step: str = "round") -> bytes | None:
    """The aggregation state ``db`` holds for ``round``: bytes, or None if it saved none.

    A state stored as text or a number (the database edited by hand, or
    damaged) is refused as damage, so that a resume skips the round.

    Raises:
        ValueError: naming the database, the round and what the state is.
    """
    if state is None:
        return None
    if isinstance(state, bytes | bytearray | memoryview):
        return bytes(state)
    raise ValueError(
        f"the aggregation state of {step} {round} in {db} is damaged: it is "
        f"{type(state).__name__}, not the bytes the {step} saved"
    )


def round_of_file(name: str) -> int | None:
    """The round a weights file name is of (``round-00003.safetensors``: 3), or None."""
    match = _ROUND_FILE.fullmatch(name)
    return None if match is None else int(match.group(1))


_RESERVED: Final = "__metadata__"  # the safetensors header's own entry


def check_storable(spec: WeightsSpec) -> None:
    """Raise :class:`ValueError` if a weights file cannot hold arrays of this layout.

    A safetensors header keeps its metadata under ``"__metadata__"``: an array of
    that name would be written, and the file then refused on every read.
    """
    if _RESERVED in spec.names:
        raise ValueError(
            f"weight name {_RESERVED!r} is reserved by the run store's weights files "
            "(safetensors): rename that array"
        )


def write_weights(final: Path, round: int, weights: Weights, spec: WeightsSpec) -> str:
    """Write ``final`` via a synced temporary file; return the file's SHA-256.

    Args:
        final: The weights file to write.
        round: The round the weights are of (stored in the file's metadata).
        weights: The arrays.
        spec: Their layout; the names are stored in this order.

    Returns:
        The hex SHA-256 of the file written.
    """
    check_storable(spec)
    # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
    arrays = {name: np.require(weights[name], requirements="C") for name in spec.names}
    metadata = {"covey_round": str(round), "covey_names": json.dumps(list(spec.names))}
    sha = hashlib.sha256()

    def write(tmp: Path) -> None:
        safetensors.numpy.save_file(arrays, tmp, metadata=metadata)
        sort_metadata(tmp)
        with open(tmp, "rb") as f:
            while chunk := f.read(_CHUNK):
                sha.update(chunk)

    atomic_write(final, write)
    return sha.hexdigest()


def save_error(round: int, final: Path, exc: BaseException, step: str = "round") -> OSError:
    """The error of a round that could not be saved, naming the round and the file.

    safetensors reports a full disk as a ``SafetensorError``; it becomes an
    :class:`OSError` as every other failure to write does (keeping the ``errno``
    when there is one).

    Args:
        round: The round being saved.
        final: Its weights file (``RUN_DIR/weights/round-NNNNN.safetensors``).
        exc: What writing the weights file or the database raised.
        step: What ``round`` counts: ``"round"``, or an asynchronous run's ``"update"``.
    """
    if isinstance(exc, OSError) and exc.strerror:
        said = f"cannot save {step} {round} to {final}: {exc.strerror}"  # not its temporary
    elif isinstance(exc, OSError):  # the database's, naming its file
        said = f"cannot save {step} {round}: {exc}"
    else:
        said = f"cannot save {step} {round} to {final}: {exc}"
    error = OSError(said)
    error.errno = getattr(exc, "errno", None)
    return error


def damaged_record_error(db: Path, exc: Exception, step: str = "round") -> ValueError:
    """The error of a run whose records in ``db`` do not make a history (``exc``: why not).

    ``step`` is what the run's numbers count: ``"round"``, or an asynchronous run's
    ``"update"``, which the record's own number is then said in too.
    """
    said = str(exc)
    if step != "round" and said.startswith("round "):  # History's "round 3: ..."
        said = f"{step} {said.removeprefix('round ')}"
    return ValueError(
        f"{'an update' if step == 'update' else 'a round'} record in {db} is damaged "
        f"({type(exc).__name__}: {said}); the run's history cannot be read"
    )


def lost_rounds_error(
    db: Path, weights_dir: Path, last: int | None, ahead: list[str], step: str = "round"
) -> ValueError:
    """The error of a run whose database ``db`` lost rounds whose files ``ahead`` are kept.

    See :meth:`~covey.server.RunStore.check_lost_rounds`.

    Args:
        db: The run's ``run.sqlite``.
        weights_dir: Its ``weights/`` folder.
        last: The last round ``db`` records (None: no round).
        ahead: The names of the files of later rounds, sorted.
        step: What ``last`` counts: ``"round"``, or an asynchronous run's ``"update"``.
    """
    recorded = f"no {step}" if last is None else f"{step}s up to {last}"
    return ValueError(
        f"{db} records {recorded}, but {weights_dir} holds "
        f"{', '.join(ahead[:4])}{' ...' if len(ahead) > 4 else ''} of later {step}s: the "
        f"database lost its newest {step}s (was {db.name}-wal left behind when the folder "
        f"was copied, or damaged?). Put {db.name}-wal back next to {db.name} to resume "
        f"after the last {step}; to resume from the last recorded {step} instead, delete "
        "those files"
    )


MAX_HEADER_BYTES: Final = 100_000_000
"""The longest safetensors header read (the ``safetensors`` library's own limit)."""


def read_weights(round: int, path: Path, digest: str, step: str = "round") -> dict[str, Array]:
    """Read a round's weights file, checked against its recorded SHA-256.

    Nothing beyond its header is read until the file is known to be the size
    its header declares, and none of it is held in memory until its SHA-256
    (computed a chunk at a time) is the one recorded: a truncated file, or a
    huge one put in its place, is refused by name without taking the memory.

    Args:
        round: The round the file must hold.
        path: The weights file.
        digest: The hex SHA-256 recorded when it was saved.
        step: What ``round`` counts: ``"round"``, or an asynchronous run's ``"update"``.

    Returns:
        The arrays (writable), in the order they were saved in.

    Raises:
        ValueError: The file is missing, truncated, corrupt, unreadable, not a
            regular file, or of another round.
        OSError: The system could not read it (a permission, the disk); nothing
            says it is damaged.
    """
    try:
        # A named pipe would block for ever, a link to a device be read without end.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ValueError(f"weights file {path} of {step} {round} is missing") from None
    except OSError as exc:
        raise _read_error(round, path, exc, step) from exc
    try:
        opened = regular_reader(fd)
    except OSError as exc:
        raise _read_error(round, path, exc, step) from exc
    if opened is None:
        raise ValueError(
            f"weights file {path} of {step} {round} is not a regular file (a folder, a "
            f"named pipe, a device, or a link to one): it is not the file the {step} saved"
        )
    handle, size = opened
    with handle:
        try:
            _check_size(round, path, handle, size, step)
            handle.seek(0)
            sha = hashlib.sha256()
            while chunk := handle.read(_CHUNK):
                sha.update(chunk)
            actual = sha.hexdigest()
            if actual != digest:
                raise ValueError(
                    f"weights file {path} of {step} {round} is corrupt: its SHA-256 is "
                    f"{actual}, expected {digest}"
                )
            handle.seek(0)
            data = handle.read(size + 1)
        except OSError as exc:  # not damage (a permission, the disk): the round is kept
            raise _read_error(round, path, exc, step) from exc
    if len(data) != size:  # written over in place while it was read
        raise ValueError(f"weights file {path} of {step} {round} changed while it was read")
    return _arrays_of(round, path, data, step)


def check_finite(round: int, path: Path, weights: Mapping[str, Array], step: str = "round") -> None:
    """Refuse a saved round's model that holds NaN or Inf: a run cannot go on from it.

    Its file may be intact (its SHA-256 the one recorded) and the values still be
    damage: a server aggregates only finite updates, and starts only from a finite model.

    Raises:
        ValueError: naming the file, the array and how many of its values are not finite.
    """
    for name, array in weights.items():
        if array.dtype.kind in "fc":
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                raise ValueError(
                    f"weights file {path} of {step} {round} holds {bad} non-finite value(s) "
                    f"(NaN or Inf) in {name!r}: a run cannot go on from that model"
                )


def _read_error(round: int, path: Path, exc: OSError, step: str) -> OSError:
    """A round's weights file the system could not read: not damage, the round is kept."""
    error = OSError(f"cannot read weights file {path} of {step} {round}: {exc.strerror or exc}")
    error.errno = exc.errno
    return error


def _check_size(round: int, path: Path, handle: BinaryIO, size: int, step: str) -> None:
    """Refuse a weights file whose size is not the one its safetensors header declares.

    Reads the header only (its length is capped at :data:`MAX_HEADER_BYTES`).
    """
    where = f"weights file {path} of {step} {round}"
    head = handle.read(8)
    if len(head) < 8:
        raise ValueError(f"{where} is truncated: it holds {size} bytes, not even a header")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        shown = f"{length:,} bytes" if length < 1 << 40 else "more than a terabyte"
        raise ValueError(
            f"{where} is corrupt or truncated: its header would be {shown} "
            f"long, in a file of {size:,} bytes"
        )
    try:
        header = json.loads(handle.read(length))
        ends = [
            int(entry["data_offsets"][1]) for name, entry in header.items() if name != _RESERVED
        ]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        raise ValueError(f"{where} is corrupt: its header is not a safetensors header") from None
    declared = 8 + length + max(ends, default=0)
    if size != declared:
        said = "truncated" if size < declared else "larger than its arrays"
        raise ValueError(
            f"{where} is {said}: it holds {size:,} bytes, its header declares {declared:,}"
        )


def _arrays_of(round: int, path: Path, data: bytes, step: str) -> dict[str, Array]:
    """The arrays of a verified weights file, in the order they were saved in."""
    try:
        metadata = _safetensors_metadata(data)
        arrays = safetensors.numpy.load(data)
        names: list[str] = json.loads(metadata["covey_names"])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"its array names are {type(names).__name__}, not a list of text")
        stored_round = int(metadata["covey_round"])
    except Exception as exc:
        raise ValueError(f"weights file {path} of {step} {round} is unreadable: {exc}") from exc
    if stored_round != round or sorted(names) != sorted(arrays):
        raise ValueError(f"weights file {path} does not hold the weights of {step} {round}")
    return {name: arrays[name] for name in names}


def sweep(weights_dir: Path, referenced: Collection[str]) -> None:
    """Delete the temporary files and the round files no round row names.

    Args:
        weights_dir: The run's weights folder (made if missing).
        referenced: The names of the weights files the database refers to.
    """
    weights_dir.mkdir(exist_ok=True)
    for path in weights_dir.iterdir():
        # Hidden files are leftovers of a killed write: ours end in ".tmp", and
        # safetensors writes through a ``.tmpXXXXXX`` file of its own first.
        stale_tmp = path.name.startswith(".")
        orphan = _ROUND_FILE.fullmatch(path.name) and path.name not in referenced
        if stale_tmp or orphan:
            remove(path)


def remove(path: Path) -> None:
    """Delete the file ``path`` if it is there; leave a folder of that name alone.

    A folder is never one the run wrote (``.ipynb_checkpoints``, which Jupyter
    makes in a folder it shows, or one put where a round's file belongs): it is
    kept, with what it holds. A round whose file cannot be written over it says
    so, naming it.
    """
    try:
        path.unlink(missing_ok=True)
    except OSError:
        if not path.is_dir() or path.is_symlink():
            raise


def record_json(round: int, record: Mapping[str, Any] | RoundRecord) -> str:
    """The JSON text of a round record, checked to rebuild into a :class:`RoundRecord`.

    Raises:
        TypeError: ``record`` is neither a :class:`RoundRecord` nor a mapping.
        ValueError: It is of another round, not a round record, or not JSON.
    """
    if isinstance(record, RoundRecord):
        raw: dict[str, Any] = asdict(record)
    elif isinstance(record, Mapping):
        raw = dict(record)
    else:
        raise TypeError(
            f"record must be a RoundRecord, a dict or None, got {type(record).__name__}"
        )
    raw.setdefault("round", round)
    if raw["round"] != round:
        raise ValueError(f"record of round {raw['round']} saved as round {round}")
    data = jsonable(raw)
    unknown = unknown_fields(data) if isinstance(data, dict) else []
    if unknown:
        raise ValueError(
            f"record of round {round} is not a RoundRecord dict: unknown field(s) "
            f"{', '.join(unknown)}"
        )
    try:
        History.from_dict({"rounds": [data]})
    except (TypeError, KeyError) as exc:
        raise ValueError(f"record of round {round} is not a RoundRecord dict: {exc}") from exc
    try:
        return json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"record of round {round} is not JSON-serializable: {exc}") from exc


def read_record(
    db: Path, round: int, text: str, created_by: Callable[[], str], step: str = "round"
) -> dict[str, Any]:
    """The record of ``round`` stored in ``db`` as ``text``, checked to rebuild.

    A field this covey does not know is refused, not left out: it is damage, or
    a newer covey served the run (resuming would rewrite its history without it).

    Raises:
        ValueError: naming the round, the file and what is wrong.
        NewerFormatError: the record has fields this covey does not know.
    """
    try:
        record = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:  # nested too deeply: damaged too
        record = exc
    if not isinstance(record, dict):
        raise ValueError(
            f"the record of {step} {round} in {db} is damaged ({record}); the run's history "
            "cannot be read"
        )
    unknown = unknown_fields(record)
    if unknown:  # never skipped by a resume as damage: the redo would delete the round
        raise NewerFormatError(
            f"the record of {step} {round} in {db} has field(s) {', '.join(unknown)} that "
            f"covey {covey_version()} does not know: it is damaged, or a newer covey served "
            f"the run (it was created by covey {created_by()}); resume it with that version"
        )
    return record


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file.

    The file starts with an 8-byte little-endian header length, then the JSON header.
    """
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata: dict[str, str] = header.get("__metadata__") or {}
    return metadata
