"""``covey site --csv-skip/--csv-na/--csv-decimal``: a CSV's options without a line of Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from _procs import site_answers
from covey.transport.grpc import GrpcServerTransport

POLICY_TOML = """
[policy]
columns = ["age", "ward"]
min_group_size = 1
bounds = { age = [0, 120] }
domains = { ward = ["A", "B"] }
"""
# a note of fields above the header, ages with decimal commas, and a missing age marked '?'
NOTED = "exported by X; 2026\nage;ward\n40,5;A\n?;B\n50;A\n60,25;B\n"


def _site(tmp_path: Path, *flags: str, server: str = "127.0.0.1:1") -> list[str]:
    (tmp_path / "policy.toml").write_text(POLICY_TOML)
    return [
        sys.executable, "-m", "covey", "site",
        "--policy", str(tmp_path / "policy.toml"),
        "--server", server, "--insecure", "--once",
        *flags,
    ]  # fmt: skip


def _refused(tmp_path: Path, *flags: str) -> str:
    cli = subprocess.run(
        _site(tmp_path, *flags), capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert cli.returncode == 2, cli.stderr
    assert "answered" not in cli.stderr
    return " ".join(cli.stderr.split())  # as rich wraps it


def test_a_csv_refused_at_start_names_the_flag_that_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("exported by X, 2026-01-01\nage,ward\n40,A\n50,B\n")
    said = _refused(tmp_path, "--table", f"t={path}")
    assert "covey site --csv-skip t=1" in said
    assert "covey.analytics.CSV(path, skip=1) in Python" in said


def test_covey_site_reads_a_csv_with_the_options_its_flags_give(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(NOTED)
    flags = ["--table", f"t={path}", "--csv-skip", "t=1", "--csv-na", "t=?,NA"]
    # its decimal commas tell the decimal separator; a decimal point said leaves them text
    assert "covey site --csv-decimal t=, " in _refused(tmp_path, *flags, "--csv-decimal", "t=.")
    transport = GrpcServerTransport("127.0.0.1:0")
    command = _site(tmp_path, *flags, "--csv-decimal", "t=,", server=f"127.0.0.1:{transport.port}")
    sql = "SELECT COUNT(age), SUM(age) FROM t"
    answer, out, status = site_answers(transport, command, sql, tmp_path)
    assert answer is not None, out
    assert answer["COUNT(age)"].tolist() == [3.0]
    assert answer["SUM(age)"].tolist() == pytest.approx([150.75])
    assert status == 0, out


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (
            ["--csv-skip", "u=1"],
            "no --table u=... is given for --csv-skip u=1; the tables given: t, p",
        ),
        (["--csv-skip", "t=-1"], "expected a number of lines (0 or more), got '-1'"),
        (["--csv-skip", "t"], "expected NAME=N, got 't'"),
        (["--csv-decimal", "t=;"], "expected . or , got ';'"),
        (["--csv-skip", "t=1", "--csv-skip", "t=2"], "table 't' is given twice ('1' and '2')"),
        (["--csv-skip", "p=1"], "table 'p' is 'p.parquet', not a .csv file"),
    ],
)
def test_covey_site_refuses_a_csv_flag_it_cannot_apply(
    tmp_path: Path, flags: list[str], said: str
) -> None:
    (tmp_path / "t.csv").write_text("age,ward\n40,A\n")
    told = _refused(tmp_path, "--table", "t=t.csv", "--table", "p=p.parquet", *flags)
    assert said in told
    assert not list(tmp_path.glob("*.covey-budget.json*"))  # refused before a ledger is made
