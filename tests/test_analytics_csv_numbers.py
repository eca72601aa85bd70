"""A CSV file's numbers written with thousands separators: read as numbers where unambiguous."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from covey.analytics import CSV, Policy, PolicyError, Site, query


def _table(source: CSV) -> tuple[dict[str, str], list[tuple[object, ...]]]:
    """The columns' types and the rows of a site's table ``t`` read from ``source``."""
    site = Site({"t": source}, Policy(min_group_size=1), name="north")
    with site._con.cursor() as con:
        rows = con.execute("SELECT * FROM t").fetchall()
    return site._columns["t"], rows


def _refusal(path: Path, text: str, read: Callable[[], object]) -> str:
    """What reading table ``t`` from ``path``, holding ``text``, is refused with."""
    path.write_text(text)
    with pytest.raises(ValueError, match=r"table 't': ") as info:
        read()
    return str(info.value)


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


@pytest.mark.parametrize(
    ("text", "read"),
    [
        # a decimal comma elsewhere in the file: '.' groups thousands
        ("id;w;x\n1;1.234;1,5\n2;2.500;2\n", [(1, 1234, 1.5), (2, 2500, 2.0)]),
        # one column of both: '1,5' says the comma is the decimal separator
        ("id;w\n1;1.234\n2;1,5\n3;7\n", [(1, 1234.0), (2, 1.5), (3, 7.0)]),
        # '7.25' can be written with a decimal point only
        ("id;w\n1;1.234\n2;12.500\n3;7.25\n", [(1, 1.234), (2, 12.5), (3, 7.25)]),
    ],
)
def test_a_semicolon_file_s_numbers_tell_its_decimal_separator(
    tmp_path: Path, text: str, read: list[tuple[object, ...]]
) -> None:
    # read with a decimal point whatever the file said: 1,5 left text, 1.234 as 1.234
    path = tmp_path / "t.csv"
    path.write_text(text)
    assert _table(CSV(path))[1] == read


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "id;w\n1;1.234\n2;12.500\n3;7.250\n",
            "column 'w' of {path} holds numbers such as '1.234', which reads as 1.234 with a "
            "decimal point or as 1234 with points grouping thousands, and no number of the "
            "file tells which: say which: covey site --csv-decimal t=, (a decimal comma, "
            "points grouping thousands) or --csv-decimal t=. (a decimal point)",
        ),
        (
            "id;w;x\n1;1.234;1,5\n2;3.1;4\n",
            "{path} writes numbers with a decimal comma (column 'x': '1,5') and with a "
            "decimal point (column 'w': '3.1'): say which: covey site --csv-decimal t=,",
        ),
    ],
)
def test_a_semicolon_file_whose_numbers_do_not_tell_its_decimal_separator_is_refused(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "t.csv"
    assert said.format(path=path) in _refusal(path, text, lambda: _table(CSV(path)))
    # said: read so (a column written the other way stays text)
    assert _table(CSV(path, decimal=","))[1][0][1] == (1234 if "7.250" in text else "1.234")


@pytest.mark.parametrize(
    ("text", "said"),
    [
        # first in the column: taken for a header's row ('line 2 ... reads as a header')
        (
            'ward,cost\nA,"1,234"\nB,12\nC,7\n',
            "the first '1,234' (its comma may group thousands, 1234, or be a decimal comma, "
            "1.234: say which, covey site --csv-decimal t=. if it groups thousands or t=, if "
            "it is a decimal comma",
        ),
        (
            'ward,cost\nA,"1,234.5"\nB,5678.5\nC,7\n',
            "the first '1,234.5' (digits grouped in thousands, which are read so only where "
            "every number of the column is grouped or has three digits at most before the "
            "decimal separator; numbers written without groups, such as '5678.5', make the "
            "column text: write them all one way)",
        ),
        (
            "ward,cost\nA,1 234\nB,12\nC,7\n",
            "the first '1 234' (digits grouped by a plain space, which may be two values run "
            "together",
        ),
        # a decimal point in a file said to write a decimal comma: 'holds text', no more
        (
            "ward;cost\nA;12\nB;1.5\nC;7\n",
            "but it holds text: its values such as '1.5' are written with a decimal point, but "
            "the file is read with a decimal comma (read the file with covey site "
            "--csv-decimal t=. or",
        ),
    ],
)
def test_a_bounded_column_of_grouped_numbers_it_cannot_read_is_refused_saying_why(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "t.csv"
    source = CSV(path, decimal=",") if ";" in text else CSV(path)
    policy = Policy(bounds={"cost": (0, 1e6)}, min_group_size=1)
    assert said in _refusal(path, text, lambda: Site({"t": source}, policy))


def test_a_comma_grouping_thousands_reads_so_where_the_decimal_point_is_said(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.csv"
    path.write_text('ward,cost\nA,"1,234"\nB,"2,500"\nC,12\n')
    assert _table(CSV(path, decimal="."))[1] == [("A", 1234), ("B", 2500), ("C", 12)]


def test_a_where_on_a_column_of_numbers_read_as_text_says_it_holds_text(tmp_path: Path) -> None:
    # digits grouped by a plain space leave an unbounded column text: 'n > 100' was
    # refused saying only to check the literals' types, though 100 is a number
    path = tmp_path / "t.csv"
    path.write_text("ward,n\nA,1 234\nB,12\nC,7\n")
    site = Site({"t": CSV(path)}, Policy(min_group_size=1), name="north")
    with pytest.raises(PolicyError) as info:
        query([site], "SELECT COUNT(*) FROM t WHERE n > 100", secure=False)
    assert "have the types of their columns (at this site, 'n' holds text)" in str(info.value)


@pytest.mark.parametrize(
    ("where", "comparison"),
    [
        ("n > '100'", "n > '100'"),  # counted 9 and 7: '9' > '100' as texts
        ("'100' <= n", "'100' <= n"),
        ("n BETWEEN '5' AND '100'", "n BETWEEN '5' AND '100'"),
    ],
)
def test_a_text_column_ordered_by_a_number_written_as_text_is_refused_naming_it(
    tmp_path: Path, where: str, comparison: str
) -> None:
    # the site compared the texts and answered a count nobody could tell was wrong
    path = tmp_path / "t.csv"
    path.write_text("ward,n\nA,1 234\nB,9\nC,150\nD,7\n")
    site = Site({"t": CSV(path)}, Policy(min_group_size=1), name="north")
    for sql in (
        f"SELECT COUNT(*) FROM t WHERE {where}",  # noqa: S608 - a test's query
        f"SELECT COUNT(*) FILTER (WHERE {where}), COUNT(*) FROM t",  # noqa: S608
    ):
        with pytest.raises(PolicyError) as info:
            query([site], sql, secure=False)
        assert (
            f"(north: {comparison} orders column 'n', which holds text (VARCHAR) at this site, "
            "by a number written as text: it would compare the texts ('9' > '100')"
        ) in str(info.value)


def test_a_text_column_compared_for_equality_or_a_number_column_by_text_is_answered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("ward,n,m\nA,1 234,1\nB,9,200\nC,150,150\nD,7,7\n")
    site = Site({"t": CSV(path)}, Policy(min_group_size=1), name="north")
    said = query([site], "SELECT COUNT(*) FROM t WHERE n = '9' OR m > '100'", secure=False)
    assert said.iloc[0, 0] == 2  # B by its text, B and C by their numbers


def test_a_value_a_comma_may_group_beside_one_only_a_decimal_comma_writes_names_both(
    tmp_path: Path,
) -> None:
    # said only that the comma of '1,234' may group thousands (--csv-decimal t=.),
    # though '56,78' in the same column is no number with a decimal point said
    path = tmp_path / "t.csv"
    said = _refusal(
        path,
        'ward,cost\nA,"1,234"\nB,"56,78"\nC,12\n',
        lambda: Site({"t": CSV(path)}, Policy(bounds={"cost": (0, 1e6)}, min_group_size=1)),
    )
    assert (
        "the first '1,234' (its comma may group thousands, 1234, or be a decimal comma, "
        "1.234; '56,78' in the same column can only be written with a decimal comma: read "
        "the file with covey site --csv-decimal t=, or covey.analytics.CSV(path, "
        "decimal=',') in Python, and write '1,234' without its comma if it stands for 1234)"
    ) in said
