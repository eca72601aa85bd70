"""A disk without room for one more round's file: the save says how much, a resume refuses.

A round's file is written before the oldest kept one is deleted (a crash then
always leaves one to resume from), so ``--keep-last 1`` needs room for two files.
Before, a run on a disk with room for one stopped at round 1 saying only "No space
left on device", and every resume trained a round and stopped there again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from safetensors import SafetensorError

import covey
from covey.core import _historyfile
from covey.core._history import History
from covey.core._historyfile import HistoryFile
from covey.server import _room
from covey.server._runlock import RunRefusedError
from covey.server._store import RunStore

sys.path.insert(0, str(Path(__file__).parent))
from _clirun import covey as covey_cli
from _clirun import (
    in_tmp,  # noqa: F401 - the fixture, used by pytestmark
    last_line,
)
from _live import Fit, Joined, Served

pytestmark = pytest.mark.usefixtures("in_tmp")

_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def _one_client() -> covey.Strategy:
    return covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)


@contextlib.contextmanager
def _saved_once(run: Path, weights: dict[str, Any]) -> Iterator[tuple[RunStore, int]]:
    """A run store that saved round 0 (keep_last=1), and the size of that round's file."""
    with RunStore.create(run, config={}) as store:
        store.save_round(0, weights, None, keep_last=1)
        yield store, (run / "weights" / "round-00000.safetensors").stat().st_size


def test_a_save_with_no_room_says_how_much_the_kept_rounds_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = {"w": np.zeros(1000)}
    with _saved_once(tmp_path / "run", weights) as (store, size):

        def full(*args: Any, **kwargs: Any) -> None:
            raise SafetensorError(_FULL)

        monkeypatch.setattr(safetensors.numpy, "save_file", full)
        _free(monkeypatch, 100)
        with pytest.raises(OSError, match="cannot save round 1 to ") as caught:
            store.save_round(1, weights, None, keep_last=1)
        said = str(caught.value)
        assert said.startswith("cannot save round 1 to "), said
        assert _FULL in said
        assert (
            f"the run keeps the newest round's file (keep_last=1) and writes each new one, "
            f"{size / 1e3:.1f} kB, before it deletes the oldest, so that a crash always leaves "
            "one to resume from: the disk needs room for 2 such files at once; free at least "
            f"{(size - 100) / 1e3:.1f} kB more there, then resume the run"
        ) in said
        with pytest.raises(OSError, match=r"; every round adds a file of [\d.]+ kB \(keep_last"):
            store.save_round(1, weights, None)  # every round's file kept
        monkeypatch.setattr(safetensors.numpy, "save_file", _refuse_other)
        with pytest.raises(OSError, match="Input/output error") as other:  # room: not said
            store.save_round(1, weights, None, keep_last=1)
        assert "free" not in str(other.value)
        assert store.rounds() == [0]


def _refuse_other(*args: Any, **kwargs: Any) -> None:
    raise SafetensorError("Error while serializing: I/O error: Input/output error (os error 5)")


def _free(monkeypatch: pytest.MonkeyPatch, free: int = 0) -> None:
    """The run folder's disk reports ``free`` bytes free."""
    real = shutil.disk_usage

    def full(path: Any) -> Any:
        return real(path)._replace(free=free)

    monkeypatch.setattr(_room.shutil, "disk_usage", full)


