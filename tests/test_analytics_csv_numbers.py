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


@pytest.mark.parametrize("space", ["\u00a0", "\u202f"])
def test_numbers_grouped_by_a_no_break_space_load_as_numbers(tmp_path: Path, space: str) -> None:
    # a French export's 1 234,5: the column loaded as text, and a bounded one refused the site
    path = tmp_path / "t.csv"
    path.write_text(
        f"ward;cost;n\nA;1{space}234,5;1{space}000\nB;12,25;7\nC;2{space}000{space}000;NA\n",
        encoding="utf-8",
    )
    kinds, rows = _table(CSV(path, decimal=","))
    assert kinds == {"ward": "VARCHAR", "cost": "DOUBLE", "n": "BIGINT"}
    assert rows == [("A", 1234.5, 1000), ("B", 12.25, 7), ("C", 2000000.0, None)]
    path.write_text(f"ward,cost\nA,1{space}234.5\nB,-12\n", encoding="utf-8")
    kinds, rows = _table(CSV(path))
    assert kinds == {"ward": "VARCHAR", "cost": "DOUBLE"}
    assert rows == [("A", 1234.5), ("B", -12.0)]


@pytest.mark.parametrize(
    "cells",
    [
        ["1\u00a023", "5"],  # not in threes
        ["1\u00a0234", "x"],  # not all numbers
        ["1 234", "5"],  # a plain space: maybe two values run together
    ],
)
def test_a_column_whose_spaces_do_not_group_thousands_stays_text(
    tmp_path: Path, cells: list[str]
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("ward,cost\n" + "".join(f"{w},{c}\n" for w, c in zip("AB", cells, strict=True)))
    kinds, _ = _table(CSV(path, skip=0))
    assert kinds["cost"] == "VARCHAR"


def test_a_bounded_column_of_numbers_grouped_by_a_plain_space_is_refused_saying_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("ward,cost\nA,5\nB,1 234\n")
    with pytest.raises(ValueError, match=r"'1 234' \(digits grouped by a plain space"):
        Site({"t": CSV(path)}, Policy(min_group_size=1, bounds={"cost": (0, 1e4)}), name="north")
