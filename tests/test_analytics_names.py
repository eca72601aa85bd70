"""Table and column names as SQL reads them: ASCII case ignored, any other character kept."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from covey.analytics import Policy, PolicyError, Site, query


def _frames() -> list[pd.DataFrame]:
    rng = np.random.default_rng(7)
    return [
        pd.DataFrame(
            {
                "Age": rng.integers(20, 90, 60).astype(float),
                "Sex": rng.choice(["F", "M"], 60),
                "âge": rng.uniform(0, 1, 60),
                "age at dx": rng.uniform(0, 10, 60),
                'we"ird': rng.uniform(-1, 1, 60),
            }
        )
        for _ in range(3)
    ]


def _pooled(frames: list[pd.DataFrame], sql: str) -> pd.DataFrame:
    con = duckdb.connect()
    con.register("patients", pd.concat(frames, ignore_index=True))
    return con.execute(sql).df()


@pytest.mark.parametrize("secure", [False, True])
def test_names_in_another_case_than_the_table_or_policy_read_the_same_column(
    secure: bool,
) -> None:
    # DuckDB reads AVG(age) over a column Age: the sites did not (no bounds for 'age')
    frames = _frames()
    policy = Policy(
        tables=["PATIENTS"],
        columns=["age", "SEX"],
        bounds={"AGE": (0, 120)},
        domains={"sex": ["F", "M"]},
        min_group_size=5,
    )
    sites = [Site({"Patients": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]
    sql = "SELECT SEX, COUNT(*), AVG(age), SUM(Age) FROM patients WHERE AGE > 30 GROUP BY sex"
    df = query(sites, sql, secure=secure)
    want = _pooled(frames, sql + " ORDER BY sex")
    assert df["SEX"].tolist() == ["F", "M"]
    assert df["COUNT(*)"].tolist() == want["count_star()"].tolist()
    assert df["AVG(age)"].tolist() == pytest.approx(want["avg(age)"].tolist(), rel=1e-9)
    assert df["SUM(Age)"].tolist() == pytest.approx(want["sum(Age)"].tolist(), rel=1e-9)
    assert df.attrs["refused"] == {}


@pytest.mark.parametrize("secure", [False, True])
def test_unicode_spaced_and_quoted_column_names_are_answered(secure: bool) -> None:
    # the sites failed with "ValueError: 'âge' is not a valid table or column name"
    frames = _frames()
    policy = Policy(
        bounds={"âge": (0, 1), "age at dx": (0, 10), 'we"ird': (-1, 1)}, min_group_size=5
    )
    sites = [Site({"patients": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]
    sql = (
        'SELECT AVG(âge), SUM("age at dx"), COUNT("we""ird"), AVG("we""ird") FROM patients '
        'WHERE "age at dx" < 8 AND âge > 0.1'
    )
    got = query(sites, sql, secure=secure).iloc[0].tolist()
    want = _pooled(frames, sql).iloc[0].tolist()
    assert got == pytest.approx(want, rel=1e-9)


def test_a_non_ascii_letter_in_another_case_is_another_name() -> None:
    # as DuckDB reads it: ÂGE is not âge, and the site says so
    frames = _frames()
    policy = Policy(bounds={"âge": (0, 1)}, min_group_size=5)
    sites = [Site({"patients": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]
    with pytest.raises(PolicyError, match="no bounds for 'ÂGE'"):
        query(sites, "SELECT AVG(ÂGE) FROM patients", secure=False)


def test_names_that_differ_only_in_case_are_refused_not_renamed(tmp_path: Path) -> None:
    # DuckDB loads columns age, Age, Age_1 as age, Age_1, Age_1_1: AVG(Age_1) read
    # the column Age
    frame = pd.DataFrame({"age": [1.0] * 20, "Age": [2.0] * 20, "Age_1": [3.0] * 20})
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    policy = Policy(bounds={"Age_1": (0, 10)}, min_group_size=1)
    for source in (frame, str(tmp_path / "t.parquet"), str(tmp_path / "t.csv")):
        with pytest.raises(ValueError, match=r"columns 'age' and 'Age'.*rename one"):
            Site({"t": source}, policy)
    with pytest.raises(ValueError, match=r"bounds names 'age' and 'AGE'"):
        Policy(bounds={"age": (0, 1), "AGE": (0, 2)})
    with pytest.raises(ValueError, match=r"columns names 'sex' and 'Sex'"):
        Policy(columns=["sex", "Sex"])


def test_two_columns_of_one_name_are_refused_not_renamed(tmp_path: Path) -> None:
    # DuckDB loaded the second 'x' as 'x_1', and SUM(x) read the first one alone
    frame = pd.DataFrame([[1.0, 100.0], [2.0, 200.0]], columns=["x", "x"])
    (tmp_path / "t.csv").write_text("x,x\n1,100\n2,200\n")
    policy = Policy(bounds={"x": (0, 1000)}, min_group_size=1)
    for source in (frame, str(tmp_path / "t.csv")):
        with pytest.raises(ValueError, match=r"table 't' has two columns named 'x'; rename one"):
            Site({"t": source}, policy)


def test_two_tables_sql_reads_as_one_name_are_refused() -> None:
    # DuckDB failed with 'Catalog Error: Table with name "visits" already exists!'
    frame = pd.DataFrame({"x": [1.0]})
    with pytest.raises(ValueError, match=r"tables 'Visits' and 'visits' are one name to SQL"):
        Site({"Visits": frame, "visits": frame}, Policy(min_group_size=1))


def test_a_column_of_the_empty_name_is_refused_naming_the_site_and_column(
    tmp_path: Path,
) -> None:
    # DuckDB loaded the column "" as C0: a query could name it by no name the site has
    frame = pd.DataFrame({"age": [1.0, 2.0], "": [3.0, 4.0]})
    frame.to_parquet(tmp_path / "t.parquet")
    policy = Policy(min_group_size=1)
    for source in (frame, str(tmp_path / "t.parquet")):
        message = r"^site 'north': table 't': column 2 has the empty name '', which SQL cannot"
        with pytest.raises(ValueError, match=message):
            Site({"t": source}, policy, name="north")
    # A CSV line's trailing comma leaves its header an empty last cell over a column of
    # no value: loaded without it (DuckDB's reader named it column2).
    (tmp_path / "t.csv").write_text("age,sex,\n30,F,\n40,M,\n")
    site = Site({"t": str(tmp_path / "t.csv")}, Policy(bounds={"age": (0, 100)}, min_group_size=1))
    assert query([site], "SELECT SUM(age) FROM t", secure=False)["SUM(age)"].tolist() == [70.0]
    with pytest.raises(PolicyError, match="column2"):
        query([site], "SELECT COUNT(column2) FROM t", secure=False)


@pytest.mark.parametrize(
    ("header", "cell", "auto"),
    [
        ("age,,city", "an empty cell", "column1"),
        ("age, ,city", "only white space, ' '", "column1"),
        ('age,"",city', "an empty cell", "column1"),
        ("age,\u00a0,city", "only white space, '\\xa0'", "C1"),
    ],
)
def test_a_csv_header_cell_naming_no_column_of_values_is_refused(
    tmp_path: Path, header: str, cell: str, auto: str
) -> None:
    # DuckDB's reader loaded the column under a name of its own (column1), which a
    # query could read though the file's owner never gave it
    path = tmp_path / "north.csv"
    path.write_text(f"{header}\n30,7,Oslo\n40,,Bergen\n", encoding="utf-8")
    message = (
        rf"^site 'north': table 't': column 2 of the header of {re.escape(str(path))} has no "
        rf"name \({re.escape(cell)}\) but holds values in 1 row, which DuckDB would load "
        rf"as a column '{auto}' the file does not name; give it a name in the header"
    )
    with pytest.raises(ValueError, match=message):
        Site({"t": str(path)}, Policy(min_group_size=1), name="north")
    # the same column holding no value is left out, as a trailing comma's
    path.write_text(f"{header}\n30,,Oslo\n40,,Bergen\n", encoding="utf-8")
    site = Site({"t": str(path)}, Policy(min_group_size=1), name="north")
    assert list(site._columns["t"]) == ["age", "city"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("age, age", "table 't' has two columns named 'age'; rename one of them (columns 1 and 2"),
        ("x,age,AGE ", "the columns 'age' and 'AGE', which SQL reads as one name"),
    ],
)
def test_csv_header_names_duckdb_would_rename_are_refused_naming_positions(
    tmp_path: Path, header: str, message: str
) -> None:
    # DuckDB trims the spaces around a header's name and renamed the second 'age' age_1
    path = tmp_path / "t.csv"
    row = ",".join(["1"] * (header.count(",") + 1))
    path.write_text(f"{header}\n{row}\n{row}\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        Site({"t": str(path)}, Policy(min_group_size=1), name="north")


def test_a_csv_header_keeps_its_names_spaces_around_them_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("age, city ,âge,column1\n30,Oslo,1.5,2\n")
    site = Site({"t": str(path)}, Policy(min_group_size=1), name="north")
    assert list(site._columns["t"]) == ["age", "city", "âge", "column1"]


def test_an_empty_csv_file_is_refused_not_loaded_as_column0(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    for text in ("", "\n\n"):
        path.write_text(text)
        with pytest.raises(ValueError, match=r"^site 'n': table 't': .* is empty; give at least"):
            Site({"t": str(path)}, Policy(min_group_size=1), name="n")


@pytest.mark.parametrize("secure", [False, True])
def test_an_unaliased_aggregate_is_named_by_its_text_as_written_on_one_line(secure: bool) -> None:
    # Not as DuckDB names it (avg(age), count_star()): as the analyst wrote it, each
    # run of white space one space (a query over lines named a column "sum(\n Age)").
    frames = _frames()
    policy = Policy(bounds={"Age": (0, 120), "age at dx": (0, 10)}, min_group_size=5)
    sites = [Site({"patients": f}, policy, name=f"s{i}") for i, f in enumerate(frames)]
    sql = (
        'SELECT AVG(Age), avg( "age at dx" ),\n  sum(\n\tage) , COUNT(*), count(*)/* n */ '
        "FROM patients"
    )
    got = query(sites, sql, secure=secure)
    names = ["AVG(Age)", 'avg( "age at dx" )', "sum( age)", "COUNT(*)", "count(*)"]
    assert list(got.columns) == names
    want = _pooled(frames, sql)
    assert list(want.columns) == [
        "avg(Age)",
        'avg("age at dx")',
        "sum(age)",
        "count_star()",
        "count_star()_1",  # pandas' name for DuckDB's second count_star()
    ]
    assert got.iloc[0].tolist() == pytest.approx(want.iloc[0].tolist(), rel=1e-9)


def test_a_csv_whose_header_duckdb_skips_for_a_later_line_is_refused_naming_both(
    tmp_path: Path,
) -> None:
    # A row with more fields than the header made DuckDB's reader skip the header and
    # the rows above that row, and load the row's values as the column names: only warned
    path = tmp_path / "t.csv"
    path.write_text("age,ward\n30,A\n40,B,extra\n50,C,x\n")
    with pytest.raises(ValueError, match=r"^site 'north': table 't': ") as info:
        Site({"t": str(path)}, Policy(min_group_size=1), name="north")
    assert str(info.value) == (
        f"site 'north': table 't': DuckDB's reader would skip lines 1 to 2 of {path} (line 1: "
        "'age,ward') and take line 3 for the header ('40,B,extra'); line 3 ('40,B,extra') has "
        "3 fields, line 1 ('age,ward') 2: give every row as many fields as the header; if the "
        "lines above the header are notes, remove them (or skip them: covey site --csv-skip "
        "t=2, or covey.analytics.CSV(path, skip=2) in Python)"
    )
    # a title above the header is skipped, and so is a comment line
    for head in ("# exported\n", "Report 2026\n"):
        path.write_text(head + "age,ward\n30,A\n")
        site = Site({"t": str(path)}, Policy(min_group_size=1), name="north")
        assert list(site._columns["t"]) == ["age", "ward"]
