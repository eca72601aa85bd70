"""A run folder made or tampered with by others: its store reads and deletes only its own files."""

from __future__ import annotations

import os
import sqlite3
import threading
import tracemalloc
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from covey.server._roundfiles import weights_file_name
from covey.server._rundb import LOCK_NAME, hold_run, is_held
from covey.server._store import RunStore


def _weights(r: int) -> dict[str, np.ndarray]:
    return {"w": np.full(4, r, dtype=np.float32)}


def _run(run_dir: Path, rounds: int = 4) -> None:
    with RunStore.create(run_dir, config={}) as store:
        for r in range(rounds):
            store.save_round(r, _weights(r), None)


def _name_file(run_dir: Path, round: int, name: str) -> None:
    with closing(sqlite3.connect(run_dir / "run.sqlite")) as conn, conn:
        conn.execute("UPDATE rounds SET weights_file = ? WHERE round = ?", (name, round))
    conn.close()


def test_a_database_naming_a_file_outside_weights_never_reads_or_deletes_it(
    tmp_path: Path,
) -> None:
    # Before, a resume read the named file and, its SHA-256 being wrong, deleted it
    # when it dropped the round (discard_after): any file the server could delete.
    run_dir = tmp_path / "run"
    _run(run_dir)
    outside = tmp_path / "precious.txt"
    outside.write_text("not the run's")
    beside = run_dir / "history.json"
    beside.write_text("{}")
    _name_file(run_dir, 3, str(outside))
    _name_file(run_dir, 2, "../history.json")
    with RunStore.open(run_dir) as store:
        named = r"run\.sqlite records .*precious\.txt.* of round 3.*damaged"
        with pytest.raises(ValueError, match=named):
            store.load_round(3)
        assert store.load_latest_valid()[0] == 1
        assert store.discard_after(1) == [2, 3]
    assert outside.read_text() == "not the run's"
    assert beside.read_text() == "{}"
    assert not (run_dir / "weights" / weights_file_name(3)).exists()  # the round's own file


def test_pruning_deletes_only_the_rounds_own_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir, 2)
    outside = tmp_path / "precious.txt"
    outside.write_text("not the run's")
    _name_file(run_dir, 0, str(outside))
    with RunStore.open(run_dir) as store:
        store.save_round(2, _weights(2), None, keep_last=1)
    assert outside.read_text() == "not the run's"
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == [weights_file_name(2)]


def test_a_weights_file_that_is_a_device_is_refused_naming_it(tmp_path: Path) -> None:
    # A link to /dev/zero was read until memory ran out (MemoryError, no file named).
    run_dir = tmp_path / "run"
    _run(run_dir)
    path = run_dir / "weights" / weights_file_name(3)
    path.unlink()
    path.symlink_to(os.devnull)
    with RunStore.open(run_dir) as store:
        with pytest.raises(ValueError, match=r"round-00003\.safetensors.*not a regular file"):
            store.load_round(3)
        assert store.load_latest_valid()[0] == 2


def test_a_weights_file_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    # A named pipe blocked the resume for ever, before the server listened.
    run_dir = tmp_path / "run"
    _run(run_dir)
    path = run_dir / "weights" / weights_file_name(3)
    path.unlink()
    os.mkfifo(path)
    said: list[BaseException | int] = []

    def load() -> None:
        with RunStore.open(run_dir) as store:
            try:
                store.load_round(3)
            except ValueError as exc:
                said.append(exc)
            said.append(store.load_latest_valid()[0])

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # let the blocked reader go before failing
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(30)
        pytest.fail("reading the run waited on a named pipe in weights/")
    assert "not a regular file" in str(said[0]), said
    assert said[1] == 2


