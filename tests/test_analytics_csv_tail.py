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


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("age,ward\n40,A\n50,B\n60,A\nTotal: 3 rows,\n", "Total: 3 rows,"),
        ("age,ward\n40,A\n50,B\n60,A\n\nTotal,\n", "Total,"),  # a blank line above it
        ("age;ward\r\n40;A\r\n50;B\r\nSum;\r\n", "Sum;"),
        ("when,ward\n2026-01-01,A\n2026-01-02,B\n2026-01-03,A\nexported by X,\n", "exported by X,"),
    ],
)
def test_a_summary_line_below_the_rows_that_breaks_a_column_s_type_is_refused(
    tmp_path: Path, text: str, line: str
) -> None:
    # the line loaded as a row, its column of numbers (or dates) as text
    path = tmp_path / "t.csv"
    path.write_text(text, newline="")
    number = len(text.splitlines())
    refused = _refused(path)
    assert refused.startswith(
        f"site 'north': table 't': line {number} of {path} ({line!r}), near its end, holds text"
    )
    assert "remove it; if it is a row, make its value a number or a missing value (NA)" in refused
    # written as a row with a missing value, it loads
    path.write_text(text.replace(line.split(",")[0].split(";")[0], "NA"), newline="")
    _site(path)


@pytest.mark.parametrize(
    "text",
    [
        "ward,n,when\nA,3,2026-01-01\nB,4,2026-01-02\nExported 2026-12-01,,\n",
        "ward;n;cost\r\nA;3;5\r\nB;4;6\r\nTotal: 2 rows;;\r\n",
    ],
)
def test_a_last_line_of_one_value_and_empty_cells_is_refused_naming_it(
    tmp_path: Path, text: str
) -> None:
    # it loaded as a row: COUNT(*) counted one patient too many
    path = tmp_path / "t.csv"
    path.write_text(text, newline="")
    last = text.splitlines()[-1]
    assert _refused(path) == (
        f"site 'north': table 't': line 4 of {path} ({last!r}), its last, holds one value and "
        "empty cells, as no row above does: a note below the rows (an export's date, a total), "
        "which would load as a row? remove it; if it is a row, write its missing values as NA"
    )
    path.write_text(text.replace(",,", ",NA,NA").replace(";;", ";NA;NA"), newline="")
    assert len(_site(path)._columns["t"]) == 3


@pytest.mark.parametrize(
    "text",
    [
        "id,age\nP1,40\nP2,50\nP3,\n",  # two columns: the last age missing
        "id,age,ward\nP1,40,A\nP2,,\nP3,,\n",  # rows above alike
        "age,ward\n40,A\nx,B\n50,A\nTotal,\n",  # text above the last rows too
        "age,ward\n40,A\nunknown,B\n",  # too few rows to tell
    ],
)
def test_last_rows_that_may_be_data_load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    _site(path)


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("ward,n,\nA,3,\nB,4,\nTotal,7,\n", "Total"),  # a spreadsheet's trailing comma
        ("ward;n;cost\r\nA;3;1,5\r\nB;4;2,25\r\nGrand total:;7;3,75\r\n", "Grand total:"),
        ("ward,n\nA,3\nB,4\nSumme,7\n\n", "Summe"),
    ],
)
def test_a_last_row_labelled_a_total_holding_the_sums_above_is_refused(
    tmp_path: Path, text: str, label: str
) -> None:
    # it loaded as a ward named 'Total': SUM(n) answered 14, not 7
    path = tmp_path / "t.csv"
    path.write_text(text, newline="")
    last = text.rstrip().splitlines()[-1]
    assert _refused(CSV(path, decimal="," if ";" in text else ".")) == (
        f"site 'north': table 't': line 4 of {path} ({last!r}), its last, holds the sums of "
        f"the rows above under the label {label!r}: a row of totals, which would load as one "
        "more row, counting the table twice in its sums; remove it"
    )


@pytest.mark.parametrize(
    "text",
    [
        "ward,n\nA,3\nB,4\nTotal,8\n",  # not the sum: a ward may be named so
        "ward,n\nA,3\nB,4\nC,7\n",  # the sum, but no total's label
    ],
)
def test_a_last_row_that_is_no_total_loads(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    assert _site(path)._columns["t"] == {"ward": "VARCHAR", "n": "BIGINT"}


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "age,ward,sex\r\n40,A,F\r\n50,B,M\r\n,,\r\n,,\r\n",
            "line 4 of {path} (',,') holds empty cells alone, and so does 1 other line",
        ),
        ("age;ward\n40;A\n;\n50;B\n", "line 3 of {path} (';') holds empty cells alone"),
    ],
)
def test_rows_of_empty_cells_alone_are_refused_naming_the_first(
    tmp_path: Path, text: str, said: str
) -> None:
    # a spreadsheet's formatted empty rows loaded as rows of NULLs: COUNT(*) counted them
    path = tmp_path / "t.csv"
    path.write_text(text, newline="")
    assert _refused(path) == (
        f"site 'north': table 't': {said.format(path=path)}: a spreadsheet's empty rows, which "
        "would load as rows of missing values, counted by COUNT(*)? remove them; if a row is "
        "data, write its missing values as NA"
    )
    path.write_text(text.replace(",,", "NA,NA,NA").replace("\n;\n", "\nNA;NA\n"), newline="")
    _site(path)


@pytest.mark.parametrize(
    "text",
    [
        "sep=;\r\nname;city\r\nAnn;Oslo\r\nBo;Bergen\r\n",  # was refused as a comment or header
        "\ufeffsep=,\nname,city\nAnn,Oslo\nBo,Bergen\n",  # was refused as a title
        "sep=;\nward;age\nA;40\nB;50\n",  # was refused as a row above the header
    ],
)
def test_a_spreadsheet_s_line_naming_the_delimiter_is_skipped(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text, newline="", encoding="utf-8")
    assert list(_site(path)._columns["t"]) in (["name", "city"], ["ward", "age"])
