"""Markdown output shared by the benchmark scripts: number cells, tables, result files.

``vs_flower.py`` and ``deploy_vs_flower.py`` both print markdown tables and
write a JSON file and a markdown file per invocation into ``results/``; this
module is the one place that renders and writes them.

Example::

    >>> table(["N", "s"], ["---:", "---:"], [["10", fmt(0.123)]])
    ['| N | s |', '|---:|---:|', '| 10 | 0.12 |']
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from covey.core._files import atomic_write

__all__ = ["fmt", "table", "write_results"]


def fmt(value: Any, spec: str = "{:.2f}") -> str:
    """One table cell: ``value`` formatted with ``spec``, "–" for None, "nan" for NaN.

    Args:
        value: A number, or None when there is nothing to show.
        spec: A ``str.format`` pattern with one field.

    Returns:
        The cell text.
    """
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return spec.format(value)


def table(
    header: Sequence[str], align: Sequence[str], rows: Sequence[Sequence[str] | str]
) -> list[str]:
    """The lines of a markdown table.

    Args:
        header: The column titles.
        align: One alignment cell per column: ``"---"`` (left) or ``"---:"`` (right).
        rows: The rows, each a list of cell texts, or a line already rendered
            (e.g. a row that spans the table to report a failure).

    Returns:
        The header line, the alignment line, then one line per row.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append(row if isinstance(row, str) else "| " + " | ".join(row) + " |")
    return lines


def write_results(
    out_dir: Path, name: str, stamp: str, result: dict[str, Any], md: str
) -> tuple[Path, Path]:
    """Write ``<name>-<stamp>.json`` and ``<name>-<stamp>.md`` into ``out_dir``, atomically.

    Args:
        out_dir: The results folder (it exists).
        name: The benchmark's name, e.g. ``"vs_flower"``.
        stamp: The invocation's time stamp.
        result: Everything measured (values JSON cannot hold are written as text).
        md: The markdown report.

    Returns:
        The paths of the JSON file and the markdown file.
    """
    json_path = out_dir / f"{name}-{stamp}.json"
    atomic_write(json_path, json.dumps(result, indent=2, default=str))
    md_path = out_dir / f"{name}-{stamp}.md"
    atomic_write(md_path, md + "\n")
    return json_path, md_path
