"""A run folder of an asynchronous (FedBuff) run speaks of updates, not rounds, when read."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from covey.server import RunStore
from covey.server._roundfiles import WEIGHTS_DIR, weights_file_name

ASYNC = {"rounds": 4, "strategy": {"name": "FedBuff", "options": {"buffer_size": 2}}}
SYNC = {"rounds": 4, "strategy": {"name": "FedAvg", "options": {"fraction_fit": 1.0}}}


def _run(folder: Path, config: dict[str, object], saved: int = 3) -> None:
    with RunStore.create(folder, config=config) as store:
        for r in range(saved):
            store.save_round(r, {"w": np.full(2, float(r))}, {"round": r})


@pytest.mark.parametrize(("config", "step"), [(ASYNC, "update"), (SYNC, "round")])
def test_a_damaged_weights_file_is_named_by_the_run_s_unit(
    tmp_path: Path, config: dict[str, object], step: str
) -> None:
    # An asynchronous run's were "weights file ... of round 2 is corrupt", its numbers
    # those of updates.
    _run(tmp_path, config)
    (tmp_path / WEIGHTS_DIR / weights_file_name(2)).write_bytes(b"\0" * 64)
    with RunStore.open(tmp_path) as store:
        with pytest.raises(ValueError, match=f"of {step} 2 is (corrupt|truncated)"):
            store.load_round(2)
        with pytest.raises(KeyError, match=f"{step} 7 was never saved in the run at"):
            store.load_round(7)


def test_an_asynchronous_run_s_resume_skips_updates_in_its_own_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _run(tmp_path, ASYNC)
    (tmp_path / WEIGHTS_DIR / weights_file_name(2)).unlink()
    with RunStore.open(tmp_path) as store, caplog.at_level(logging.WARNING):
        assert store.load_latest_valid()[0] == 1
    said = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert said
    assert said[0].startswith(f"skipping update 2 of {tmp_path}: weights file ")
    assert "of update 2 is missing" in said[0]
    assert "round" not in said[0].replace(weights_file_name(2), "")


def test_an_asynchronous_run_that_lost_updates_says_so(tmp_path: Path) -> None:
    _run(tmp_path, ASYNC, saved=1)
    for r in (3, 4):
        (tmp_path / WEIGHTS_DIR / weights_file_name(r)).write_bytes(b"x")
    with RunStore.open(tmp_path) as store, pytest.raises(ValueError, match="updates up to 0") as e:
        store.check_lost_rounds()
    said = str(e.value)
    assert "of later updates: the database lost its newest updates" in said