def test_a_served_resume_without_room_for_a_round_is_refused_before_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    served = Served(_one_client(), 1, run_dir=run, keep_last=1, plot=False)
    Joined(served.port).join()
    served.join()
    before = sorted(p.name for p in (run / "weights").iterdir())
    (run / "weights" / ".round-00002.safetensors.0123456789ab.tmp").write_bytes(b"x" * 10)
    _free(monkeypatch)
    listened: list[int] = []
    with pytest.raises(RunRefusedError) as refused:
        covey.deploy.serve(
            _one_client(), 3, None, run_dir=run, resume=True, insecure=True,
            on_listen=listened.append, wait_timeout=5.0,
        )  # fmt: skip
    assert listened == []
    said = str(refused.value)
    size = (run / "weights" / "round-00001.safetensors").stat().st_size
    assert said.startswith(
        f"cannot resume the run in {run}: its disk has 10 bytes free, less than the {size} "
        "bytes of one round's file, which the resumed run writes beside the rounds' files it "
        "keeps (it deletes the oldest only once the new one is written, so that a crash always "
        f"leaves one to resume from); free at least {size - 10} bytes there (or copy the run "
        "folder to a disk with room), then resume it"
    ), said
    assert refused.value.errno == errno.ENOSPC
    code, out = covey_cli(
        "server", "--app", "tiny_app:server_app", "--insecure", "--resume", str(run),
        "--rounds", "3",
    )  # fmt: skip
    assert code == 2, out
    assert f" error: {said}" in " ".join(last_line(out).split()), out
    assert "Traceback" not in out
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "weights").iterdir())[1:] == before  # nothing swept


def test_a_simulated_resume_without_room_for_a_round_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "sim"
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    covey.simulate(lambda cid: Fit(), 2, 1, strategy, {"w": np.zeros(4)}, run_dir=run)
    _free(monkeypatch)
    with pytest.raises(RunRefusedError, match=f"cannot resume the run in {run}: its disk has"):
        covey.simulate(
            lambda cid: Fit(), 2, 2, strategy, {"w": np.zeros(4)}, run_dir=run, resume=True
        )
    monkeypatch.undo()
    result = covey.simulate(
        lambda cid: Fit(), 2, 2, strategy, {"w": np.zeros(4)}, run_dir=run, resume=True
    )
    assert [r.round for r in result.history.rounds] == [0, 1, 2]


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 16 MB tmpfs (as root): room for one 9.6 MB round's file and the database, not two."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small disk needs root")
    where = Path(tempfile.mkdtemp())
    mount = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)]
    made = subprocess.run(mount, capture_output=True, check=False, timeout=30)
    if made.returncode != 0:
        pytest.skip(f"root here may not mount a tmpfs: {made}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=30)
        where.rmdir()


def test_keep_last_1_on_a_disk_with_room_for_one_file(small_disk: Path) -> None:
    run = small_disk / "run"
    big = {"w": np.zeros(1_200_000)}  # 9.6 MB a file
    served = Served(_one_client(), 3, run_dir=run, keep_last=1, plot=False, initial_weights=big)
    joined = Joined(served.port)
    with pytest.raises((OSError, covey.FederationError)) as caught:
        served.join()
    joined.join()
    # The run stops on the failed save, even if history.json, written as round 1's file
    # is, found the disk full first (before, its error stopped the run, and the save's was
    # only logged).
    said = str(caught.value)
    assert "the disk needs room for 2 such files at once; free at least " in said
    assert re.search(r"free at least [2-9]\.\d MB more there, then resume the run", said), said
    assert [p.name for p in (run / "weights").iterdir()] == ["round-00000.safetensors"]
    # Before, the resume listened, trained round 1 and stopped at its save again.
    resumed = Served(_one_client(), 3, run_dir=run, keep_last=1, plot=False, resume=True)
    with pytest.raises(RunRefusedError, match=r"less than the 9\.6 MB of one round's file"):
        resumed.join()
    assert resumed.port == 0  # it never listened
    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True, timeout=30)
    resumed = Served(_one_client(), 3, run_dir=run, keep_last=1, plot=False, resume=True)
    Joined(resumed.port).join()
    result = resumed.join()
    assert [r.round for r in result.history.rounds] == [0, 1, 2, 3]
    assert [p.name for p in (run / "weights").iterdir()] == ["round-00003.safetensors"]


