"""RunStore: the durable, resumable state of a federation server."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import covey
from covey import History
from covey.core import Failure, RoundRecord, WeightsSpec
from covey.models import LogisticClient, logistic_init
from covey.server._roundfiles import weights_file_name, write_weights
from covey.server._store import RunStore

# Shared with the subprocess of the crash test: weights are a function of the round.
WEIGHTS_FOR = '''
import numpy as np

def weights_for(r):
    """Deterministic weights of round ``r``, about 1 MB so a kill often lands mid-save."""
    base = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    return {
        "W": base * np.float32(r + 1) - np.float32(r),
        "b": np.linspace(-1.0, 1.0, 1000) * (r + 0.5),
        "steps": np.array(r * 7, dtype=np.int64),
    }
'''
namespace: dict[str, Any] = {}
exec(WEIGHTS_FOR, namespace)
weights_for = namespace["weights_for"]

CONFIG = {"strategy": "FedAvg", "rounds": 10, "seed": 0, "spec": "W: float32[2, 2]"}


def small(r: int) -> dict[str, np.ndarray]:
    return {
        "W": np.full((2, 2), r, dtype=np.float32),
        "b": np.arange(3, dtype=np.float64) + r,
        "steps": np.array(r, dtype=np.int64),
    }


def record(r: int) -> dict[str, Any]:
    return {"round": r, "central_loss": 1.0 / (r + 1), "central_metrics": {"accuracy": r / 10}}


def assert_identical(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(actual) == list(expected)
    for name, value in expected.items():
        got = actual[name]
        assert isinstance(got, np.ndarray), name
        assert got.shape == value.shape, name
        assert got.dtype.newbyteorder("=") == value.dtype.newbyteorder("="), name
        assert got.tobytes() == value.astype(got.dtype).tobytes(), name


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


# -- create and open -----------------------------------------------------------------


def test_create_then_open_round_trip(run_dir: Path) -> None:
    with RunStore.create(run_dir, config=CONFIG) as store:
        assert store.config == CONFIG
        assert store.status == "running"
        assert store.last_round() is None
        assert store.rounds() == []
        store.save_round(0, small(0), None)
        store.save_round(1, small(1), record(1), b"state-1")
        store.set_status("finished")
    assert (run_dir / "run.sqlite").is_file()
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == [
        "round-00000.safetensors",
        "round-00001.safetensors",
    ]
    with RunStore.open(run_dir) as store:
        assert store.config == CONFIG
        assert store.status == "finished"
        info = store.info()
        assert info["covey_version"] == covey.__version__
        assert info["created_at"] <= info["updated_at"]
        assert store.last_round() == 1
        weights, rec, state = store.load_round(1)
        assert_identical(weights, small(1))
        assert rec == record(1)
        assert state == b"state-1"
        weights, rec, state = store.load_round(0)
        assert_identical(weights, small(0))
        assert rec is None
        assert state is None
        with pytest.raises(KeyError, match="round 5 was never saved"):
            store.load_round(5)


def test_loading_the_last_round_of_a_run_that_saved_none_says_so(run_dir: Path) -> None:
    with RunStore.create(run_dir, config=CONFIG) as store:
        assert store.last_round() is None
        with pytest.raises(KeyError, match="no round is saved yet in the run at"):
            store.load_round(store.last_round())  # type: ignore[arg-type]


def test_a_round_that_is_no_int_is_refused_naming_it(run_dir: Path) -> None:
    # A str ("3", read from a command line) or a float failed with Python's bare
    # "Unknown format code 'd' for object of type 'str'", True loaded round 1, and a
    # round past SQLite's integers raised OverflowError.
    with RunStore.create(run_dir, config=CONFIG) as store:
        for r in range(3):
            store.save_round(r, small(r), None)
        for given in ("2", 2.0, np.float64(2.0), True, [2]):
            with pytest.raises(
                TypeError, match=r"round number \(an int\), got \w+ " + re.escape(repr(given))
            ):
                store.load_round(given)  # type: ignore[arg-type]
        for given in (-1, 2**64):
            with pytest.raises(KeyError, match=f"round {given} was never saved"):
                store.load_round(given)
        assert_identical(store.load_round(np.int64(2))[0], small(2))  # type: ignore[arg-type]


def test_config_is_a_copy_and_must_be_json(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={"a": [1, 2]}) as store:
        store.config["a"].append(3)
        assert store.config == {"a": [1, 2]}
    with pytest.raises(TypeError, match="JSON"):
        RunStore.create(run_dir.with_name("other"), config={"f": object()})
    with pytest.raises(TypeError, match="dict"):
        RunStore.create(run_dir.with_name("other"), config=[1])  # type: ignore[arg-type]


def test_status_is_checked(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={}) as store:
        store.set_status("failed")
        assert store.status == "failed"
        with pytest.raises(ValueError, match="status must be one of"):
            store.set_status("done")  # type: ignore[arg-type]


def test_create_refuses_an_existing_run(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={"first": True}) as store:
        store.save_round(0, small(0), None)
    with pytest.raises(FileExistsError, match="already exists"):
        RunStore.create(run_dir, config={"first": False})
    with RunStore.open(run_dir) as store:  # left untouched
        assert store.config == {"first": True}
        assert store.last_round() == 0
    a_file = run_dir.with_name("file")
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        RunStore.create(a_file, config={})


def test_create_accepts_an_existing_empty_directory(run_dir: Path) -> None:
    run_dir.mkdir()
    with RunStore.create(run_dir, config={}) as store:
        assert store.run_dir == run_dir
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_open_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunStore.open(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no run\.sqlite"):
        RunStore.open(tmp_path)
    (tmp_path / "run.sqlite").write_bytes(b"this is not a database, just some text" * 10)
    with pytest.raises(ValueError, match="not a covey run database"):
        RunStore.open(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    conn = sqlite3.connect(other / "run.sqlite")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match="not a covey run database"):
        RunStore.open(other)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a covey run directory"):
        RunStore.open(a_file)


@pytest.mark.parametrize("exclusive", [False, True])
def test_open_says_an_empty_run_database_is_empty(tmp_path: Path, exclusive: bool) -> None:
    # Before, a zero-byte run.sqlite was refused as "no such table: meta".
    (tmp_path / "run.sqlite").write_bytes(b"")
    with pytest.raises(ValueError, match=r"run\.sqlite is empty \(0 bytes\).*remove it"):
        RunStore.open(tmp_path, exclusive=exclusive)
    assert (tmp_path / "run.sqlite").stat().st_size == 0


def test_open_refuses_an_unknown_schema_version(run_dir: Path) -> None:
    RunStore.create(run_dir, config={}).close()
    conn = sqlite3.connect(run_dir / "run.sqlite")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match="schema version 99"):
        RunStore.open(run_dir)


def test_closed_store_refuses_calls(run_dir: Path) -> None:
    store = RunStore.create(run_dir, config={})
    store.close()
    store.close()
    assert store.closed
    assert "closed" in repr(store)
    with pytest.raises(ValueError, match="closed"):
        store.last_round()
    with pytest.raises(ValueError, match="closed"):
        store.log_event("a", "join")


# -- weights ---------------------------------------------------------------------------


def test_weights_are_bit_identical_after_load(run_dir: Path) -> None:
    weights: dict[str, np.ndarray] = {
        "z_first": np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38], dtype=np.float32),
        "f64": np.array([[np.pi, -np.e], [5e-324, np.nan]], dtype=np.float64),
        "f16": np.array([1.5, -2.25, 65504.0], dtype=np.float16),
        "i64": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max]),
        "i32": np.arange(-5, 7, dtype=np.int32).reshape(3, 4),
        "u8": np.array([0, 255], dtype=np.uint8),
        "flags": np.array([True, False, True]),
        "scalar_f": np.array(0.1, dtype=np.float64),
        "scalar_i": np.array(-3, dtype=np.int16),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "strided": np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2].T,
        "big_endian": np.arange(5, dtype=">f4") / 3,
    }
    assert not weights["strided"].flags.c_contiguous
    nan_payload = np.array([0x7FC00123], dtype=np.uint32).view(np.float32)
    weights["nan_payload"] = nan_payload
    with RunStore.create(run_dir, config={}) as store:
        store.save_round(0, weights, None)
    with RunStore.open(run_dir) as store:
        loaded, _, _ = store.load_round(0)
    assert_identical(loaded, weights)
    assert loaded["scalar_f"].shape == ()
    assert loaded["nan_payload"].view(np.uint32)[0] == 0x7FC00123
    for value in loaded.values():
        assert value.flags.writeable
    assert covey.core.WeightsSpec.of(loaded).names == tuple(weights)


@settings(max_examples=10)
@given(
    arrays=st.lists(
        hnp.arrays(
            dtype=st.sampled_from(["float32", "float64", "int8", "int64", "uint16", "bool"]),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_weights_round_trip(arrays: list[np.ndarray]) -> None:
    weights = {f"layer{i}.w": a for i, a in enumerate(arrays)}
    with (
        tempfile.TemporaryDirectory() as tmp,
        RunStore.create(Path(tmp) / "run", config={}) as store,
    ):
        store.save_round(0, weights, None)
        loaded, _, _ = store.load_round(0)
    assert_identical(loaded, weights)


def test_invalid_weights_are_refused_before_touching_disk(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={}) as store:
        with pytest.raises(covey.WeightsError):
            store.save_round(0, {}, None)
        with pytest.raises(covey.WeightsError):
            store.save_round(0, {"w": [1.0, 2.0]}, None)  # type: ignore[dict-item]
        with pytest.raises(covey.WeightsError):
            store.save_round(0, {"c": np.zeros(2, dtype=np.complex64)}, None)
        assert store.last_round() is None
    assert list((run_dir / "weights").iterdir()) == []


# -- rounds and history ----------------------------------------------------------------


def test_rounds_must_be_saved_in_increasing_order(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={}) as store:
        store.save_round(0, small(0), None)
        store.save_round(1, small(1), None)
        with pytest.raises(ValueError, match="increasing order"):
            store.save_round(1, small(1), None)
        with pytest.raises(ValueError, match="increasing order"):
            store.save_round(0, small(0), None)
        with pytest.raises(ValueError, match="non-negative integer"):
            store.save_round(-1, small(0), None)
        with pytest.raises(ValueError, match="non-negative integer"):
            store.save_round(True, small(0), None)
        assert store.rounds() == [0, 1]
        _, rec, _ = store.load_round(1)
        assert rec is None
        store.save_round(np.int64(2), small(2), None)  # type: ignore[arg-type]
        assert store.last_round() == 2


def test_history_round_trip(run_dir: Path) -> None:
    records = [
        RoundRecord(round=0, central_loss=2.0, central_metrics={"accuracy": 0.1}),
        RoundRecord(
            round=1,
            fit_participants=[0, 2],
            fit_failures=[Failure(cid=1, stage="fit", error="boom", traceback="Traceback...")],
            fit_metrics={"loss": 0.5},
            fit_examples=40,
            aggregated=True,
            aggregate_info={"norm": 1.25, "clipped": [1]},
            evaluate_participants=[0],
            evaluate_failures=[Failure(cid=2, stage="evaluate", error="timeout")],
            evaluate_loss=0.75,
            evaluate_metrics={"accuracy": 0.5},
            evaluate_examples=10,
            central_loss=1.0,
            central_metrics={"accuracy": 0.6},
            durations={"fit": 0.25, "evaluate": 0.125},
        ),
    ]
    with RunStore.create(run_dir, config={}) as store:
        store.save_round(0, small(0), records[0])  # a RoundRecord ...
        store.save_round(1, small(1), History(records[1:]).to_dict()["rounds"][0])  # ... or dict
        store.save_round(2, small(2), None)  # skipped in the history
    with RunStore.open(run_dir) as store:
        history = store.history()
    assert history == History(records)
    assert history.metric("accuracy") == [(0, 0.1), (1, 0.6)]
    assert history.failures()[0][1] == records[1].fit_failures[0]


def test_records_are_checked_when_saved(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={}) as store:
        with pytest.raises(ValueError, match="not a RoundRecord dict"):
            store.save_round(0, small(0), {"round": 0, "no_such_field": 1})
        with pytest.raises(ValueError, match="record of round 3 saved as round 0"):
            store.save_round(0, small(0), {"round": 3})
        with pytest.raises(TypeError, match="record must be"):
            store.save_round(0, small(0), [1, 2])  # type: ignore[arg-type]
        assert store.last_round() is None
        store.save_round(0, small(0), {"central_loss": float("nan")})  # round filled in
        assert store.history().rounds[0].round == 0
        [(round0, loss)] = store.history().metric("loss")  # NaN kept exactly, as History keeps it
        assert round0 == 0
        assert math.isnan(loss)


def test_keep_last_prunes_old_weights_but_keeps_rows(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={}) as store:
        for r in range(5):
            store.save_round(r, small(r), record(r), b"s%d" % r, keep_last=2)
        assert sorted(p.name for p in (run_dir / "weights").iterdir()) == [
            weights_file_name(3),
            weights_file_name(4),
        ]
        assert store.rounds() == [0, 1, 2, 3, 4]
        assert len(store.history()) == 5
        with pytest.raises(ValueError, match="pruned"):
            store.load_round(1)
        assert_identical(store.load_round(3)[0], small(3))
        with pytest.raises(ValueError, match="keep_last"):
            store.save_round(5, small(5), None, keep_last=0)


def test_corrupt_weights_file_is_detected_and_skipped(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RunStore.create(run_dir, config={}) as store:
        for r in range(4):
            store.save_round(r, weights_for(r), record(r), b"state-%d" % r)
    newest = run_dir / "weights" / weights_file_name(3)
    data = bytearray(newest.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4):
        data[i] ^= 0xFF  # flip bytes in the middle of the tensor data
    newest.write_bytes(bytes(data))
    (run_dir / "weights" / weights_file_name(2)).unlink()

    with RunStore.open(run_dir) as store:
        with pytest.raises(ValueError, match=r"round-00003\.safetensors.*corrupt"):
            store.load_round(3)
        with pytest.raises(ValueError, match=r"round-00002\.safetensors.*missing"):
            store.load_round(2)
        with caplog.at_level(logging.WARNING, logger="covey"):
            r, weights, rec, state = store.load_latest_valid()
        assert r == 1
        assert_identical(weights, weights_for(1))
        assert rec == record(1)
        assert state == b"state-1"
        messages = [m.getMessage() for m in caplog.records]
        assert len(messages) == 2
        assert "skipping round 3" in messages[0]
        assert "skipping round 2" in messages[1]

        # Resume from round 1: discard the broken rounds, then save round 2 anew.
        assert store.discard_after(1) == [2, 3]
        assert not newest.exists()
        store.save_round(2, small(2), record(2))
        assert store.load_latest_valid()[0] == 2


def test_a_long_run_of_damaged_rounds_is_said_in_a_few_lines(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A resume of a run whose every kept round was damaged printed a line per round.
    with RunStore.create(run_dir, config={}) as store:
        for r in range(12):
            store.save_round(r, small(r), record(r))
    for r in range(2, 12):
        (run_dir / "weights" / weights_file_name(r)).write_bytes(b"garbage")
    with RunStore.open(run_dir) as store, caplog.at_level(logging.WARNING, logger="covey"):
        assert store.load_latest_valid()[0] == 1
    messages = [m.getMessage() for m in caplog.records]
    assert [m.split(" of ")[0] for m in messages[:3]] == [
        "skipping round 11",
        "skipping round 10",
        "skipping round 9",
    ]
    assert messages[3:] == ["7 more rounds skipped likewise"]
    (run_dir / "weights" / weights_file_name(0)).write_bytes(b"garbage")
    (run_dir / "weights" / weights_file_name(1)).write_bytes(b"garbage")
    caplog.clear()
    with (
        RunStore.open(run_dir) as store,
        caplog.at_level(logging.WARNING, logger="covey"),
        pytest.raises(ValueError, match=r"has valid weights \(rounds 0-11\)$"),
    ):
        store.load_latest_valid()
    assert len(caplog.records) == 3


def test_a_round_whose_model_holds_nan_is_skipped_naming_its_file(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its file verifies (its SHA-256 is the recorded one), so the resume took it and
    # then refused it as the app's "initial weights", naming no round, at every restart.
    with RunStore.create(run_dir, config={}) as store:
        store.save_round(0, small(0), record(0))
        store.save_round(1, small(1), record(1))
        store.save_round(2, {"w": np.array([1.0, np.nan, np.inf], np.float32)}, record(2))
    with RunStore.open(run_dir) as store, caplog.at_level(logging.WARNING, logger="covey"):
        assert store.load_latest_valid()[0] == 1
    (said,) = [m.getMessage() for m in caplog.records]
    assert "skipping round 2" in said
    assert "round-00002.safetensors of round 2 holds 2 non-finite value(s)" in said
    assert "(NaN or Inf) in 'w'" in said
    with RunStore.open(run_dir) as store:
        store.discard_after(None)
        store.save_round(0, {"w": np.array([np.nan], np.float32)}, record(0))
        with pytest.raises(ValueError, match=r"no saved round .* has valid weights"):
            store.load_latest_valid()


def test_truncated_weights_file_is_detected(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={}) as store:
        store.save_round(0, small(0), None)
        store.save_round(1, small(1), None)
        path = run_dir / "weights" / weights_file_name(1)
        path.write_bytes(path.read_bytes()[:20])
        with pytest.raises(ValueError, match=r"round-00001\.safetensors"):
            store.load_round(1)
        assert store.load_latest_valid()[0] == 0
        path.write_bytes(b"")
        assert store.load_latest_valid()[0] == 0


def test_load_latest_valid_without_a_valid_round(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={}) as store:
        with pytest.raises(ValueError, match="no saved round"):
            store.load_latest_valid()
        store.save_round(0, small(0), None)
        (run_dir / "weights" / weights_file_name(0)).unlink()
        with pytest.raises(ValueError, match=r"no saved round .* has valid weights"):
            store.load_latest_valid()


def test_failure_between_rename_and_commit_leaves_the_previous_round(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RunStore.create(run_dir, config={}) as store:
        store.save_round(0, small(0), record(0))
        store.save_round(1, small(1), record(1))
        real_replace = os.replace

        def replace_then_crash(src: Any, dst: Any) -> None:
            real_replace(src, dst)
            if str(dst).endswith(".safetensors"):
                raise OSError("simulated crash after the rename")

        monkeypatch.setattr(os, "replace", replace_then_crash)
        with pytest.raises(OSError, match="simulated crash"):
            store.save_round(2, small(2), record(2))
        monkeypatch.undo()
        assert store.last_round() == 1
    with RunStore.open(run_dir) as store:
        assert store.last_round() == 1
        r, weights, _, _ = store.load_latest_valid()
        assert r == 1
        assert_identical(weights, small(1))
        assert len(store.history()) == 2
        store.save_round(2, small(2), record(2))
        assert_identical(store.load_round(2)[0], small(2))
    assert [p.name for p in (run_dir / "weights").iterdir() if p.name.startswith(".")] == []


def test_files_of_a_crashed_save_are_ignored_then_swept(run_dir: Path) -> None:
    """A kill after the rename but before the commit leaves a file no row names."""
    with RunStore.create(run_dir, config={}) as store:
        store.save_round(0, small(0), None)
        store.save_round(1, small(1), None)
    weights_dir = run_dir / "weights"
    orphan = weights_dir / weights_file_name(2)
    orphan.write_bytes((weights_dir / weights_file_name(1)).read_bytes())
    stale_tmp = weights_dir / f".{weights_file_name(2)}.abc123.tmp"
    stale_tmp.write_bytes(b"half a file")
    library_tmp = weights_dir / ".tmpXF94Td"  # safetensors' own temporary file
    library_tmp.write_bytes(b"half a file")
    with RunStore.open(run_dir) as store:
        assert store.last_round() == 1
        assert store.load_latest_valid()[0] == 1
        assert orphan.exists()  # opening alone (e.g. to inspect a live run) deletes nothing
        store.save_round(2, small(2), None)
        assert not stale_tmp.exists()
        assert not library_tmp.exists()
        assert_identical(store.load_round(2)[0], small(2))


CHILD = (
    WEIGHTS_FOR
    + """
