"""Run folders and peers of other covey versions: read what can be read, refuse the rest by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import covey
from covey.server._store import RunStore

# -- history.json and round records written by a newer covey --------------------------------


def _newer_history(folder: Path) -> None:
    """A history.json whose rounds and failures carry fields a newer covey added."""
    failure = {"cid": 1, "stage": "fit", "error": "boom", "site_time": 2.5}
    rounds = [
        {"round": 0, "central_loss": 1.0, "carbon_grams": 0.1},
        {"round": 1, "fit_participants": [0], "fit_failures": [failure], "carbon_grams": 0.2},
    ]
    text = json.dumps({"config": {"strategy": "FedAvg"}, "rounds": rounds, "signed_by": "x"})
    (folder / "history.json").write_text(text)


def test_a_history_with_fields_of_a_newer_covey_is_read(tmp_path: Path) -> None:
    _newer_history(tmp_path)
    history = covey.History.load(tmp_path)
    assert [r.round for r in history] == [0, 1]
    assert history[0].central_loss == 1.0
    (failure,) = history[1].fit_failures
    assert (failure.cid, failure.error) == (1, "boom")


def test_runs_show_reads_a_history_of_a_newer_covey(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from covey.cli import app

    _newer_history(tmp_path)
    result = CliRunner().invoke(app, ["runs", "show", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "boom" in result.output


def test_a_store_whose_records_carry_newer_fields_gives_its_history(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", config={"strategy": {"name": "FedAvg"}})
    try:
        store.save_round(0, {"w": np.zeros(2)}, record={"round": 0, "central_loss": 0.5})
        newer = json.dumps({"round": 0, "central_loss": 0.5, "carbon_grams": 0.1})
        with store._db.transaction() as conn:  # as a newer covey wrote it
            conn.execute("UPDATE rounds SET record = ? WHERE round = 0", (newer,))
        assert store.history()[0].central_loss == 0.5
    finally:
        store.close()


def test_a_record_of_unknown_fields_is_still_refused_when_saved(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", config={})
    try:
        with pytest.raises(ValueError, match="carbon_grams"):
            store.save_round(0, {"w": np.zeros(2)}, record={"round": 0, "carbon_grams": 1})
    finally:
        store.close()
