"""A damaged run folder on resume: refused naming what is damaged, or rolled back as documented.

Each test damages a run folder the way a crash, a disk or a careless copy
does (a bit flipped inside the aggregation state, rounds the database lost
while their weights files stayed) and checks that resuming neither loads the
damage silently nor throws away good files without a word.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import covey
from covey.deploy import serve
from covey.server._state import StateError, check_state, dump_state, load_state
from covey.server._store import RunStore


def _adam_state(rounds: int) -> tuple[covey.Strategy, object]:
    """A FedAdam strategy and its aggregation state after ``rounds`` rounds of updates."""
    strategy = covey.FedAdam(eta=0.1)
    weights = {"w": np.zeros(64), "b": np.zeros(1)}
    state = strategy.aggregator.init(weights)
    from covey.aggregate import Begin, Contribution, End

    for rnd in range(1, rounds + 1):
        state, _ = strategy.aggregator.update(state, Begin(rnd, weights))
        delta = {"w": np.linspace(-1, 1, 64) * rnd, "b": np.array([0.5 * rnd])}
        state, _ = strategy.aggregator.update(
            state, Contribution(cid=0, delta=delta, num_examples=3)
        )
        state, _ = strategy.aggregator.update(state, End(rnd))
    return strategy, state


def _flip(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 0x04
    return bytes(damaged)


def test_a_bit_flipped_in_a_stored_state_is_refused() -> None:
    strategy, state = _adam_state(3)
    blob = dump_state(state)
    template = strategy.aggregator.init({"w": np.zeros(64), "b": np.zeros(1)})
    load_state(blob, template)  # the intact blob loads
    header = int.from_bytes(blob[:8], "little")
    # Flip one bit in the array data (the moments): the numbers change, the structure not.
    for at in (8 + header + 5, len(blob) - 3):
        with pytest.raises(StateError, match="checksum"):
            load_state(_flip(blob, at), template)


def _saved_run(run_dir: Path, rounds: int) -> None:
    _, state = _adam_state(1)
    with RunStore.create(run_dir, config={"rounds": 10}) as store:
        for r in range(rounds + 1):
            weights = {"w": np.full(64, float(r)), "b": np.array([float(r)])}
            store.save_round(r, weights, {"round": r}, dump_state(state))


def _sql(run_dir: Path, statement: str, *args: object) -> None:
    with contextlib.closing(sqlite3.connect(run_dir / "run.sqlite")) as conn, conn:
        conn.execute(statement, args)


def test_a_round_whose_state_is_damaged_is_skipped_like_a_damaged_weights_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    _saved_run(run_dir, 3)
    with RunStore.open(run_dir) as store:
        _, _, blob = store.load_round(3)
    assert blob is not None
    _sql(run_dir, "UPDATE rounds SET server_state = ? WHERE round = 3", _flip(blob, len(blob) - 9))
    with caplog.at_level(logging.WARNING, logger="covey"), RunStore.open(run_dir) as store:
        last, weights, _, _ = store.load_latest_valid(check_state)
    assert last == 2
    assert float(weights["b"][0]) == 2.0
    assert "skipping round 3" in caplog.text
    assert "aggregation state is damaged" in caplog.text


def test_rounds_the_database_lost_are_not_silently_redone(tmp_path: Path) -> None:
    # run.sqlite lost its newest rows (its -wal file was left behind by a copy, or
    # damaged), while weights/ still holds the files of those rounds.
    run_dir = tmp_path / "run"
    _saved_run(run_dir, 3)
    _sql(run_dir, "DELETE FROM rounds WHERE round > 0")
    files = sorted(p.name for p in (run_dir / "weights").iterdir())
    with RunStore.open(run_dir) as store, pytest.raises(ValueError, match="lost") as refused:
        store.load_latest_valid()
    text = str(refused.value)
    assert "round-00003.safetensors" in text
    assert "run.sqlite" in text
    assert "-wal" in text
    # Nothing was deleted: the operator can still put the database back.
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == files


def test_one_file_ahead_of_the_database_is_a_crashed_save_and_is_redone(tmp_path: Path) -> None:
    # Killed between the rename of round 2's file and the commit of its row: normal.
    run_dir = tmp_path / "run"
    _saved_run(run_dir, 2)
    _sql(run_dir, "DELETE FROM rounds WHERE round = 2")
    with RunStore.open(run_dir) as store:
        last, _, _, _ = store.load_latest_valid()
    assert last == 1


def test_serve_refuses_to_resume_a_run_that_lost_rounds(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _saved_run(run_dir, 3)
    _sql(run_dir, "DELETE FROM rounds WHERE round > 0")
    with pytest.raises(ValueError, match=r"round-00002\.safetensors"):
        serve(
            covey.FedAdam(eta=0.1),
            5,
            None,
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
            resume=True,
            plot=False,
        )
    assert (run_dir / "weights" / "round-00003.safetensors").exists()


def test_a_run_that_lost_every_round_is_not_called_empty(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _saved_run(run_dir, 2)
    _sql(run_dir, "DELETE FROM rounds")
    with pytest.raises(ValueError, match="lost its newest rounds") as refused:
        serve(
            covey.FedAdam(eta=0.1),
            5,
            None,
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
            resume=True,
            plot=False,
        )
    assert "round-00002.safetensors" in str(refused.value)
    assert "nothing to resume" not in str(refused.value)


def test_a_damaged_round_record_is_named_not_a_bare_json_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _saved_run(run_dir, 2)
    _sql(run_dir, "UPDATE rounds SET record = ? WHERE round = 1", '{"round": 1, "fit_exa')
    with RunStore.open(run_dir) as store, pytest.raises(ValueError, match="damaged") as refused:
        store.history()
    assert "round 1" in str(refused.value)
    assert "run.sqlite" in str(refused.value)


def test_a_record_with_a_damaged_field_name_is_named(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _saved_run(run_dir, 2)
    _sql(run_dir, "UPDATE rounds SET record = ? WHERE round = 2", '{"round": 2, "fit_eyamples": 3}')
    with RunStore.open(run_dir) as store, pytest.raises(ValueError, match="damaged") as refused:
        store.history()
    assert "run.sqlite" in str(refused.value)


def test_text_sqlite_cannot_decode_is_a_refusal_naming_the_database(tmp_path: Path) -> None:
    from covey.server._resume import resume_point

    run_dir = tmp_path / "run"
    _saved_run(run_dir, 2)
    _sql(run_dir, "UPDATE rounds SET record = CAST(X'7B22FF22' AS TEXT) WHERE round = 2")
    damaged = r"run\.sqlite is damaged"
    with RunStore.open(run_dir) as store, pytest.raises(ValueError, match=damaged):
        resume_point(store, None)


def test_damaged_settings_are_named(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _saved_run(run_dir, 1)
    _sql(run_dir, "UPDATE run SET config = ? WHERE id = 1", '{"rounds": 1O}')
    with pytest.raises(ValueError, match="settings are damaged"):
        RunStore.open(run_dir)


@pytest.mark.parametrize(
    "array",
    [np.arange(3, dtype=">f8"), np.array(5), np.array(2.5, dtype=np.float32)],
    ids=["big-endian", "0-d int", "0-d float32"],
)
def test_a_stored_state_gives_back_its_arrays_as_they_were(array: np.ndarray) -> None:
    state = {"x": array, "rest": (1, 2.0, None)}
    back = load_state(dump_state(state), state)
    assert back["x"].shape == array.shape
    assert back["x"].dtype == array.dtype.newbyteorder("=")
    assert back["x"].tolist() == array.tolist()