import sys
from covey.server._store import RunStore

store = RunStore.create(sys.argv[1], config={"crash": True})
r = 0
while True:
    store.save_round(
        r,
        weights_for(r),
        {"round": r, "central_loss": 1.0 / (r + 1)},
        b"state-%d" % r,
        keep_last=4,
    )
    print(r, flush=True)
    r += 1
"""
)


def test_sigkill_during_saves_leaves_a_loadable_run(run_dir: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            while True:
                line = proc.stdout.readline()
                assert line, f"the saving process died: {proc.stderr.read()}"
                if int(line) >= 3:
                    break
            threading.Event().wait(random.uniform(0.0, 0.05))  # land somewhere in a save
        finally:
            proc.kill()  # SIGKILL on POSIX: no cleanup, no atexit, no flush
            proc.wait()
    if sys.platform != "win32":
        assert proc.returncode == -9

    with RunStore.open(run_dir) as store:
        assert store.config == {"crash": True}
        last = store.last_round()
        assert last is not None
        assert last >= 3
        r, weights, rec, state = store.load_latest_valid()
        assert r == last
        assert_identical(weights, weights_for(r))
        assert rec is not None
        assert rec["round"] == r
        assert rec["central_loss"] == 1.0 / (r + 1)
        assert state == b"state-%d" % r
        assert [rr.round for rr in store.history().rounds] == list(range(r + 1))
        # The run continues where it stopped, and leftovers of the killed save are swept.
        store.save_round(r + 1, weights_for(r + 1), None, keep_last=4)
        assert_identical(store.load_round(r + 1)[0], weights_for(r + 1))
    names = sorted(p.name for p in (run_dir / "weights").iterdir())
    assert names == [weights_file_name(i) for i in range(r - 2, r + 2)], (r, last, names)


# -- clients and events ----------------------------------------------------------------


def test_client_ids_are_stable_across_reopen(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={}) as store:
        assert store.client_id("alice") == 0
        assert store.client_id("bob") == 1
        assert store.client_id("alice") == 0
        with pytest.raises(ValueError, match="client name"):
            store.client_id("")
    with RunStore.open(run_dir) as store:
        assert store.clients() == {"alice": 0, "bob": 1}
        assert store.client_id("bob") == 1
        assert store.client_id("carol") == 2
    with RunStore.open(run_dir) as store:
        assert store.clients() == {"alice": 0, "bob": 1, "carol": 2}


def test_events_and_client_ids_from_many_threads(run_dir: Path) -> None:
    threads_n, events_n, names_n = 8, 20, 12
    barrier = threading.Barrier(threads_n)
    ids: list[dict[str, int]] = [{} for _ in range(threads_n)]
    errors: list[BaseException] = []

    with RunStore.create(run_dir, config={}) as store:

        def work(t: int) -> None:
            try:
                barrier.wait()
                for i in range(events_n):
                    store.log_event(f"client-{t}", "join" if i == 0 else "rejoin", f"{t}:{i}")
                    name = f"c{(i + t) % names_n}"
                    ids[t][name] = store.client_id(name)
            except BaseException as exc:  # noqa: BLE001 - a thread's error is reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []

        events = store.events()
        assert len(events) == threads_n * events_n
        expected = {f"{t}:{i}" for t in range(threads_n) for i in range(events_n)}
        assert {e[3] for e in events} == expected
        times = [e[0] for e in events]
        assert times == sorted(times)
        mine = store.events("client-3")
        assert [e[3] for e in mine] == [f"3:{i}" for i in range(events_n)]
        assert mine[0][1:3] == ("client-3", "join")
        assert store.events("nobody") == []

        registry = store.clients()
        assert sorted(registry.values()) == list(range(names_n))
        for seen in ids:
            for name, cid in seen.items():
                assert registry[name] == cid
    with RunStore.open(run_dir) as store:
        assert len(store.events()) == threads_n * events_n
        assert store.clients() == registry


def test_event_must_be_named(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={}) as store:
        with pytest.raises(ValueError, match="event"):
            store.log_event("a", "")
        store.log_event("a", "timeout")
        ((when, client, event, detail),) = store.events()
        assert (client, event, detail) == ("a", "timeout", "")
        assert isinstance(when, float)


def test_database_is_in_wal_mode_with_json_records(run_dir: Path) -> None:
    with RunStore.create(run_dir, config={}) as store:
        store.save_round(0, small(0), record(0))
    conn = sqlite3.connect(run_dir / "run.sqlite")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        name, sha, text = conn.execute(
            "SELECT weights_file, sha256, record FROM rounds WHERE round = 0"
        ).fetchone()
    finally:
        conn.close()
    assert name == "round-00000.safetensors"
    assert len(sha) == 64
    assert json.loads(text)["central_loss"] == 1.0


def test_fleet_events_and_new_client_ids_commit_without_a_sync_of_their_own(
    run_dir: Path,
) -> None:
    # Each join and leave synced the database on its own: a storm of 300 clients spent
    # seconds in fsync before each was welcomed. They now go with the next synced commit.
    with RunStore.create(run_dir, config={}) as store:
        said: list[str] = []
        with store._db.reading() as conn:
            conn.set_trace_callback(said.append)
        store.client_id("phone-1")
        store.log_event("phone-1", "join", "ipv4:127.0.0.1:5")
        store.save_round(0, weights_for(0), {"round": 0}, None)
        with store._db.reading() as conn:
            conn.set_trace_callback(None)
            assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL again
    modes = [(i, s) for i, s in enumerate(said) if s.startswith("PRAGMA synchronous")]

    def mode_at(i: int) -> str:
        before = [s for j, s in modes if j < i]
        return before[-1] if before else "PRAGMA synchronous = FULL"  # as the store opened

    inserts = [(i, s) for i, s in enumerate(said) if s.startswith("INSERT INTO")]
    assert {s.split()[2] for _, s in inserts} >= {"clients", "events", "rounds"}, said
    for i, statement in inserts:
        fleet = statement.split()[2] in ("clients", "events")
        want = "NORMAL" if fleet else "FULL"  # a round's rows are synced at their commit
        assert mode_at(i) == f"PRAGMA synchronous = {want}", (statement, said)


EVENTS_CHILD = """
import os, sys
from covey.server._store import RunStore
store = RunStore.create(sys.argv[1], config={})
for i in range(50):
    store.log_event(f"phone-{store.client_id(f'phone-{i}')}", "join", "")
