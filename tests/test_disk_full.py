"""A full disk (or a file-size limit) under a run folder: clear errors, nothing left running."""

from __future__ import annotations

import errno
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core._files import atomic_write
from covey.core._history import History


class Plus(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def _no_space(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_names_the_file_and_leaves_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "history.json"
    target.write_text("old")

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic_write(target, full)
    assert caught.value.errno == errno.ENOSPC
    assert str(target) in str(caught.value)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_a_simulation_whose_disk_fills_stops_its_workers_and_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shm_files: list[str]
) -> None:
    run_dir = tmp_path / "run"

    def fill_disk(record: covey.RoundRecord) -> None:
        if record.round == 2:  # from now on every write of the run folder fails
            monkeypatch.setattr(os, "fsync", _no_space)

    with pytest.raises(OSError, match="No space left on device") as caught:
        covey.simulate(
            lambda cid: Plus(),
            2,
            6,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.zeros(4)},
            run_dir=run_dir,
            backend="process",
            num_workers=2,
            on_round=fill_disk,
        )
    monkeypatch.undo()
    # The run's own error (the history of round 3), not the run.json written after it.
    assert str(run_dir / "history.json") in str(caught.value)
    assert multiprocessing.active_children() == []
    # The last history written whole is still there, and no temporary file is left.
    assert [r.round for r in History.load(run_dir).rounds] == [0, 1, 2]
    assert sorted(p.name for p in run_dir.iterdir()) == ["history.json", "run.json", "run.lock"]
