"""What `covey site` and `covey query` show: the answer's cells, the sites' names, the tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer

from covey.analytics import Policy, Site
from covey.analytics._cli import _cell, _tables, answer_json, hold_ledger, result_table
from covey.analytics._exchange import Federation
from covey.analytics._policy import PolicyError
from covey.analytics._query import query
from covey.cli._rounds import _number
from covey.clients import run_task
from covey.core import Reply, Task


def test_counts_and_large_sums_keep_every_digit() -> None:
    # A count of six million was shown as 6e+06 and a sum as 9.91148e+06.
    assert _cell(np.float64(6_000_123.0)) == "6000123"
    assert _cell(np.float64(9_911_478.41)) == "9911478.41"
    assert _cell(np.float64(-0.0)) == "0"
    assert _cell(np.float64(53.817307692)) == "53.8173"
    assert _cell(np.float64(np.nan)) == "-"
    assert _cell(float("inf")) == "inf"
    assert _cell(np.array([np.nan, 1_234_567.0, 12.0])) == "[-, 1234567, 12]"


def test_the_json_answer_holds_the_table_the_sql_and_the_caption() -> None:
    # --json wrote only the table: not which sites answered, what was refused or withheld,
    # nor the privacy cost the printed caption gives.
    df = pd.DataFrame({"g": ["a", "b"], "COUNT(*)": [12.0, np.nan]})
    df.attrs.update(
        {
            "sites": ["site-0", "site-1"],
            "refused": {"site-2": "over budget"},
            "suppressed": [("b",)],
            "min_group_size": np.int64(10),
            "privacy": {"epsilon": np.float64(0.5), "delta": 0.0, "spent": float("nan")},
        }
    )
    answer = json.loads(answer_json(df, "SELECT g, COUNT(*) FROM t GROUP BY g"))
    assert answer["columns"] == ["g", "COUNT(*)"]
    assert answer["data"] == [["a", 12.0], ["b", None]]
    assert answer["sql"] == "SELECT g, COUNT(*) FROM t GROUP BY g"
    assert answer["attrs"] == {
        "sites": ["site-0", "site-1"],
        "refused": {"site-2": "over budget"},
        "suppressed": [["b"]],
        "min_group_size": 10,
        "privacy": {"epsilon": 0.5, "delta": 0.0, "spent": None},
    }


def test_the_printed_table_shows_an_exact_count() -> None:
    df = pd.DataFrame({"COUNT(*)": [1_234_567.0]})
    df.attrs["sites"] = ["a", "b"]
    row = result_table(df, "SELECT COUNT(*) FROM t").columns[0]._cells[0]
    assert str(row) == "1234567"


def test_a_table_named_twice_is_refused() -> None:
    # The second --table t=... replaced the first without a word.
    with pytest.raises(typer.BadParameter, match="'t' is given twice"):
        _tables(["t=a.parquet", "t=b.csv"])
    assert _tables(["t=a.parquet", "u=b.csv"]) == {"t": "a.parquet", "u": "b.csv"}


class _OneSilent:
    """Two connected sites; the first never answers (stopped, or too slow)."""

    def __init__(self, site: Site) -> None:
        self.site = site

    def clients(self) -> Sequence[int]:
        return [0, 1]

    def client_name(self, cid: int) -> str | None:
        return {0: "hospital-b", 1: "hospital-a"}.get(cid)

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        for cid, task in tasks.items():
            if cid == 1:
                yield run_task(self.site, cid, task)

    def close(self) -> None:
        pass


def test_a_silent_site_is_named_as_its_certificate_names_it() -> None:
    # It was listed as 'site-0' in the refusals, a name no operator gave it.
    frame = pd.DataFrame({"x": np.arange(40.0)})
    site = Site({"t": frame}, Policy(bounds={"x": (0, 100)}, min_group_size=5), name="hospital-a")
    df = query(_OneSilent(site), "SELECT COUNT(*) FROM t", secure=False)
    assert df.attrs["refused"] == {"hospital-b": "the site did not answer in time"}
    assert df.attrs["sites"] == ["hospital-a"]


def test_a_transport_without_names_still_names_a_silent_site() -> None:
    class Plain(_OneSilent):
        client_name = None  # type: ignore[assignment]

    frame = pd.DataFrame({"x": np.arange(40.0)})
    site = Site({"t": frame}, Policy(bounds={"x": (0, 100)}, min_group_size=5), name="a")
    fed = Federation(Plain(site))
    fed.describe({"sql": "SELECT COUNT(*) FROM t", "secure": False})
    assert fed.refused == {"site-0": "the site did not answer in time"}


def test_a_budgeted_site_names_the_flag_that_gives_epsilon() -> None:
    frame = pd.DataFrame({"x": np.arange(40.0)})
    site = Site({"t": frame}, Policy(epsilon=1.0), name="a")
    with pytest.raises(PolicyError, match="--epsilon"):
        query([site], "SELECT COUNT(*) FROM t", secure=False)


def test_a_small_metric_is_not_shown_as_zero() -> None:
    # `covey runs show` printed a LocalDP run's dp_delta of 1e-05 as 0.0000.
    assert _number(1e-05) == "1e-05"
    assert _number(0.0) == "0.0000"
    assert _number(0.12345) == "0.1235"
    assert _number(None) == "-"


@pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows")
def test_a_second_site_process_on_one_ledger_is_refused(tmp_path: Path) -> None:
    # Two `covey site` processes kept one ledger file: each rewrote it from its own
    # ledger, so the charges of one were lost (the budget under-counted).
    pd.DataFrame({"x": np.arange(40.0)}).to_csv(tmp_path / "t.csv", index=False)
    ledger = tmp_path / "a.covey-budget.json"
    held = hold_ledger(ledger)
    assert held is not None
    try:
        with pytest.raises(OSError, match=f"in use by another covey site \\(pid {os.getpid()}\\)"):
            hold_ledger(ledger)
        site = subprocess.run(
            [sys.executable, "-m", "covey", "site", "--table", f"t={tmp_path / 't.csv'}",
             "--server", "127.0.0.1:1", "--insecure", "--name", "a", "--once"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert site.returncode == 2, site.stderr
        assert "in use by another covey site" in site.stderr
    finally:
        os.close(held)
    again = hold_ledger(ledger)  # free once its holder lets go (or exits)
    assert again is not None
    os.close(again)


def test_a_ledger_in_a_missing_folder_is_left_to_the_site_to_name(tmp_path: Path) -> None:
    assert hold_ledger(tmp_path / "no-such-folder" / "a.json") is None


def test_without_tls_the_site_and_the_query_warn_of_queries_not_a_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # `covey site --insecure` and `covey query --insecure` warned that anyone could "see the
    # model": analytics sends no model, but queries and the sites' answers.
    from covey.analytics._cli import _query_tls, _site_tls

    with caplog.at_level("WARNING", logger="covey"):
        assert _site_tls(None, None, None, True, "127.0.0.1:1") is None
        assert _query_tls(None, "127.0.0.1:2") is None
    site, server = (r.getMessage() for r in caplog.records)
    assert site.startswith("connecting WITHOUT TLS: anyone on the way to 127.0.0.1:1")
    assert "see the queries and the site's answers and pose as the server" in site
    assert server == (
        "serving WITHOUT TLS: anyone who can reach 127.0.0.1:2 can join and see the query "
        "and the sites' answers"
    )


@pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows")
def test_a_site_deletes_the_ledger_copies_a_kill_mid_write_left(tmp_path: Path) -> None:
    # A site killed between writing its ledger's temporary copy and renaming it over the
    # ledger left the copy beside it, and every restart kept it: one more per such kill.
    ledger = tmp_path / "a.covey-budget.json"
    ledger.write_text("{}")
    stale = tmp_path / ".a.covey-budget.json.0123456789ab.tmp"
    stale.write_text('{"format": 1, "epsilon": null')
    others = [
        tmp_path / ".a.covey-budget.json.notes.tmp",  # not one of its copies
        tmp_path / ".b.covey-budget.json.0123456789ab.tmp",  # another site's ledger
    ]
    for other in others:
        other.write_text("kept")
    held = hold_ledger(ledger)
    assert held is not None
    try:
        assert not stale.exists()
        assert all(other.read_text() == "kept" for other in others)
        assert ledger.read_text() == "{}"
    finally:
        os.close(held)
