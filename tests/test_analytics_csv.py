"""A site's CSV file: a header DuckDB's reader may guess wrong is refused; missing values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covey.analytics import CSV, Policy, PolicyError, Site, query

POLICY = Policy(bounds={"age": (0, 120)}, domains={"ward": ["A", "B"]}, min_group_size=1)


def _site(path: Path | CSV, name: str = "north", policy: Policy = POLICY) -> Site:
    return Site({"t": path if isinstance(path, CSV) else str(path)}, policy, name=name)


def _refused(path: Path | CSV, policy: Policy | None = None) -> str:
    """Why a site serving ``path`` refuses (by default under a policy bounding nothing)."""
    with pytest.raises(ValueError, match=r"^site 'north': table 't': ") as info:
        _site(path, policy=Policy(min_group_size=1) if policy is None else policy)
    return str(info.value)


def test_a_row_of_more_fields_read_as_one_column_is_refused_naming_the_line(
    tmp_path: Path,
) -> None:
    # DuckDB's reader found no delimiter and loaded every line as one column 'age,ward'
    path = tmp_path / "t.csv"
    path.write_text("age,ward\n40,A\n50,B,extra\n60,A\n")
    refused = _refused(path)
    assert refused == (
        f"site 'north': table 't': DuckDB's reader finds no delimiter that splits every line "
        f"of {path} alike, and would load it as one column named 'age,ward'; line 3 "
        "('50,B,extra') has 3 fields, line 1 ('age,ward') 2: give every row as many fields "
        "as the header"
    )


@pytest.mark.parametrize(
    ("note", "data"),
    [
        ("exported by X, 2026-01-01\n", "age,ward\n40,A\n50,B\n"),  # taken for the header
        ("#exported by X, 2026-01-01\n", "age,ward\n40,A\n50,B\n"),  # no comment: no space
        ("exported by X, 2026-01-01\n", "age,ward,n\n40,A,1\n50,B,2\n"),  # skipped, unsaid
    ],
)
def test_a_note_of_fields_above_the_header_is_refused_naming_it(
    tmp_path: Path, note: str, data: str
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(note + data)
    said = _refused(path, POLICY)
    assert str(path) in said
    assert repr(note.strip()) in said
    assert "line 1" in said
    assert "CSV(path, skip=1)" in said
    # said where the header is, the file loads under its header's names
    site = _site(CSV(path, skip=1))
    assert list(site._columns["t"])[:2] == ["age", "ward"]
    assert site._columns["t"]["age"] == "BIGINT"


def test_text_on_the_first_row_of_a_number_column_is_refused_unless_the_header_is_said(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("age,ward\nunknown,A\n40,B\n50,A\n")
    with pytest.raises(ValueError, match=r"line 2 of .* \('unknown,A'\) reads as a header"):
        _site(path, policy=Policy(min_group_size=1))
    site = _site(CSV(path, skip=0), policy=Policy(min_group_size=1))
    assert site._columns["t"] == {"age": "VARCHAR", "ward": "VARCHAR"}


@pytest.mark.parametrize("na", ["NA", "N/A", "NULL", ".", ""])
def test_missing_values_read_as_null_so_sites_answer_alike(tmp_path: Path, na: str) -> None:
    # 'NA' made the whole column text at one site: AVG(age) refused there, answered elsewhere
    rng = np.random.default_rng(3)
    ages = rng.integers(20, 80, 60)
    wards = rng.choice(["A", "B"], 60)
    (tmp_path / "a.csv").write_text(
        "age,ward\n" + "".join(f"{a},{w}\n" for a, w in zip(ages[:30], wards[:30], strict=True))
    )
    cells = [na if i % 7 == 3 else str(a) for i, a in enumerate(ages[30:])]
    (tmp_path / "b.csv").write_text(
        "age,ward\n" + "".join(f"{a},{w}\n" for a, w in zip(cells, wards[30:], strict=True))
    )
    sites = [_site(tmp_path / "a.csv"), _site(tmp_path / "b.csv", name="south")]
    assert sites[1]._columns["t"]["age"] == "BIGINT"
    df = query(sites, "SELECT ward, AVG(age) FROM t GROUP BY ward", secure=False)
    assert df.attrs["refused"] == {}
    frame = pd.DataFrame({"age": list(ages[:30]) + cells, "ward": wards})
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    want = frame.groupby("ward")["age"].mean()
    assert df["AVG(age)"].tolist() == pytest.approx([want["A"], want["B"]], rel=1e-9)


def test_a_bounded_column_of_text_is_refused_when_the_site_starts(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("age,ward\n40,A\n50,B\nunknown,A\n60,B\nNA,A\n")
    refused = _refused(path, POLICY)
    assert refused == (
        "site 'north': table 't': the policy bounds column 'age', but it holds text: 1 "
        "row holds a value that is no number, the first 'unknown'; give numbers in it, and "
        "leave missing values empty (a CSV file's NA, N/A, NULL and . are missing values too, "
        "unless its CSV(path, na=...) or covey site --csv-na t=... says otherwise)"
    )
    with pytest.raises(ValueError, match=r"column 'age', but it holds text: 2 rows hold"):
        _site(CSV(path, na=()))
    # a column the policy does not bound may hold text
    assert _site(path, policy=Policy(min_group_size=1))._columns["t"]["age"] == "VARCHAR"


def test_another_tables_column_of_text_by_the_bounded_name_still_loads(tmp_path: Path) -> None:
    # The policy's bounds name a column in every table: a site whose second table holds
    # age ranges ("40-49") under that name loaded before the refusal above; it still does.
    visits, ranges = tmp_path / "visits.csv", tmp_path / "ranges.csv"
    visits.write_text("age,ward\n40,A\n50,B\n")
    ranges.write_text("age,n\n40-49,3\n50-59,4\n")
    policy = Policy(bounds={"age": (0, 120)}, min_group_size=1)
    site = Site({"a": str(visits), "b": str(ranges)}, policy, name="north")
    assert site._columns["b"]["age"] == "VARCHAR"
    assert query([site], "SELECT SUM(age) FROM a", secure=False)["SUM(age)"].tolist() == [90]
    with pytest.raises(PolicyError, match="SUM\\(age\\) needs numbers, but column 'age'"):
        query([site], "SELECT SUM(age) FROM b", secure=False)  # refused per query


def test_a_decimal_comma_is_said_and_read_when_the_csv_says_so(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("age;ward\n40,5;A\n50;B\n60,25;A\n")
    with pytest.raises(ValueError, match=r"first '40,5' \(a decimal comma: .*decimal=','\)"):
        _site(CSV(path, decimal="."))
    # its numbers tell the decimal separator: '40,5' can be written with a comma only
    assert _site(path)._columns["t"] == {"age": "DOUBLE", "ward": "VARCHAR"}
    site = _site(CSV(path, decimal=","))
    assert site._columns["t"] == {"age": "DOUBLE", "ward": "VARCHAR"}
    df = query([site], "SELECT SUM(age) FROM t", secure=False)
    assert df["SUM(age)"].tolist() == pytest.approx([150.75])


def test_a_byte_order_mark_crlf_and_quoted_header_keep_the_header_s_names(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbf"age","ward"\r\n40,A\r\nNA,B\r\n50,A\r\n')
    site = _site(path)
    assert site._columns["t"] == {"age": "BIGINT", "ward": "VARCHAR"}
    # a header alone, or one row below it, leaves nothing to check the header by
    for text in ("age,ward\n", "age,ward\n40,A\n"):
        path.write_text(text)
        assert list(_site(path, policy=Policy(min_group_size=1))._columns["t"]) == ["age", "ward"]


def test_csv_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"skip= takes a number of lines"):
        CSV("t.csv", skip=-1)
    with pytest.raises(ValueError, match=r"na= takes a list of texts"):
        CSV("t.csv", na="NA")
    with pytest.raises(ValueError, match=r"decimal= takes '.' or ','"):
        CSV("t.csv", decimal=";")


@pytest.mark.parametrize(
    ("text", "top"),
    [
        ("exported by X, 2026\nage,ward\n", 1),  # the note's fields named the columns
        ("Report\nexported by X, 2026\nage,ward\n", 2),  # below a title, skipped
    ],
)
def test_a_note_of_fields_above_a_header_with_no_rows_is_refused(
    tmp_path: Path, text: str, top: int
) -> None:
    # loaded as columns 'exported by X' and '2026' holding one row 'age', 'ward'
    path = tmp_path / "t.csv"
    path.write_text(text)
    refused = _refused(path)
    assert refused == (
        f"site 'north': table 't': DuckDB's reader would take line {top} of {path} "
        f"('exported by X, 2026') for the header and line {top + 1} ('age,ward') for its one "
        "row, but both are text and no row below tells which is the header: line "
        f"{top} may be a note above it. If the header is line {top + 1}, remove line {top} "
        f"(or skip it: covey site --csv-skip t={top}, or covey.analytics.CSV(path, "
        f"skip={top}) in Python); if it is line {top}, say so: covey site --csv-skip "
        f"t={top - 1}, or covey.analytics.CSV(path, skip={top - 1}) in Python"
    )
    site = _site(CSV(path, skip=top), policy=Policy(min_group_size=1))
    assert site._columns["t"] == {"age": "VARCHAR", "ward": "VARCHAR"}
    # a header said to be the first line keeps its one row of text
    path.write_text("name,ward\nBob,B\n")
    site = _site(CSV(path, skip=0), policy=Policy(min_group_size=1))
    assert list(site._columns["t"]) == ["name", "ward"]


@pytest.mark.parametrize("text", ["age,ward\n40,A\n", "age,ward\n40,\n", "age,ward\n,A\n"])
def test_one_row_below_a_header_holding_a_number_or_an_empty_cell_loads(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    assert list(_site(path, policy=Policy(min_group_size=1))._columns["t"]) == ["age", "ward"]


def test_a_row_of_one_field_is_said_so_not_1_fields(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("age,ward\n40,A\n50\n60,B\n")
    with pytest.raises(ValueError, match=r"line 3 \('50'\) has 1 field, line 1 \('age,ward'\) 2:"):
        _site(path, policy=Policy(min_group_size=1))


def test_a_one_column_file_with_a_later_row_of_more_fields_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    # loaded as the columns '2' and '3' with no rows: the header 'a' and row '1' skipped
    path = tmp_path / "one.csv"
    path.write_text("a\n1\n2,3\n")
    refused = _refused(path)
    assert refused == (
        f"site 'north': table 't': DuckDB's reader would skip lines 1 to 2 of {path} and take "
        "line 3 ('2,3') for the header of a table with no rows; line 3 ('2,3') has 2 fields, "
        "line 1 ('a') 1: give every row as many fields as the header; if the lines above "
        "line 3 are notes, remove them (or skip them: covey site --csv-skip t=2, or "
        "covey.analytics.CSV(path, skip=2) in Python)"
    )
    # a title line above a header with no rows is left skipped
    path.write_text("Report\nage,ward\n")
    assert list(_site(path, policy=Policy(min_group_size=1))._columns["t"]) == ["age", "ward"]


@pytest.mark.parametrize(
    "policy",
    [
        Policy(bounds={"age": (0, 120)}, min_group_size=1),
        Policy(columns=["age", "ward"], min_group_size=1),
        Policy(domains={"ward": ["A", "B"]}, min_group_size=1),
    ],
)
def test_a_note_above_a_header_of_text_columns_is_refused_when_the_policy_names_the_row_below(
    tmp_path: Path, policy: Policy
) -> None:
    # every column below reads as text ('40,5', '?'), so the note named the columns
    path = tmp_path / "t.csv"
    path.write_text("exported by X; Hospital A\nage;ward\n40,5;A\n?;B\n50;A\n")
    refused = _refused(path, policy)
    held = "'ward'" if not policy.bounds and not policy.columns else "'age'"
    held = "columns 'age', 'ward'" if policy.columns else f"column {held}"
    assert refused == (
        f"site 'north': table 't': the policy names the {held}, which line 1 of {path} "
        "('exported by X; Hospital A'), taken by DuckDB's reader for the header, does not name but "
        "line 2 ('age;ward') holds: line 1 may be a note above the header; remove it (or skip "
        "it: covey site --csv-skip t=1, or covey.analytics.CSV(path, skip=1) in Python)"
    )
    site = _site(CSV(path, skip=1, na=["?"], decimal=","), policy=policy)
    assert site._columns["t"] == {"age": "DOUBLE", "ward": "VARCHAR"}
    # a header said to be the first line is not second-guessed
    assert "age" not in _site(CSV(path, skip=0), policy=policy)._columns["t"]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        # loaded as one text column, the row '2,3' one value of it
        ("a\n1\n2,3\n4\n", "line 3 ('2,3') as one value of it; line 3 has 2 fields split at ','"),
        ("name\nAnn\nBob,Jr\nCid\n", "line 3 ('Bob,Jr') as one value of it; line 3 has 2"),
        # loaded as the columns '2' and '3' holding the row below, 'a' and '1' skipped
        ("a\n1\n2,3\n4,5\n", "would skip lines 1 to 2 of {path} and take line 3 ('2,3')"),
        ("a\n2,3\n4,5\n6,7\n", "would skip line 1 of {path} and take line 2 ('2,3')"),
        ("a\n1\n2;3\n4;5\n", "would skip lines 1 to 2 of {path} and take line 3 ('2;3')"),
    ],
)
def test_a_one_column_file_with_a_longer_row_and_rows_below_is_refused_naming_it(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "one.csv"
    path.write_text(text)
    refused = _refused(path)
    assert said.format(path=path) in refused
    assert "give every row as many fields as the header" in refused
    if "skip" not in said:  # no line skipped: said so, the file is refused all the same
        with pytest.raises(ValueError, match="as one value of it"):
            _site(CSV(path, skip=0), policy=Policy(min_group_size=1))


@pytest.mark.parametrize("text", ['name\n"Bob,Jr"\nCid\n', "note\nfoo; bar\nbaz\n", "a\n1\n2\n3\n"])
def test_a_one_column_file_of_even_rows_loads(tmp_path: Path, text: str) -> None:
    path = tmp_path / "one.csv"
    path.write_text(text)
    site = _site(path, policy=Policy(min_group_size=1))
    assert len(site._columns["t"]) == 1


@pytest.mark.parametrize("text", ["1,2\n3,4\n5,6\n", "40\n50\n", "2024-01-01,2024-02-01\n1,2\n"])
def test_a_file_of_no_header_is_refused_not_named_by_its_first_row(
    tmp_path: Path, text: str
) -> None:
    # '1,2' loaded as the columns '1' and '2', the first row lost
    path = tmp_path / "t.csv"
    path.write_text(text)
    first = text.splitlines()[0]
    refused = _refused(path)
    assert refused == (
        f"site 'north': table 't': line 1 of {path} ({first!r}), which DuckDB's reader would "
        "take for the header, holds only numbers or dates, no column names: give the file a "
        "header row naming its columns (or, if line 1 is the header, say so: covey site "
        "--csv-skip t=0, or covey.analytics.CSV(path, skip=0) in Python)"
    )
    assert list(_site(CSV(path, skip=0), policy=Policy(min_group_size=1))._columns["t"]) == (
        first.split(",")
    )
    # a header naming a column by a year beside a name loads
    path.write_text("ward,2024\nA,1\nB,2\n")
    assert list(_site(path, policy=Policy(min_group_size=1))._columns["t"]) == ["ward", "2024"]


@pytest.mark.parametrize(
    "data",
    [
        b"name,city\nAnn,Oslo\n",
        b"name,city\r\nAnn,Oslo",  # CRLF, no line end on the last line
        b"\xef\xbb\xbfname;city\nAnn;Oslo\n",  # a byte order mark, ';'-delimited
        b'"name","city"\n"Ann","Oslo"\n',
        b"Report\nname,city\nAnn,Oslo\n",  # below a title line, skipped
    ],
)
def test_one_row_of_text_below_a_header_of_names_loads_under_it(
    tmp_path: Path, data: bytes
) -> None:
    # refused: no row below told the header from a note, though line 1 named the columns
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    site = _site(path, policy=Policy(min_group_size=1))
    assert site._columns["t"] == {"name": "VARCHAR", "city": "VARCHAR"}
    assert site._con.execute("SELECT * FROM t").fetchall() == [("Ann", "Oslo")]


@pytest.mark.parametrize(
    ("note", "data"),
    [
        ("exported by X, 2026-01-01\n", "name,city\nAnn,Oslo\nBob,Rome\n"),
        ("exported by X; 2026\n", "age;ward\n40,5;A\n?;B\n50;A\n"),  # ages of text too
        ("Report,2026\n", "name,city\nAnn,Oslo\n"),  # one row below the header
    ],
)
@pytest.mark.parametrize("policy", [Policy(min_group_size=1), POLICY])
def test_a_note_dated_above_a_header_of_text_columns_is_refused_whatever_the_policy(
    tmp_path: Path, note: str, data: str, policy: Policy
) -> None:
    # loaded as the columns 'exported by X' and '2026-01-01', the header a row of them
    path = tmp_path / "t.csv"
    path.write_text(note + data)
    refused = _refused(path, policy)
    date = note.strip().replace(";", ",").split(",")[1].strip()
    assert refused == (
        f"site 'north': table 't': line 1 of {path} ({note.strip()!r}), which DuckDB's reader "
        f"would take for the header, names column 2 {date!r}, a number or a date, though it "
        "holds text: line 1 may be a note above the header; remove it (or skip it: covey site "
        "--csv-skip t=1, or covey.analytics.CSV(path, skip=1) in Python); if line 1 is the "
        "header, say so: covey site --csv-skip t=0, or covey.analytics.CSV(path, skip=0) in "
        "Python"
    )
    site = _site(CSV(path, skip=1, na=["?"], decimal=","), policy=policy)
    assert list(site._columns["t"]) == data.split("\n")[0].replace(";", ",").split(",")


@pytest.mark.parametrize(
    ("rows", "line"),
    [(["name,city", "Ann,Tromsø", "Bob,Rome"], 2), (["år,ward", "40,A"], 1)],
)
def test_a_latin_1_file_is_refused_naming_the_line_and_the_encoding(
    tmp_path: Path, rows: list[str], line: int
) -> None:
    # said only 'CSV Error on Line: 2'
    path = tmp_path / "t.csv"
    path.write_bytes("\n".join(rows).encode("latin-1") + b"\n")
    bad = rows[line - 1].replace("ø", "\ufffd").replace("å", "\ufffd")
    byte = "0xf8" if "ø" in rows[line - 1] else "0xe5"
    for source in (path, CSV(path, skip=0)):
        refused = _refused(source)
        assert refused == (
            f"site 'north': table 't': {path} is not UTF-8 text: line {line} ({bad!r}) holds "
            f"the byte {byte}, which UTF-8 text does not (a file saved as Latin-1 or "
            "Windows-1252 holds such bytes for letters like ø or é): save it as UTF-8 ('CSV "
            "UTF-8' in a spreadsheet), or convert it: iconv -f latin1 -t utf-8"
        )
    path.write_text("age,ward\n40,A\n", encoding="utf-16")
    with pytest.raises(ValueError, match=r"is UTF-16 text .*not UTF-8: save it as UTF-8"):
        _site(path, policy=Policy(min_group_size=1))


@pytest.mark.parametrize("data", [b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"])
def test_a_file_of_a_byte_order_mark_alone_is_said_empty(tmp_path: Path, data: bytes) -> None:
    # said 'Sniffer detected value different than the user input for the Header options'
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    refused = _refused(path)
    assert refused == (f"site 'north': table 't': {path} is empty; give at least its header row")


@pytest.mark.parametrize(
    ("text", "names", "rows"),
    [
        ("# exported by X, 2026\nage,ward\n40,A\n50,B\n", ["age", "ward"], 2),  # the header
        ("# a\n# b\nage,ward\n40,A\n", ["age", "ward"], 1),  # 'Sniffer detected value ...'
        ("# a\n\n# b\n\nname,city\nAnn,Oslo\nBob,Bergen\n", ["name", "city"], 2),
        ("# a, 2026\nage,ward\n40,A\n50,B\n", ["age", "ward"], 2),  # as '# a', '2026'
        ("#,age\n1,40\n2,50\n", ["#", "age"], 2),  # a column named '#': no comment
        ("#id,age\n1,40\n2,50\n", ["#id", "age"], 2),
    ],
)
def test_comment_lines_at_the_top_are_skipped_and_the_header_found_below(
    tmp_path: Path, text: str, names: list[str], rows: int
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    site = _site(path, policy=Policy(min_group_size=1))
    assert list(site._columns["t"]) == names
    assert site._con.execute("SELECT COUNT(*) FROM t").fetchone() == (rows,)


@pytest.mark.parametrize(
    "text", ["# a, b\nname,city\nAnn,Oslo\nBob,Bergen\n", "# patients,ward\nx,A\ny,B\n"]
)
def test_a_lone_hash_line_above_text_columns_is_refused_naming_either_skip(
    tmp_path: Path, text: str
) -> None:
    # '# patients,ward' above 'x,A' loaded under 'x', 'A', its first row lost; '# a, b'
    # above 'name,city' loaded under 'name', 'city': nothing in text columns tells which
    path = tmp_path / "t.csv"
    path.write_text(text)
    first, second = text.splitlines()[:2]
    refused = _refused(path)
    assert refused == (
        f"site 'north': table 't': line 1 of {path} ({first!r}) may be a comment above the "
        f"header on line 2 ({second!r}) or the header itself, and its text columns do not "
        "tell which: if it is a comment, covey site --csv-skip t=1, or "
        "covey.analytics.CSV(path, skip=1) in Python; if it names the columns, covey site "
        "--csv-skip t=0, or covey.analytics.CSV(path, skip=0) in Python"
    )
    for skip, names in ((1, second.split(",")), (0, first.split(","))):
        site = _site(CSV(path, skip=skip), policy=Policy(min_group_size=1))
        assert list(site._columns["t"]) == [n.strip() for n in names]
        rows = len(text.splitlines()) - 1 - skip
        assert site._con.execute("SELECT COUNT(*) FROM t").fetchone() == (rows,)


def test_a_file_of_comment_lines_alone_is_refused_saying_so(tmp_path: Path) -> None:
    # loaded as a column '# exported by X' with no rows
    path = tmp_path / "t.csv"
    path.write_text("# exported by X\n\n")
    refused = _refused(path)
    assert refused == (
        f"site 'north': table 't': {path} holds only comment lines ('# ...'), no header row: "
        "give it a header row naming its columns below them"
    )


def test_a_title_below_comment_lines_is_refused_naming_it(tmp_path: Path) -> None:
    # loaded as one column 'Patients' holding the rows 'age;ward', '40;A' and '50;B'
    path = tmp_path / "t.csv"
    path.write_text("## c; d\n# e\nPatients\nage;ward\n40;A\n50;B\n")
    refused = _refused(path)
    assert refused == (
        f"site 'north': table 't': line 3 of {path} ('Patients'), below its comment lines, "
        "would be read as the header of one column, though DuckDB's reader splits the lines "
        "below at ';': if line 3 is a title, remove it (or skip it too: covey site "
        "--csv-skip t=3, or covey.analytics.CSV(path, skip=3) in Python)"
    )
    site = _site(CSV(path, skip=3), policy=Policy(min_group_size=1))
    assert site._columns["t"] == {"age": "BIGINT", "ward": "VARCHAR"}


@pytest.mark.parametrize(
    ("dates", "said"),
    [
        (["01/02/2026", "03/04/2026"], "day/month ('%d/%m/%Y': '01/02/2026' for 2026-02-01)"),
        (["01-02-2026", ""], "day/month ('%d-%m-%Y': '01-02-2026' for 2026-02-01)"),
    ],
)
def test_dates_that_read_as_day_month_and_month_day_alike_are_refused(
    tmp_path: Path, dates: list[str], said: str
) -> None:
    # loaded as February 1st: a file written month/day meant January 2nd
    path = tmp_path / "t.csv"
    path.write_text("date,n\n" + "".join(f"{d},{i}\n" for i, d in enumerate(dates)))
    refused = _refused(path)
    assert refused == (
        f"site 'north': table 't': column 'date' of {path} holds dates such as "
        f"{dates[0]!r} that read as day/month and as month/day alike (no day above 12 in any "
        f"row), and DuckDB's reader would take them as {said}: write them as YYYY-MM-DD, "
        "which reads one way"
    )


@pytest.mark.parametrize(
    ("dates", "first"),
    [
        (["01/13/2026", "03/04/2026"], "2026-01-13"),  # month/day: a day above 12 tells
        (["13/01/2026", "03/04/2026"], "2026-01-13"),  # day/month
        (["01/01/2026", "03/03/2026"], "2026-01-01"),  # read alike either way
        (["01.02.2026", "03.04.2026"], "2026-02-01"),  # dots: day/month
        (["2026-01-02", "2026-03-04"], "2026-01-02"),
    ],
)
def test_dates_a_row_tells_load(tmp_path: Path, dates: list[str], first: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text("date,n\n" + "".join(f"{d},{i}\n" for i, d in enumerate(dates)))
    site = _site(path, policy=Policy(min_group_size=1))
    assert site._columns["t"]["date"] == "DATE"
    row = site._con.execute("SELECT date FROM t WHERE n = 0").fetchone()
    assert row is not None
    assert str(row[0]) == first


def test_a_year_named_column_of_decimal_commas_is_refused_naming_the_decimal_option(
    tmp_path: Path,
) -> None:
    # said only that line 1 may be a note, and to skip it
    path = tmp_path / "t.csv"
    path.write_text("ward;2023\nA;5,5\nB;7,25\n")
    refused = _refused(CSV(path, decimal="."))
    assert (
        "names column 2 '2023', a number or a date, though it holds text ('5,5': a decimal "
        "comma? if so, read the file with covey site --csv-decimal t=, or "
        "covey.analytics.CSV(path, decimal=',') in Python): line 1 may be a note" in refused
    )
    site = _site(CSV(path, decimal=","), policy=Policy(min_group_size=1))
    assert site._columns["t"] == {"ward": "VARCHAR", "2023": "DOUBLE"}
    path.write_text("ward;2023\nA;5,5\nB;n/a 7\nC;3,5\n")  # a value no number: not said
    assert "decimal" not in _refused(path)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        # failed with DuckDB's 'Conversion Error: CSV Error on Line: 3'
        (
            "Patients\n\nage,ward\n40,A\n50,B\n",
            "but it is blank: the first line below it that is not blank is line 3 "
            "('age,ward'); if that is the header, say so: covey site --csv-skip t=2, or "
            "covey.analytics.CSV(path, skip=2) in Python",
        ),
        ("age,ward\n", "but the file ends there: give the number of lines above the header"),
    ],
)
def test_a_said_skip_leaving_a_blank_line_for_the_header_is_refused_naming_the_line_below(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    refused = _refused(CSV(path, skip=1))
    assert refused == (f"site 'north': table 't': skip=1 makes line 2 of {path} the header, {said}")


@pytest.mark.parametrize(
    ("admitted", "born"),
    [
        (["12/25/2026", "11/20/2026"], ["1990-01-02", "1985-03-04"]),  # month/day
        (["25/12/2026", "20/11/2026"], ["1990-02-01", "1985-04-03"]),  # day/month
    ],
)
def test_a_date_column_with_no_day_above_12_loads_where_another_tells_the_format(
    tmp_path: Path, admitted: list[str], born: list[str]
) -> None:
    # refused: 'born' was checked on its own, though the reader reads both by one format
    path = tmp_path / "t.csv"
    written = ["01/02/1990", "03/04/1985"]
    path.write_text(
        "id,admitted,born\n"
        + "".join(f"{i},{a},{b}\n" for i, (a, b) in enumerate(zip(admitted, written, strict=True)))
    )
    site = _site(path, policy=Policy(min_group_size=1))
    rows = site._con.execute("SELECT born FROM t ORDER BY id").fetchall()
    assert [str(r[0]) for r in rows] == born


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("# of visits,ward\n3,A\n4,B\n", ["# of visits", "ward"]),
        ("## count;ward\n3;A\n4;B\n", ["## count", "ward"]),
        ("# exported by X\n# of visits,ward\n3,A\n4,B\n", ["# of visits", "ward"]),
        # split at ',' below it, as '5' and '5;A'
        ("# weight;ward\n5,5;A\n6,5;B\n", ["# weight", "ward"]),
    ],
)
def test_a_header_whose_first_name_begins_with_a_hash_and_a_space_is_no_comment(
    tmp_path: Path, text: str, names: list[str]
) -> None:
    # loaded under the names '3' and 'A', the first row lost: the header was taken for a comment
    path = tmp_path / "t.csv"
    path.write_text(text)
    site = _site(path, policy=Policy(min_group_size=1))
    assert list(site._columns["t"]) == names
    assert site._con.execute("SELECT COUNT(*) FROM t").fetchone() == (2,)


def test_timestamps_that_read_as_day_month_and_month_day_alike_are_refused(tmp_path: Path) -> None:
    # loaded as February 1st, 10:00: a file written month/day meant January 2nd
    path = tmp_path / "t.csv"
    path.write_text("id,seen\n1,01/02/2026 10:00:00\n2,03/04/2026 11:00:00\n")
    assert _refused(path) == (
        f"site 'north': table 't': column 'seen' of {path} holds dates such as "
        "'01/02/2026 10:00:00' that read as day/month and as month/day alike (no day above "
        "12 in any row), and DuckDB's reader would take them as day/month ('%d/%m/%Y "
        "%H:%M:%S': '01/02/2026 10:00:00' for 2026-02-01T10:00:00): write them as YYYY-MM-DD "
        "HH:MM:SS, which reads one way"
    )
    # a date column's day above 12 tells the timestamps' reading too
    path.write_text("id,seen,on\n1,01/02/2026 10:00:00,13/02/2026\n2,03/04/2026 11:00:00,\n")
    site = _site(path, policy=Policy(min_group_size=1))
    row = site._con.execute("SELECT seen FROM t WHERE id = 1").fetchone()
    assert row is not None
    assert str(row[0]) == "2026-02-01 10:00:00"


def test_spaces_around_text_values_are_trimmed_so_the_domain_matches(tmp_path: Path) -> None:
    # 'Ann, 40, A': the ward ' A' was no ward of the domain, its rows counted outside it
    path = tmp_path / "t.csv"
    path.write_text("name, age, ward\nAnn, 40, A\nBob, 50, B \nCid, 60,  A\n NA, 70, B\n")
    site = _site(path)
    with site._con.cursor() as con:
        rows = con.execute("SELECT name, age, ward FROM t").fetchall()
    assert rows == [("Ann", 40, "A"), ("Bob", 50, "B"), ("Cid", 60, "A"), (None, 70, "B")]
    df = query([site], "SELECT ward, COUNT(*) AS n FROM t GROUP BY ward", secure=False)
    assert df["n"].tolist() == [2, 2]
    assert df.attrs["outside_domain"] == 0


@pytest.mark.parametrize("decimal", [None, ",", "."])
@pytest.mark.parametrize(("header", "sep"), [("ward;age;cost", ";"), ("ward\tage\tcost", "\t")])
def test_a_header_split_by_another_delimiter_than_its_rows_is_refused_naming_both(
    tmp_path: Path, decimal: str | None, header: str, sep: str
) -> None:
    # loaded with the columns 'A', '40' and '12.5' and row A lost; with a decimal
    # comma said, refused as a file whose line 3 'reads as a header'
    path = tmp_path / "t.csv"
    path.write_text(f"{header}\nA,40,12.5\nB,50,13.5\nC,60,14\n")
    said = _refused(CSV(path, decimal=decimal), Policy(min_group_size=1))
    assert f"line 1 of {path} (" in said
    assert f") is split by {sep!r} into 3 fields, and the rows" in said
    assert "below it by ',' into as many: DuckDB's reader would skip it and take line 2" in said
    assert "If line 1 is the header, write it with ',' between its names" in said


def test_a_note_above_the_header_without_the_rows_delimiter_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("Patients\nward,age\nA,40\nB,50\n")
    site = Site({"t": path}, Policy(min_group_size=1), name="north")
    assert list(site._columns["t"]) == ["ward", "age"]
