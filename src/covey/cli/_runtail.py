"""The last rounds of a long run and what its table needs of the rest, read from ``run.sqlite``.

``covey runs show`` shows a run's last 100 rounds (``--last N``), yet its table
needs a few facts of the whole run: how many rounds there are, which usual
metric columns have a value in any round, how many failures came before the
rounds shown and which rounds did not aggregate. A run folder with a
``run.sqlite`` holds every round's record there: those facts are SQLite queries
over the records' text, and only the rounds shown are read as records, so the
command costs as much on a run of 10,000 rounds as on one of 200.

The run's ``history.json`` stays what ``covey runs show`` reads: its settings,
clients and reason for stopping come from its head, and its last round must be
the store's last, as the store holds it, with every round from 0 there, and
the file must start as many rounds as the store holds (a pass over its bytes:
a block of it lost is seen, a byte changed inside an earlier round is not).
Anything else (a folder without a store, a file laid out otherwise, fields this
covey does not know, a store that cannot be read, a file that lost rounds) is
left to the reading of the whole ``history.json`` (:func:`tail_history`
returns None).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covey.cli._rounds import ROUND_COLUMNS
from covey.dashboard._runjson import run_files_within, tag_constant

if TYPE_CHECKING:
    from covey.core._history import History

__all__ = ["WholeRun", "tail_history"]

#: Where the rounds start in the ``history.json`` covey writes (``indent=2``, rounds last).
_ROUNDS_START = b'\n  "rounds": ['
#: Where the last round starts in it, and how it ends.
_RECORD_START = b'\n    {\n      "round": '
_END = b"\n  ]\n}"
#: The most of the file read for its head, or for its last round, before giving up.
_MOST = 4 << 20


@dataclass(frozen=True)
class WholeRun:
    """What a table of a run's last rounds needs to know of all of them.

    Attributes:
        total: How many rounds the run has.
        any_value: The usual metric columns (:data:`ROUND_COLUMNS`) with a value in any round.
        failures_before: How many failures the rounds before those shown had.
        not_aggregated: The line on the rounds whose aggregation failed, or None.
    """

    total: int
    any_value: frozenset[tuple[str, str]]
    failures_before: int
    not_aggregated: str | None


def tail_history(folder: Path, last: int) -> tuple[History, WholeRun] | None:
    """The last ``last`` rounds of the run in ``folder`` (and one before), and :class:`WholeRun`.

    None if the run has no more than ``last + 1`` rounds, or the store cannot
    be taken for its ``history.json`` (see the module's docstring): then the
    whole history is read.
    """
    from covey.core._history import History

    try:
        run_files_within(folder, folder)
        head = _head(folder / "history.json")
        if head is None:
            return None
        tail, facts = _from_store(folder / "run.sqlite", head, last)
        if tail is None or facts is None:
            return None
        if _records_in(folder / "history.json") != facts.total:
            return None  # rounds lost or run together before the last: read whole, and warned of
        return History.from_dict({**head, "rounds": tail}), facts
    except (ValueError, OSError, sqlite3.Error, RecursionError, TypeError, KeyError):
        return None


def _head(path: Path) -> dict[str, Any] | None:
    """``history.json``'s settings, clients and reason, with its last round as ``"rounds"``."""
    from covey.core._history import _HISTORY_FIELDS, History

    if path.is_symlink() or not path.is_file():
        return None
    with path.open("rb") as file:
        start = file.read(_MOST)
        at = start.find(_ROUNDS_START)
        if at < 0:
            return None
        size = file.seek(0, 2)
        file.seek(max(0, size - _MOST))
        end = file.read()
    last_at = end.rfind(_RECORD_START)
    end = end.rstrip()
    if last_at < 0 or not end.endswith(_END) or size <= at + len(_ROUNDS_START):
        return None
    body = start[:at].rstrip()
    head = json.loads((body[:-1] if body.endswith(b",") else body) + b"}")
    if not isinstance(head, dict) or set(head) - _HISTORY_FIELDS:
        return None  # fields a newer covey wrote: its warning is History.load's
    History.from_dict({**head, "rounds": []})  # a malformed head: ValueError
    record = json.loads(end[last_at : len(end) - len(_END)], parse_constant=tag_constant)
    return {**head, "rounds": [record]}


def _records_in(path: Path) -> int:
    """How many rounds ``history.json`` starts, counted by their first line, read in blocks.

    Each round of the file covey writes starts with :data:`_RECORD_START` (JSON
    writes a newline inside a string escaped, and nested objects are indented
    further), so the count is the number of rounds unless the file is damaged.
    A byte changed inside a round is not seen: that takes parsing every round.
    """
    count, carry = 0, b""
    keep = len(_RECORD_START) - 1
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            data = carry + block
            count += data.count(_RECORD_START)
            carry = data[-keep:]  # too short to hold a whole start already counted
    return count


def _from_store(
    db: Path, head: dict[str, Any], last: int
) -> tuple[list[Any] | None, WholeRun | None]:
    """The store's last ``last + 1`` records and :class:`WholeRun`, if it agrees with ``head``."""
    from covey.server._rundb import open_read_only, schema_refusal

    if db.is_symlink() or not db.is_file():
        return None, None
    conn = open_read_only(db)
    try:
        if schema_refusal(conn, db) is not None:
            return None, None
        count, low, high, unknown, failed, failures, *values = _scan(conn)
        if count <= last + 1 or low != 0 or high != count - 1 or unknown:
            return None, None
        if failures and _unknown_in(conn):
            return None, None
        first = count - last  # the first round shown
        rows = conn.execute(
            "SELECT record FROM rounds WHERE record IS NOT NULL AND round >= ? ORDER BY round",
            (first - 1,),
        ).fetchall()
        tail = [json.loads(text, parse_constant=tag_constant) for (text,) in rows]
        if len(tail) != last + 1 or tail[-1] != head["rounds"][0]:
            return None, None  # history.json is behind the store, or not the same run's
        facts = WholeRun(
            total=count,
            any_value=frozenset(c for c, v in zip(ROUND_COLUMNS, values, strict=True) if v),
            failures_before=_failures_before(conn, first) if failures else 0,
            not_aggregated=_not_aggregated(conn, head, failed, count) if failed else None,
        )
        return tail, facts
    finally:
        conn.close()


#: The rounds whose aggregation failed (``not_aggregated``'s): after round 0, not
#: aggregated (``{0}``: the type of its ``aggregated``), with an error.
_FAILED = (
    "round > 0 AND COALESCE({0}, 'false') = 'false'"
    " AND json_type(record, '$.aggregate_info.\"error\"') IS NOT NULL"
)


def _scan(conn: sqlite3.Connection) -> tuple[Any, ...]:
    """One pass over the store's records: the rounds and what :class:`WholeRun` needs of them.

    ``(count, lowest, highest, any field unknown, how many did not aggregate, how
    many failures, then whether each of ROUND_COLUMNS has a value)``. Each record
    is parsed twice (SQLite parses it again for each function that reads it): the
    values read are picked out of it at once, as a small JSON array.
    """
    from covey.core._metricnames import stored_name
    from covey.core._roundrecord import _ROUND_FIELDS

    known = [f'$."{name}"' for name in sorted(_ROUND_FIELDS)]
    paths = [
        "$.aggregated",
        "$.fit_failures",
        "$.evaluate_failures",
        *(
            f"$.{source}_loss"
            if source != "fit" and name == "loss"
            else f'$.{source}_metrics."{stored_name(name, source)}"'
            for source, name in ROUND_COLUMNS
        ),
    ]
    # a number, or a NaN or an infinity as covey writes them ({"__float__": "nan"})
    number = (
        "MAX(json_type(x, '$[{0}]') IN ('integer', 'real')"
        " OR (json_type(x, '$[{0}]') = 'object'"
        " AND json_type(x, '$[{0}].__float__') IS NOT NULL"
        " AND (SELECT COUNT(*) FROM json_each(x, '$[{0}]')) = 1))"
    )
    columns = ", ".join(number.format(3 + i) for i in range(len(ROUND_COLUMNS)))
    picked = ", ".join(f"?{len(known) + i + 1}" for i in range(len(paths)))
    marks = ", ".join(f"?{i + 1}" for i in range(len(known)))
    failures = (
        "COALESCE(json_array_length(x, '$[1]'), 0) + COALESCE(json_array_length(x, '$[2]'), 0)"
    )
    failed = _FAILED.format("json_type(x, '$[0]')")
    query = (
        "WITH r AS MATERIALIZED ("  # noqa: S608 (placeholders and constants only)
        f"SELECT round, record, json_extract(record, {picked}) AS x,"
        f" json_remove(record, {marks}) != '{{}}' AS unknown"
        " FROM rounds WHERE record IS NOT NULL)"
        " SELECT COUNT(*), MIN(round), MAX(round), COALESCE(MAX(unknown), 0),"
        f" COALESCE(SUM({failed}), 0), COALESCE(SUM({failures}), 0), {columns} FROM r"
    )
    return tuple(conn.execute(query, (*known, *paths)).fetchone())


def _unknown_in(conn: sqlite3.Connection) -> bool:
    """Whether a failure of a round holds a field :class:`Failure` lacks."""
    from covey.core._roundrecord import _FAILURE_FIELDS

    known = [f'$."{name}"' for name in sorted(_FAILURE_FIELDS)]
    marks = ", ".join(f"?{i + 1}" for i in range(len(known)))
    query = (
        "SELECT EXISTS ("  # noqa: S608 (placeholders and constants only)
        "SELECT 1 FROM rounds, json_each(rounds.record) AS f, json_each(f.value) AS a"
        " WHERE rounds.record IS NOT NULL"
        " AND f.key IN ('fit_failures', 'evaluate_failures') AND f.type = 'array'"
        f" AND json_remove(a.value, {marks}) != '{{}}')"
    )
    found = conn.execute(query, known).fetchone()[0]
    return bool(found)


def _failures_before(conn: sqlite3.Connection, first: int) -> int:
    """How many failures (fit and evaluate) the rounds before ``first`` recorded."""
    (count,) = conn.execute(
        "SELECT COALESCE(SUM(COALESCE(json_array_length(record, '$.fit_failures'), 0)"
        " + COALESCE(json_array_length(record, '$.evaluate_failures'), 0)), 0)"
        " FROM rounds WHERE record IS NOT NULL AND round < ?",
        (first,),
    ).fetchone()
    return int(count)


def _not_aggregated(
    conn: sqlite3.Connection, head: dict[str, Any], failed: int, count: int
) -> str | None:
    """:func:`~covey.server._outputs.not_aggregated`'s line, from the store's records."""
    from covey.core._history import History
    from covey.core._runstep import step_of_settings
    from covey.server._outputs import not_aggregated_line

    failed_here = _FAILED.format("json_type(record, '$.aggregated')")
    where = f" FROM rounds WHERE record IS NOT NULL AND {failed_here}"
    numbers = [rnd for (rnd,) in conn.execute(f"SELECT round{where} ORDER BY round LIMIT 5")]
    (text,) = conn.execute(f"SELECT record{where} ORDER BY round DESC LIMIT 1").fetchone()
    record = History.from_dict({"rounds": [json.loads(text, parse_constant=tag_constant)]})
    error = record.rounds[0].aggregate_info["error"]
    step = step_of_settings(History.from_dict({**head, "rounds": []}).config)
    return not_aggregated_line(step, numbers, failed, count - 1, error)
