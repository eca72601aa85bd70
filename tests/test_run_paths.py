"""Run folders and data files whose paths hold spaces, non-ASCII or URI characters."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import covey
from covey.analytics import Policy, Site, query
from covey.cli import app
from covey.cli._runs import run_status
from covey.server._outputs import write_outputs
from covey.server._store import RunStore

ODD_NAMES = ["run #1", "100%41 done", "what?x=1", "ünï cödé run"]


def _finished_run(folder: Path) -> None:
    """A deployed run's folder as a finished server leaves it (one round)."""
    with RunStore.create(folder, config={"rounds": 1}) as store:
        store.save_round(0, {"w": np.zeros(2)}, {"round": 0})
        store.save_round(1, {"w": np.ones(2)}, {"round": 1})
        store.set_status("finished")
        history = store.history()
    history.config = {"rounds": 1}
    write_outputs(folder, history, plot=False)


@pytest.mark.parametrize("name", ODD_NAMES)
def test_a_run_folder_with_uri_characters_reads_as_it_is(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    _finished_run(folder)
    assert run_status(folder, covey.History.load(folder)) == "finished"


def test_runs_list_reads_every_odd_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ODD_NAMES:
        _finished_run(tmp_path / name)
    monkeypatch.setenv("COLUMNS", "250")
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert "unreadable" not in listed.output
    assert listed.output.count("finished") == len(ODD_NAMES)


def test_a_site_table_in_a_sqlite_file_under_a_hash_folder(tmp_path: Path) -> None:
    folder = tmp_path / "clinic #2"
    folder.mkdir()
    db = folder / "h.db"
    with sqlite3.connect(db) as con:
        pd.DataFrame({"age": [30, 40], "sex": ["F", "M"]}).to_sql("patients", con, index=False)
    policy = Policy(bounds={"age": (0, 120)}, min_group_size=1)
    site = Site({"patients": f"sqlite:///{db}"}, policy, name="clinic")
    answer = query([site], "SELECT COUNT(*), SUM(age) FROM patients", secure=False)
    assert answer.iloc[0]["COUNT(*)"] == 2
    assert answer.iloc[0]["SUM(age)"] == pytest.approx(70)