def test_a_weights_file_the_system_cannot_read_is_not_dropped_as_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir)
    newest = run_dir / "weights" / weights_file_name(3)
    real = os.open

    def denied(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(path).name == newest.name:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    unreadable = r"cannot read weights file .*round-00003.*denied"
    with RunStore.open(run_dir) as store, pytest.raises(OSError, match=unreadable):
        store.load_latest_valid()
    monkeypatch.undo()
    with RunStore.open(run_dir) as store:
        assert store.load_latest_valid()[0] == 3


def _within(seconds: float, work: Callable[[], object], unblock: Path) -> object:
    """``work()``'s result or exception, failing the test if it waits on the pipe ``unblock``."""
    said: list[object] = []

    def run() -> None:
        try:
            said.append(work())
        except OSError as exc:
            said.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():  # let the blocked reader go before failing
        os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
        pytest.fail(f"waited on the named pipe {unblock}")
    return said[0]


def test_a_run_lock_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    # `covey run --resume`, `covey runs list` and the dashboard (for a running
    # run) opened it to read and waited for a writer for ever.
    run_dir = tmp_path / "run"
    _run(run_dir)
    lock = run_dir / LOCK_NAME
    lock.unlink(missing_ok=True)
    os.mkfifo(lock)
    assert _within(10, lambda: is_held(run_dir), lock) is None
    refused = _within(10, lambda: hold_run(run_dir), lock)
    assert isinstance(refused, OSError), refused
    assert "run.lock is not a regular file" in str(refused)
    assert str(lock) in str(refused)


def test_a_run_lock_that_is_a_folder_is_refused_by_name(tmp_path: Path) -> None:
    # Before, the raw IsADirectoryError of opening it.
    run_dir = tmp_path / "run"
    _run(run_dir)
    lock = run_dir / LOCK_NAME
    lock.unlink(missing_ok=True)
    lock.mkdir()
    with pytest.raises(OSError, match="is a folder, not the lock file") as info:
        RunStore.open(run_dir, exclusive=True)
    assert not isinstance(info.value, IsADirectoryError)
    assert str(info.value) == f"{lock} is a folder, not the lock file covey keeps there: remove it"
    assert is_held(run_dir) is None
    with RunStore.open(run_dir) as store:  # read as before
        assert store.last_round() == 3


def test_a_run_lock_that_is_a_link_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    # Before, the link was followed and the pid written over the file it points to,
    # even by a resume then refused.
    run_dir = tmp_path / "run"
    _run(run_dir)
    victim = tmp_path / "notes.txt"
    victim.write_text("kept as it is")
    lock = run_dir / LOCK_NAME
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    with pytest.raises(OSError, match="is a symbolic link, not the lock file") as info:
        RunStore.open(run_dir, exclusive=True)
    assert str(lock) in str(info.value)
    assert victim.read_text() == "kept as it is"
    assert lock.is_symlink()
    with RunStore.open(run_dir) as store:  # read as before
        assert store.last_round() == 3


def test_a_weights_folder_that_is_a_file_is_named_and_no_round_is_dropped(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir)
    kept = run_dir / "kept"
    (run_dir / "weights").rename(kept)
    (run_dir / "weights").write_text("not a folder")
    said = r"^cannot read weights file \S*round-00003\.safetensors of round 3: Not a directory$"
    with RunStore.open(run_dir) as store, pytest.raises(OSError, match=said):
        store.load_latest_valid()
    (run_dir / "weights").unlink()
    kept.rename(run_dir / "weights")
    with RunStore.open(run_dir) as store:
        assert store.load_latest_valid()[0] == 3


def test_json_nested_too_deeply_in_the_database_is_damage_named_not_a_recursion_error(
    tmp_path: Path,
) -> None:
    # `covey server --resume` stopped with a bare RecursionError naming no file.
    deep = "[" * 100_000 + "]" * 100_000
    run_dir = tmp_path / "run"
    _run(run_dir)
    with sqlite3.connect(run_dir / "run.sqlite") as conn:
        conn.execute("UPDATE rounds SET record = ? WHERE round = 2", (deep,))
    conn.close()
    with RunStore.open(run_dir) as store, pytest.raises(ValueError, match=r"round 2 .* is damaged"):
        store.history()
    with sqlite3.connect(run_dir / "run.sqlite") as conn:
        conn.execute("UPDATE run SET config = ?", (deep,))
    conn.close()
    with pytest.raises(ValueError, match=r"run\.sqlite: the run's settings are damaged"):
        RunStore.open(run_dir)


@pytest.mark.parametrize("names", ['[1, "w"]', "5"])
def test_a_weights_file_naming_its_arrays_by_no_list_of_text_is_damaged_not_a_type_error(
    tmp_path: Path, names: str
) -> None:
    # Loading the newest round for a resume stopped with a TypeError from sorting the names.
    import hashlib

    from safetensors.numpy import save

    run_dir = tmp_path / "run"
    _run(run_dir)
    data = save(_weights(3), metadata={"covey_names": names, "covey_round": "3"})
    (run_dir / "weights" / weights_file_name(3)).write_bytes(data)
    with sqlite3.connect(run_dir / "run.sqlite") as conn:
        digest = hashlib.sha256(data).hexdigest()
        conn.execute("UPDATE rounds SET sha256 = ? WHERE round = 3", (digest,))
    conn.close()
    with RunStore.open(run_dir) as store:
        with pytest.raises(ValueError, match="round 3 is unreadable: its array names are"):
            store.load_round(3)
        assert store.load_latest_valid()[0] == 2


def test_resuming_a_folder_whose_json_nests_too_deeply_or_is_a_pipe_neither_crashes_nor_waits(
    tmp_path: Path,
) -> None:
    # `covey server --resume` waited for ever on a history.json pipe, and it and `covey run
    # --resume` stopped with a RecursionError on JSON nested 100000 levels deep.
    import typer

    from covey.cli._project_sim import same_settings
    from covey.deploy._cli_resume import recorded_rounds
    from covey.sim._checkpoint import SimCheckpoint

    deep = "[" * 100_000 + "]" * 100_000
    run_dir = tmp_path / "run"
    with RunStore.create(run_dir, config={"rounds": 7}) as store:
        store.save_round(0, _weights(0), None)
    (run_dir / "history.json").write_text(deep)
    assert recorded_rounds(run_dir) == 7  # from run.sqlite, past the damaged history
    (run_dir / "history.json").unlink()
    os.mkfifo(run_dir / "history.json")
    assert _within(10, lambda: recorded_rounds(run_dir), run_dir / "history.json") == 7
    (run_dir / "project.json").write_text(deep)
    with pytest.raises(typer.Exit):
        same_settings(run_dir, {}, resume=True, rounds=3)
    (run_dir / "run.json").write_text(deep)
    keeper = SimCheckpoint.__new__(SimCheckpoint)
    keeper.start = 2
    assert keeper.run_meta(run_dir / "run.json", {"rounds": 3}) == {"rounds": 3}


def test_a_huge_file_in_place_of_a_rounds_weights_is_refused_without_reading_it_whole(
    tmp_path: Path,
) -> None:
    # Before, the file was read whole into memory, then found corrupt by its SHA-256:
    # a file of many gigabytes put in its place took all the memory first.
    import safetensors.numpy

    run_dir = tmp_path / "run"
    _run(run_dir)
    newest = run_dir / "weights" / weights_file_name(3)
    # 1. a well-formed file of another, huge model: its size agrees with its header
    big = {"w": np.zeros(4, np.float32), "x": np.zeros(1 << 22, np.float32)}  # 16 MiB
    safetensors.numpy.save_file(big, newest, metadata={"covey_round": "3"})
    # 2. 64 MiB of zeros (sparse): no safetensors header at all
    zeros = run_dir / "weights" / weights_file_name(2)
    with open(zeros, "wb") as f:
        f.truncate(64 << 20)
    # 3. a file cut short, and one with bytes after its arrays
    cut = run_dir / "weights" / weights_file_name(1)
    cut.write_bytes(cut.read_bytes()[:-3])
    grown = run_dir / "weights" / weights_file_name(0)
    grown.write_bytes(grown.read_bytes() + b"\0" * 5)
    tracemalloc.start()
    with RunStore.open(run_dir) as store:
        with pytest.raises(
            ValueError, match=r"round-00003\.safetensors of round 3 is corrupt: its"
        ):
            store.load_round(3)
        with pytest.raises(
            ValueError,
            match=r"round-00002\.safetensors of round 2 is corrupt: its header is not a "
            r"safetensors header",
        ):
            store.load_round(2)
        with pytest.raises(
            ValueError, match=r"round-00001\.safetensors of round 1 is truncated: it holds \d+"
        ):
            store.load_round(1)
        with pytest.raises(
            ValueError, match=r"round-00000\.safetensors of round 0 is larger than its arrays"
        ):
            store.load_round(0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20  # read a chunk at a time, never whole


def test_settings_files_and_a_privacy_ledger_over_their_cap_are_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # run.json, project.json and a LocalDP ledger were read whole, whatever their size:
    # a 2 GiB file put in a run folder took 2 GiB (and more to decode) to be refused.
    import typer

    import covey
    from covey import privacy
    from covey.cli._project_sim import same_settings

    class Still(covey.Client):
        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            return covey.FitResult(weights=weights, num_examples=1)

    huge = 2**31  # sparse: no disk used
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "project.json", "wb") as handle:
        handle.truncate(huge)
    with pytest.raises(typer.Exit):
        same_settings(run_dir, {}, resume=True, rounds=3)
    said = " ".join(capsys.readouterr().err.split())
    assert f"{huge:,} bytes, more than the" in said
    ledger = tmp_path / "ledger.json"
    with open(ledger, "wb") as handle:
        handle.truncate(huge)
    with pytest.raises(ValueError, match=f"{huge:,} bytes, more than the"):
        privacy.LocalDP(
            Still(),
            epsilon=1.0,
            delta=1e-5,
            clip=1.0,
            ledger_path=ledger,
        )


def test_a_folder_in_place_of_a_rounds_weights_file_is_refused_naming_it(tmp_path: Path) -> None:
    # A folder opened as the file did, and os.fdopen's IsADirectoryError named only the
    # descriptor ("Is a directory: 7"): the resume stopped there instead of skipping the round.
    run_dir = tmp_path / "run"
    _run(run_dir)
    path = run_dir / "weights" / weights_file_name(3)
    path.unlink()
    path.mkdir()
    (path / "notes.txt").write_text("kept")
    with RunStore.open(run_dir) as store:
        with pytest.raises(ValueError, match=r"round-00003\.safetensors.*not a regular file"):
            store.load_round(3)
        assert store.load_latest_valid()[0] == 2
        assert store.discard_after(2) == [3]  # the folder is not the run's: it is kept
        assert store.rounds() == [0, 1, 2]
    assert (path / "notes.txt").read_text() == "kept"


def test_a_settings_file_that_is_a_folder_is_refused_naming_it(tmp_path: Path) -> None:
    from covey.core._files import read_regular

    folder = tmp_path / "run.json"
    folder.mkdir()
    with pytest.raises(OSError, match=r"run\.json is not a regular file"):
        read_regular(folder, 1000)


def test_a_hidden_folder_in_weights_is_kept_and_rounds_still_save(tmp_path: Path) -> None:
    # Jupyter makes .ipynb_checkpoints in a folder it shows: the sweep of a crashed
    # save's hidden leftovers tried to unlink it, and every save failed.
    run_dir = tmp_path / "run"
    _run(run_dir, 2)
    hidden = run_dir / "weights" / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "note.txt").write_text("kept")
    with RunStore.open(run_dir) as store:
        store.save_round(2, _weights(2), None, keep_last=2)
        assert store.kept_rounds() == [1, 2]
        assert store.load_round(2)[0]["w"][0] == 2
    assert (hidden / "note.txt").read_text() == "kept"


