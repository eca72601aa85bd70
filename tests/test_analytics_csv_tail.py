"""A CSV file's lines around its rows: a title above the header, a summary below the rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from covey.analytics import CSV, Policy, Site

POLICY = Policy(min_group_size=1)


def _site(path: Path | CSV) -> Site:
    return Site({"t": path if isinstance(path, CSV) else str(path)}, POLICY, name="north")


def _refused(path: Path | CSV) -> str:
    with pytest.raises(ValueError, match=r"^site 'north': table 't': ") as info:
        _site(path)
    return str(info.value)


def test_a_title_line_of_one_cell_above_a_header_of_text_is_refused_naming_the_skip(
    tmp_path: Path,
) -> None:
    # a spreadsheet's title row: refused as "column 2 has no name", with no word of the skip
    path = tmp_path / "t.csv"
    path.write_text("Patient list,,\nname,ward,sex\nAnn,A,F\nBo,B,M\n")
    assert _refused(path) == (
        f"site 'north': table 't': line 1 of {path} ('Patient list,,'), which DuckDB's reader "
        "would take for the header, holds one name and empty cells, though column 2 holds "
        "values in 3 rows: a title above the header? remove it (or skip it: covey site "
        "--csv-skip t=1, or covey.analytics.CSV(path, skip=1) in Python); if it is the header, "
        "give every column a name"
    )
    site = _site(CSV(path, skip=1))
    assert list(site._columns["t"]) == ["name", "ward", "sex"]
