"""What resuming a long run reads: the newest rounds it takes up, not every round again."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey.core._history as history_module
import covey.core._jsonvalues as jsonvalues_module
import covey.server._storedrounds as storedrounds_module
from _counting import count_calls
from covey.core._history import RoundRecord
from covey.server._store import RunStore
from covey.server._storedrounds import StoredRounds


def _run(folder: Path, rounds: int, **record: Any) -> None:
    with RunStore.create(folder, config={"rounds": rounds}) as store:
        for r in range(rounds):
            store.save_round(r, {"w": np.full(2, float(r))}, RoundRecord(r, **record), keep_last=2)


def test_resuming_lists_no_round_before_the_one_it_takes_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load_latest_valid read every saved round's number to take the newest that verifies
    _run(tmp_path / "run", 300)

    def every_round(self: StoredRounds) -> list[int]:
        raise AssertionError("every round listed")

    monkeypatch.setattr(StoredRounds, "rounds", every_round)
    with RunStore.open(tmp_path / "run") as store:
        round, weights, record, _ = store.load_latest_valid()
    assert round == 299
    assert weights["w"][0] == 299.0
    assert record is not None


@pytest.mark.parametrize("saved", [2, 5, 70, 130])
def test_no_round_that_verifies_names_the_rounds_tried(tmp_path: Path, saved: int) -> None:
    _run(tmp_path / "run", saved)
    for file in (tmp_path / "run" / "weights").iterdir():
        file.write_bytes(b"damaged")
    with RunStore.open(tmp_path / "run") as store:
        last = store.last_round()
        store._db.for_writing()
        with store._db.transaction() as conn:  # every row names a file that is damaged
            conn.execute("UPDATE rounds SET weights_file = ? WHERE round < ?", ("x", last))
        with pytest.raises(ValueError, match="has valid weights") as caught:
            store.load_latest_valid()
    said = f" (rounds 0-{saved - 1})" if saved > 3 else ""
    assert str(caught.value).endswith(f"has valid weights{said}")


def _undone(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the values whose JSON tags are looked for (``from_jsonable``'s calls)."""
    return count_calls(
        monkeypatch, "from_jsonable", jsonvalues_module, history_module, storedrounds_module
    )


def test_reading_a_longer_history_back_looks_for_tags_in_no_more_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every value of every saved record went through from_jsonable again, though a
    # record's text with no tag in it holds none: a tenth of a resume's reading.
    metrics = {"accuracy": 0.5, "loss": [1.0, 2.0]}
    for rounds in (20, 40):
        _run(tmp_path / str(rounds), rounds, fit_metrics=metrics)
    calls = _undone(monkeypatch)
    counted = {}
    for rounds in (20, 40):
        calls[0] = 0
        with RunStore.open(tmp_path / str(rounds)) as store:
            history = store.history()
        counted[rounds] = calls[0]
        assert [r.round for r in history.rounds] == list(range(rounds))
        assert history.rounds[-1].fit_metrics == metrics
    assert counted[40] == counted[20], counted


def test_tagged_values_read_back_from_the_store_as_they_were(tmp_path: Path) -> None:
    record = {
        "central_loss": float("nan"),
        "fit_metrics": {"inf": float("-inf"), "b": b"\x00\xff", "é \\ x": 1.5},
        "aggregate_info": {"__float__": "a name, not a tag", "n": 2},
    }
    _run(tmp_path / "run", 3, **record)
    with RunStore.open(tmp_path / "run") as store:
        history = store.history()
    for r in history.rounds:
        assert math.isnan(r.central_loss or 0.0)
        assert r.fit_metrics == {"inf": float("-inf"), "b": b"\x00\xff", "é \\ x": 1.5}
        assert r.aggregate_info == record["aggregate_info"]