def test_an_aggregation_state_stored_as_text_is_damage_and_its_round_skipped(
    tmp_path: Path,
) -> None:
    # bytes(state) of a str failed with a bare "TypeError: string argument without an
    # encoding", which stopped the resume instead of skipping the round.
    run_dir = tmp_path / "run"
    with RunStore.create(run_dir, config={}) as store:
        for r in range(3):
            store.save_round(r, _weights(r), None, b"state-%d" % r)
    with closing(sqlite3.connect(run_dir / "run.sqlite")) as conn, conn:
        conn.execute("UPDATE rounds SET server_state = 'edited' WHERE round = 2")
    with RunStore.open(run_dir) as store:
        with pytest.raises(ValueError, match=r"state of round 2 in .*run\.sqlite is damaged"):
            store.load_round(2)
        r, weights, _, state = store.load_latest_valid()
        assert (r, state) == (1, b"state-1")
        assert weights["w"][0] == 1


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_run_sqlite_deleted_under_a_run_stops_it_rather_than_lose_its_rounds(
    tmp_path: Path, how: str
) -> None:
    # Before, SQLite went on committing to the deleted file without an error, and every
    # round saved after was lost with the process.
    run_dir = tmp_path / "run"
    db = run_dir / "run.sqlite"
    with RunStore.create(run_dir, config={}, exclusive=True) as store:
        store.save_round(0, _weights(0), None)
        for path in run_dir.glob("run.sqlite*"):
            path.unlink()
        if how == "replaced":
            _run(tmp_path / "other", rounds=1)
            (tmp_path / "other" / "run.sqlite").rename(db)
        with pytest.raises(OSError, match="it was deleted or replaced while this run") as info:
            store.save_round(1, _weights(1), None)
        assert str(db) in str(info.value)
        assert str(info.value).startswith("cannot save round 1: ")
    assert not (run_dir / "weights" / weights_file_name(1)).exists()