def _round_1_finds_no_room(monkeypatch: pytest.MonkeyPatch, *, save: bool) -> None:
    """From round 1, ``history.json`` finds the disk full; round 1's file too if ``save``.

    The save fails a moment after the history does: the order in which the run met them.
    """
    real_save, real_write = safetensors.numpy.save_file, HistoryFile.write

    def save_file(tensors: Any, filename: Any, *args: Any, **kwargs: Any) -> None:
        if save and "round-00001" in str(filename):
            time.sleep(0.3)
            raise SafetensorError(_FULL)
        real_save(tensors, filename, *args, **kwargs)

    def write(self: HistoryFile, history: History, *, final: bool = False) -> bool:
        if history.rounds and history.rounds[-1].round >= 1:
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise _historyfile._unwritten(self.path, history, full) from full
        return real_write(self, history, final=final)

    monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
    monkeypatch.setattr(HistoryFile, "write", write)


_NEEDED = "the disk needs room for 3 such files at once; "


def test_a_simulation_stops_with_the_round_file_that_found_no_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: stopped by "round 1: cannot write .../history.json: No space left on device",
    # written as round 1's file was; the save's error, saying the room the run needs, was
    # only logged.
    _round_1_finds_no_room(monkeypatch, save=True)
    run = tmp_path / "sim"
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    with pytest.raises(OSError, match="No space left on device") as caught:
        covey.simulate(lambda cid: Fit(), 2, 3, strategy, {"w": np.zeros(4)}, run_dir=run)
    said = str(caught.value)
    assert said.startswith(f"cannot save round 1 to {run / 'weights'}"), said
    assert _NEEDED in said, said
    assert "history.json" in str(caught.value.__cause__)
    # Only the history found no room: it says what room the run's files need.
    monkeypatch.undo()
    _round_1_finds_no_room(monkeypatch, save=False)
    run = tmp_path / "sim2"
    with pytest.raises(OSError, match="No space left on device") as caught:
        covey.simulate(lambda cid: Fit(), 2, 3, strategy, {"w": np.zeros(4)}, run_dir=run)
    said = str(caught.value)
    history = run / "history.json"
    assert said.startswith(f"round 1: cannot write {history}: No space left on device; "), said
    assert _NEEDED in said, said
    assert caught.value.errno == errno.ENOSPC


def test_a_served_run_stops_with_the_round_file_that_found_no_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _round_1_finds_no_room(monkeypatch, save=True)
    run = tmp_path / "run"
    served = Served(_one_client(), 3, run_dir=run, keep_last=1, plot=False)
    joined = Joined(served.port)
    with pytest.raises((OSError, covey.FederationError)) as caught:
        served.join()
    joined.join()
    said = str(caught.value)
    assert f"cannot save round 1 to {run / 'weights'}" in said, said
    assert "the disk needs room for 2 such files at once; " in said, said


def test_a_round_file_written_before_the_database_found_no_room_is_not_counted_as_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The round's file was written whole, then SQLite said "database or disk is full":
    # the room to free was measured with that file still on the disk, a file too high.
    weights = {"w": np.zeros(1000)}
    with _saved_once(tmp_path / "run", weights) as (store, size):
        folder = tmp_path / "run" / "weights"
        real = shutil.disk_usage
        budget = size + size // 2  # what the disk holds for round files

        def used(path: Any) -> Any:
            taken = sum(p.stat().st_size for p in folder.iterdir())
            return real(path)._replace(free=budget - taken)

        monkeypatch.setattr(_room.shutil, "disk_usage", used)

        def full(*args: Any, **kwargs: Any) -> Any:
            raise OSError(
                f"cannot write {tmp_path / 'run' / 'run.sqlite'}: database or disk is full"
            )

        monkeypatch.setattr(store._db, "transaction", full)
        with pytest.raises(OSError, match="database or disk is full") as caught:
            store.save_round(1, weights, None, keep_last=1)
        assert f"free at least {(size - size // 2) / 1e3:.1f} kB more there" in str(caught.value)
        assert sorted(p.name for p in folder.iterdir()) == ["round-00000.safetensors"]
