"""Reading a run's JSON (``history.json``, ``run.json``, round records) for the dashboard.

Every file is read with a cap on its size, as a regular file (a named pipe is
not waited on), and the fields of a round the page walks through are checked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from covey.core._files import MAX_SETTINGS_BYTES, read_regular

MAX_JSON_BYTES: Final = 256 << 20
"""The largest ``history.json`` or ``run.json`` read (bigger files are refused)."""


class RunReadError(ValueError):
    """A run folder whose files cannot be read (too big, not JSON, not a covey run)."""


def within(path: Path, root: Path | None) -> Path:
    """``path``, resolved; refused if it resolves outside ``root`` (None: not checked).

    A run's file that is a symbolic link (or sits below one) to a file outside the
    runs folder is not read: the dashboard (and ``covey runs``) shows what is in the
    folder it was given, never a file elsewhere that someone who can write a run
    folder points it at.

    Raises:
        RunReadError: naming ``path`` and ``root``, if it resolves outside ``root``.
    """
    if root is None:
        return path
    real, top = path.resolve(), root.resolve()
    if not real.is_relative_to(top):
        raise RunReadError(
            f"{path} is a link to a file outside {root}: covey reads no run file "
            "outside the folder it shows (copy the file into the run folder instead)"
        )
    return real


def run_files_within(folder: Path, root: Path | None) -> None:
    """Refuse the run in ``folder`` if one of its files links outside ``root`` (:func:`within`).

    The files are ``history.json``, ``run.json``, ``run.sqlite`` and its ``-wal`` and
    ``-shm``, which ``covey runs list`` and ``show`` read.
    """
    for name in ("history.json", "run.json", "run.sqlite", "run.sqlite-wal", "run.sqlite-shm"):
        path = folder / name
        if path.exists() or path.is_symlink():
            within(path, root)


def read_from_store(damaged: str, store: Path) -> str:
    """What a run whose ``history.json`` is ``damaged`` says: its rounds come from ``store``.

    A run killed as it wrote ``history.json`` leaves it cut short, while its
    ``run.sqlite`` kept every round: the dashboard, its reports and ``covey runs``
    show the run from there, with this note.

    Example:
        >>> read_from_store("cannot read r/history.json: ...", Path("r/run.sqlite"))
        'cannot read r/history.json: ...; its rounds were read from r/run.sqlite instead'
    """
    return f"{damaged}; its rounds were read from {store} instead"


def lacks_rounds(history: Path, store: Path, lost: Sequence[int], step: str = "round") -> str:
    """What a run whose ``history`` lacks the rounds ``lost`` that ``store`` holds says.

    A ``history.json`` that lost whole rounds (written over, or edited) can still
    be JSON: the dashboard, its reports and ``covey runs`` take those rounds from
    the store, with this note. ``step``: what the run counts (``"update"``).

    Example:
        >>> lacks_rounds(Path("history.json"), Path("run.sqlite"), [3, 4, 5, 9]).split(";")[0]
        'history.json lacks rounds 3-5 and 9 that run.sqlite holds'
    """
    spans: list[str] = []
    start = end = lost[0]
    for number in [*lost[1:], None]:
        if number is not None and number == end + 1:
            end = number
            continue
        spans.append(str(start) if start == end else f"{start}-{end}")
        if number is not None:
            start = end = number
    shown = spans[:_SPANS]
    if len(spans) > _SPANS:
        shown.append(f"more ({len(lost)} in all)")
    listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"
    steps, they = (f"{step}s", "they were") if len(lost) > 1 else (step, "it was")
    return f"{history} lacks {steps} {listed} that {store} holds; {they} read from {store}"


#: The most runs of rounds :func:`lacks_rounds` names.
_SPANS = 8


def tag_constant(name: str) -> dict[str, str]:
    """``NaN``, ``Infinity`` and ``-Infinity`` in a run's JSON, tagged as covey writes them.

    :func:`covey.History.save` writes a non-finite number as ``{"__float__": "nan"}``;
    a file written otherwise (``json.dumps``) has the bare constant, read the same way.
    """
    return {"__float__": str(float(name))}


def tagged_float(value: Any) -> float | None:
    """The number a ``{"__float__": "nan"}`` tag stands for; None if ``value`` is no tag."""
    if not isinstance(value, dict) or len(value) != 1:
        return None
    text = value.get("__float__")
    if not isinstance(text, str):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def read_json(path: Path, limit: int | None = None) -> Any:
    """Parse a JSON file written by a run, refusing files over ``limit`` bytes.

    ``limit``: None is :data:`MAX_JSON_BYTES`.
    """
    return parse_json(path, read_bytes(path, limit))


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a run's file, as :func:`read_json` reads them (over ``limit``: refused).

    ``limit``: None is :data:`MAX_JSON_BYTES`.
    """
    limit = MAX_JSON_BYTES if limit is None else limit
    try:
        size = path.stat().st_size
        if size > limit:
            raise RunReadError(f"{path} is {size} bytes, over the {limit}-byte cap")
        return read_regular(path, limit)
    except (OSError, ValueError) as exc:
        raise RunReadError(f"cannot read {path}: {exc}") from exc