def test_a_simulation_whose_run_sqlite_is_deleted_stops_naming_it(tmp_path: Path) -> None:
    import covey
    from covey.core._history import RoundRecord

    run_dir = tmp_path / "run"

    def delete(record: RoundRecord) -> None:
        if record.round == 2:
            for path in run_dir.glob("run.sqlite*"):
                path.unlink()

    class Half(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            return covey.FitResult(weights={k: v / 2 for k, v in weights.items()}, num_examples=1)

    with pytest.raises(covey.FederationError, match="deleted or replaced") as info:
        covey.simulate(
            lambda cid: Half(),
            2,
            5,
            covey.FedAvg(fraction_evaluate=0.0),
            _weights(1),
            run_dir=run_dir,
            on_round=delete,
        )
    assert str(run_dir / "run.sqlite") in str(info.value)


def test_reading_a_small_file_under_a_large_cap_takes_memory_for_the_file_only(
    tmp_path: Path,
) -> None:
    from covey.core._files import TooLargeError, read_regular

    path = tmp_path / "run.json"
    path.write_bytes(b'{"status": "running"}')
    tracemalloc.start()
    try:
        data = read_regular(path, 64 * 1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == b'{"status": "running"}'
    # Reading limit + 1 bytes took a buffer of the cap (64 MiB) for a 21-byte file.
    assert peak < 1_000_000, peak
    path.write_bytes(b"x" * 100)
    with pytest.raises(TooLargeError, match="100 bytes, more than the 99 read"):
        read_regular(path, 99)
    assert read_regular(path, 100) == b"x" * 100
