"""A run opened with ``RunStore.open`` that this user cannot write to: read, never written."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey.server._rundb as rundb
from covey.server import RunStore


def _finished_run(folder: Path) -> None:
    with RunStore.create(folder, config={"rounds": 2}) as store:
        for r in range(3):
            store.save_round(r, {"w": np.full(2, float(r))}, {"round": r})
        store.log_event("alice", "join", "127.0.0.1")
        store.client_id("alice")
        store.set_status("finished")


def _files(folder: Path) -> dict[str, tuple[int, int, str]]:
    """The run's files: each one's size, modification time and SHA-256.

    Not the ``-shm`` and empty ``-wal`` SQLite makes beside a database it only reads
    where it may (as root, whatever the folder's mode); a folder this user cannot
    write to gets none (tests/test_run_paths.py).
    """
    return {
        str(p.relative_to(folder)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("run.sqlite-shm", "run.sqlite-wal")
    }


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The database each ``sqlite3.connect`` of covey's run store opens, as its URI."""
    import covey.server._readcopy as readcopy

    opened: list[str] = []
    real = sqlite3.connect

    def connect(database: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(str(database))
        return real(database, *args, **kwargs)

    monkeypatch.setattr(rundb.sqlite3, "connect", connect)
    assert readcopy.sqlite3 is rundb.sqlite3
    return opened


@pytest.fixture
def not_writable(monkeypatch: pytest.MonkeyPatch) -> None:
    """This user may write no run folder, as a non-root user in a read-only folder.

    Root writes into any folder whatever its mode: what opening decides is checked
    here as any user, and tests/test_run_paths.py reads a truly read-only folder.
    """
    monkeypatch.setattr(rundb, "_writable", lambda path: False, raising=False)


def test_opening_a_run_to_read_writes_nothing(
    tmp_path: Path, not_writable: None, connections: list[str]
) -> None:
    # Before: RunStore.open opened every run to write (mode=rw, its WAL files made
    # beside it), so a run in a folder this user cannot write to could not be read.
    folder = tmp_path / "run"
    _finished_run(folder)
    before = _files(folder)
    connections.clear()
    with RunStore.open(folder) as store:
        assert _files(folder) == before
        assert store.last_round() == 2
        assert store.status == "finished"
        assert store.config == {"rounds": 2}
        weights, record, _ = store.load_round(1)
        assert weights["w"].tolist() == [1.0, 1.0]
        assert record is not None
        assert record["round"] == 1
        assert store.load_latest_valid()[0] == 2
        assert [r.round for r in store.history().rounds] == [0, 1, 2]
        assert store.clients() == {"alice": 0}
        assert [e[2] for e in store.events()] == ["join"]
        assert store.kept_rounds() == [0, 1, 2]
        seen: list[int | None] = []
        reader = threading.Thread(target=lambda: seen.append(store.last_round()))
        reader.start()
        reader.join(timeout=60)
        assert seen == [2]  # one connection, used from every thread
        assert _files(folder) == before
    assert _files(folder) == before
    assert connections, "no database was opened"
    assert all("mode=ro" in uri for uri in connections), connections


def test_a_run_opened_to_read_is_written_once_it_can_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connections: list[str]
) -> None:
    # The folder could not be written when opened (or seemed not to): the first write
    # opens it to write, and every read after it sees what was written.
    folder = tmp_path / "run"
    _finished_run(folder)
    monkeypatch.setattr(rundb, "_writable", lambda path: False, raising=False)
    connections.clear()
    with RunStore.open(folder) as store:
        assert store.last_round() == 2
        assert all("mode=ro" in uri for uri in connections), connections
        store.save_round(3, {"w": np.full(2, 3.0)}, {"round": 3})
        assert "mode=rw" in connections[-1]
        store.set_status("running")
        assert store.last_round() == 3
        assert store.status == "running"
        assert store.load_round(3)[0]["w"].tolist() == [3.0, 3.0]
    monkeypatch.undo()
    with RunStore.open(folder) as store:
        assert store.rounds() == [0, 1, 2, 3]
        assert store.status == "running"


def test_writing_a_run_opened_to_read_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, not_writable: None
) -> None:
    folder = tmp_path / "run"
    _finished_run(folder)
    before = _files(folder)

    def read_only(path: Path, *, serve: bool = False) -> None:
        raise OSError(f"cannot open {path / 'run.sqlite'} to write the run") from (
            rundb.sqlite3.OperationalError("attempt to write a readonly database")
        )

    with RunStore.open(folder) as store:
        # as SQLite says it where this user cannot write the folder
        monkeypatch.setattr(rundb, "_open_to_write", read_only)
        writes = {
            "save_round": lambda: store.save_round(3, {"w": np.zeros(2)}, None),
            "set_status": lambda: store.set_status("failed"),
            "discard_after": lambda: store.discard_after(0),
            "log_event": lambda: store.log_event("bob", "join"),
            "client_id": lambda: store.client_id("bob"),
        }
        for name, write in writes.items():
            with pytest.raises(OSError, match="cannot write to the run in ") as info:
                write()
            assert str(info.value) == (
                f"cannot write to the run in {folder}: attempt to write a readonly "
                "database; it was opened to read only (give this user write permission "
                "on the folder and its files, or copy the folder somewhere writable)"
            ), name
        assert store.last_round() == 2
    assert _files(folder) == before


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root writes into any folder whatever its mode (tests/test_run_paths.py mounts one)",
)
def test_a_run_in_a_read_only_folder_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    _finished_run(folder)
    for path in (folder, folder / "weights", *folder.rglob("*")):
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        before = _files(folder)
        with RunStore.open(folder) as store:
            assert store.load_round(2)[0]["w"].tolist() == [2.0, 2.0]
            with pytest.raises(OSError, match=f"cannot write to the run in {folder}"):
                store.set_status("failed")
        assert _files(folder) == before
    finally:
        for path in (folder, *folder.rglob("*")):
            path.chmod(path.stat().st_mode | 0o200)


def test_opening_a_run_exclusively_where_its_folder_cannot_be_written_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    folder = tmp_path / "run"
    _finished_run(folder)
    (folder / "run.lock").unlink(missing_ok=True)
    real_open = os.open

    def denied(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith("run.lock"):  # as for a user without write on the folder
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(OSError, match="the run folder cannot be written") as info:
        RunStore.open(folder, exclusive=True)
    monkeypatch.undo()
    message = str(info.value)
    assert "Errno" not in message
    assert message.startswith(f"cannot open the run in {folder} to serve or resume it: ")
    assert f"(Permission denied: {folder / 'run.lock'})" in message
    assert "no other process serves the same run" in message
    with RunStore.open(folder) as store:  # reading it needs no write
        assert store.last_round() == 2