def parse_json(path: Path, raw: bytes) -> Any:
    """The JSON ``raw`` (the bytes of ``path``) holds, as :func:`read_json` parses it."""
    try:
        return json.loads(raw, parse_constant=tag_constant)
    except ValueError as exc:
        # not UTF-8, not JSON, or an integer of more digits than Python converts
        raise RunReadError(f"cannot read {path}: {exc}") from exc
    except RecursionError:
        raise RunReadError(f"cannot read {path}: its JSON nests too deeply") from None


def read_run_json(folder: Path, root: Path | None = None) -> dict[str, Any] | None:
    """A simulation's ``run.json`` in ``folder`` as an object; None if there is none.

    The one reader of the dashboard, its reports and ``covey runs``, so that they
    give one verdict on a damaged file: anyone who can write the folder may have
    put anything there, and a named pipe is not waited on.

    Raises:
        RunReadError: naming the file and why, if it is no regular file (a named
            pipe, a folder), over :data:`~covey.core._files.MAX_SETTINGS_BYTES`, not
            UTF-8, not JSON, no JSON object, or a link outside ``root``.
    """
    path = folder / "run.json"
    if not path.exists() and not path.is_symlink():
        return None
    data = read_json(within(path, root), MAX_SETTINGS_BYTES)
    if not isinstance(data, dict):
        raise RunReadError(f"{path} holds no JSON object (it holds a {type(data).__name__})")
    return data


_ID_LISTS: Final[tuple[str, ...]] = ("fit_participants", "evaluate_participants")
_FAILURES: Final[tuple[str, ...]] = ("fit_failures", "evaluate_failures")
_OBJECTS: Final[tuple[str, ...]] = (
    "fit_metrics",
    "evaluate_metrics",
    "central_metrics",
    "durations",
)


def _wrong_field(item: dict[str, Any]) -> str | None:
    """What is wrong with a field of a round the page reads, said as ``History.load`` says it.

    Only the fields the page walks through are checked (a few type checks per
    round, so a long run read again at each new round stays cheap); a number
    where text belongs, or text where a number belongs, is shown as it is.
    """

    def got(name: str, want: str) -> str:
        return f"{name!r} must be {want}, got {item[name]!r:.60}"

    for name in (n for n in _ID_LISTS if n in item):
        ids = item[name]
        if not isinstance(ids, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in ids
        ):
            return got(name, "a list of client ids")
    for name in (n for n in _FAILURES if n in item):
        failures = item[name]
        if not isinstance(failures, list) or not all(isinstance(f, dict) for f in failures):
            return got(name, "a list of failures")
    for name in (n for n in _OBJECTS if n in item):
        if not isinstance(item[name], dict):
            return got(name, "an object")
    if item.get("privacy") is not None and not isinstance(item["privacy"], dict):
        return got("privacy", "an object or null")
    return None


def check_rounds(raw: Any, where: str, checked: int = 0) -> list[dict[str, Any]]:
    """Check that ``raw`` is a list of round dicts with distinct integer ``round`` keys.

    The fields of a round the page walks through (client ids, failures, metrics,
    durations, privacy) must have the types :meth:`covey.History.load` wants,
    else the run is unreadable, naming the round and the field. The fields of
    the first ``checked`` rounds are not checked again: a caller passed them
    before (rounds of a file read again, whose text did not change).
    """
    if not isinstance(raw, list):
        raise RunReadError(f"{where}: 'rounds' must be a list, got {type(raw).__name__}")
    rounds: dict[int, dict[str, Any]] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise RunReadError(f"{where}: a round must be an object, got {type(item).__name__}")
        number = item.get("round")
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise RunReadError(f"{where}: a round has no valid 'round' number: {number!r}")
        wrong = None if i < checked else _wrong_field(item)
        if wrong is not None:
            raise RunReadError(f"{where}: round {number}: {wrong}")
        rounds[number] = item
    return [rounds[k] for k in sorted(rounds)]
