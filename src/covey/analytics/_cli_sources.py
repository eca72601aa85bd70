"""``covey site``'s tables: ``--table NAME=SOURCE``, a CSV's options, the default ledger.

A CSV file's options (:class:`~covey.analytics.CSV`: the line its header is on,
its missing values, its decimal separator) are flags naming the table they are
for (``--csv-skip t=1``), so a file DuckDB's reader may guess wrong is read as
it is written without a line of Python.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

_NAME_MAX = 255  # the longest file name (in bytes) most file systems take

CsvSkip = Annotated[
    list[str] | None,
    typer.Option(
        "--csv-skip",
        help="NAME=N: skip N lines above the header of table NAME's CSV file "
        "(0: line 1 is the header; nothing is guessed) (repeatable).",
        metavar="NAME=N",
    ),
]
CsvNa = Annotated[
    list[str] | None,
    typer.Option(
        "--csv-na",
        help="NAME=TOKENS: the comma-separated cell values read as missing in table "
        "NAME's CSV file (NAME= : only an empty cell) (repeatable).",
        metavar="NAME=TOKENS",
    ),
]
CsvDecimal = Annotated[
    list[str] | None,
    typer.Option(
        "--csv-decimal",
        help=(
            "NAME=, : the decimal separator of table NAME's CSV file, . or , (repeatable; "
            "default: told by its numbers, . in a comma-separated file)."
        ),
        metavar="NAME=SEP",
    ),
]


def _pairs(specs: list[str], flag: str, what: str, empty: bool = False) -> dict[str, str]:
    """``NAME=VALUE`` pairs of a repeatable flag, each name once (an empty value if ``empty``)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not (value or empty):
            raise typer.BadParameter(f"expected NAME={what}, got {spec!r}", param_hint=flag)
        if name in out:  # the later one would replace the earlier one unseen
            raise typer.BadParameter(
                f"table {name!r} is given twice ({out[name]!r} and {value!r})", param_hint=flag
            )
        out[name] = value
    return out


def tables_flag(specs: list[str]) -> dict[str, str]:
    """The ``--table NAME=SOURCE`` flags as a mapping of name to source."""
    return _pairs(specs, "--table", "SOURCE")


def _skip(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise typer.BadParameter(
            f"expected a number of lines (0 or more), got {value!r}", param_hint="--csv-skip"
        )
    return int(value)


def _decimal(value: str) -> str:
    if value not in (".", ","):
        raise typer.BadParameter(f"expected . or , got {value!r}", param_hint="--csv-decimal")
    return value


def with_csv_options(
    tables: dict[str, str],
    skip: list[str] | None,
    na: list[str] | None,
    decimal: list[str] | None,
) -> dict[str, Any]:
    """``tables`` with each CSV table given ``--csv-*`` flags as a :class:`CSV` of them.

    Raises:
        typer.BadParameter: A flag is malformed, names a table given twice, names
            no ``--table``, or one that is not a ``.csv`` file.
    """
    from covey.analytics._csv import CSV

    given: dict[str, dict[str, Any]] = {}
    for flag, specs, what, read in (
        ("--csv-skip", skip, "N", _skip),
        ("--csv-na", na, "TOKENS", lambda v: tuple(v.split(",")) if v else ()),
        ("--csv-decimal", decimal, "SEP", _decimal),
    ):
        for name, value in _pairs(specs or [], flag, what, empty=flag == "--csv-na").items():
            source = tables.get(name)
            if source is None:
                raise typer.BadParameter(
                    f"no --table {name}=... is given for {flag} {name}={value}; "
                    f"the tables given: {', '.join(tables) or 'none'}",
                    param_hint=flag,
                )
            if Path(source).suffix.lower() != ".csv" or source.startswith("sqlite:"):
                raise typer.BadParameter(
                    f"table {name!r} is {source!r}, not a .csv file: {flag} is for CSV files",
                    param_hint=flag,
                )
            given.setdefault(name, {})[flag.removeprefix("--csv-")] = read(value)
    return {n: CSV(s, **given[n]) if n in given else s for n, s in tables.items()}


def default_ledger(tables: dict[str, str], name: str) -> Path:
    """Where a site keeps its DP budget by default: next to its first table's file.

    Raises:
        ValueError: ``name`` cannot name a file there: it holds a folder separator
            (``../x`` would keep the budget outside the table's folder), or the file's
            name would be longer than a file system takes; ``--ledger`` is asked for.
    """
    first = next(iter(tables.values()))
    source = Path(first.removeprefix("sqlite:///"))
    file = f"{name}.covey-budget.json"
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in name for s in separators):
        raise ValueError(
            f"--name {name!r} holds a folder separator, so it cannot name the ledger file "
            f"next to the first table ({source.parent}); give the file with --ledger FILE"
        )
    if len(f"{file}.lock".encode()) > _NAME_MAX:  # the lock file beside it is longer still
        raise ValueError(
            f"--name of {len(name)} characters is too long to name the ledger file "
            f"{file!r} next to the first table; give the file with --ledger FILE"
        )
    return source.parent / file