os.kill(os.getpid(), 9)
"""


def test_fleet_events_survive_a_sigkill_right_after_they_are_logged(run_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-c", EVENTS_CHILD, str(run_dir)], timeout=60)
    assert done.returncode == -9
    with RunStore.open(run_dir) as store:
        assert len(store.events()) == 50
        assert store.clients() == {f"phone-{i}": i for i in range(50)}


def test_history_has_the_runs_config_and_client_names(run_dir: Path) -> None:
    # Before, store.history() had an empty config and no client names, unlike
    # History.load of the same run: history.name_of(0) said "client 0".
    with RunStore.create(run_dir, config={"rounds": 1, "seed": 3}) as store:
        assert store.client_id("hospital-a") == 0
        store.save_round(0, small(0), record(0))
    with RunStore.open(run_dir) as store:
        history = store.history()
    assert history.config == {"rounds": 1, "seed": 3}
    assert history.name_of(0) == "hospital-a"
    assert [r.round for r in history.rounds] == [0]


def test_the_same_weights_make_the_same_weights_file(tmp_path: Path) -> None:
    # safetensors keeps a file's metadata in a hash map whose order changes from
    # one write to the next: two runs of the same seed, or the same round written
    # twice, gave weights files (and SHA-256s) of other bytes for the same arrays.
    weights = {"W": np.arange(6.0).reshape(2, 3), "b": np.zeros(3)}
    spec = WeightsSpec.of(weights)
    paths = [tmp_path / f"round-{i}.safetensors" for i in range(20)]
    digests = {write_weights(path, 3, weights, spec) for path in paths}
    assert len(digests) == 1
    assert len({path.read_bytes() for path in paths}) == 1
    with safetensors.safe_open(str(paths[0]), framework="numpy") as f:
        assert f.metadata() == {"covey_names": '["W", "b"]', "covey_round": "3"}
        assert (f.get_tensor("W") == weights["W"]).all()


def test_two_runs_of_the_same_seed_write_the_same_weights_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), np.arange(40) % 2

    def client_fn(cid: int) -> LogisticClient:
        return LogisticClient(cid, x[cid::4], y[cid::4], lr=0.5)

    def run(folder: Path) -> dict[str, bytes]:
        strategy = covey.FedAvg(fraction_fit=0.5)
        covey.simulate(client_fn, 4, 2, strategy, logistic_init(3, 2), seed=5, run_dir=folder)
        return {p.name: p.read_bytes() for p in sorted((folder / "weights").iterdir())}

    first = run(tmp_path / "a")
    assert first
    assert all(run(tmp_path / f"b{i}") == first for i in range(3))
