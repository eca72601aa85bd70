"""A CSV file's numbers written with thousands separators: read as numbers where unambiguous."""

from __future__ import annotations

from pathlib import Path

import pytest

from covey.analytics import CSV, Policy, Site


def _table(source: CSV) -> tuple[dict[str, str], list[tuple[object, ...]]]:
    """The columns' types and the rows of a site's table ``t`` read from ``source``."""
    site = Site({"t": source}, Policy(min_group_size=1), name="north")
    with site._con.cursor() as con:
        rows = con.execute("SELECT * FROM t").fetchall()
    return site._columns["t"], rows


@pytest.mark.parametrize(
    ("text", "decimal"),
    [
        ('ward,cost\nA,"1,234.56"\nB,12.5\nC,"2,000,000.00"\n', "."),  # quoted in a US file
        ("ward;cost\r\nA;1.234,56\r\nB;12,5\r\nC;2.000.000,00\r\n", ","),  # a European file
    ],
)
def test_numbers_with_thousands_separators_load_as_numbers(
    tmp_path: Path, text: str, decimal: str
) -> None:
    # the column loaded as text: AVG(cost) refused, a bounded cost refused the site
    path = tmp_path / "t.csv"
    path.write_text(text, newline="")
    kinds, rows = _table(CSV(path, decimal=decimal))
    assert kinds == {"ward": "VARCHAR", "cost": "DOUBLE"}
    assert rows == [("A", 1234.56), ("B", 12.5), ("C", 2000000.0)]


def test_whole_numbers_with_separators_load_as_integers_and_other_columns_keep_their_text(
    tmp_path: Path,
) -> None:
    # read with DuckDB's thousands option alone, '1,5' of the code column would load as 15
    path = tmp_path / "t.csv"
    path.write_text('ward,n,code\nA,"1,234",x\nB,"2,500,000","1,5"\nC,12,NA\n')
    kinds, rows = _table(CSV(path))
    assert kinds == {"ward": "VARCHAR", "n": "BIGINT", "code": "VARCHAR"}
    assert rows == [("A", 1234, "x"), ("B", 2500000, "1,5"), ("C", 12, None)]


@pytest.mark.parametrize(
    "cells",
    [
        ['"1,234"', '"2,500"', "12"],  # 1.234 with a decimal comma, or 1234: left text
        ['"1,234.5"', '"12,34.5"', "7"],  # not in threes
        ['"1,234.5"', "x", "7"],  # not all numbers
    ],
)
def test_a_column_whose_separators_do_not_tell_stays_text(tmp_path: Path, cells: list[str]) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "ward,cost\n" + "".join(f"{w},{c}\n" for w, c in zip("ABC", cells, strict=True))
    )
    kinds, _ = _table(CSV(path, skip=0))
    assert kinds["cost"] == "VARCHAR"
