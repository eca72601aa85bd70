"""RunStore.discard_after killed between its steps: the next resume finishes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covey.server._roundfiles import weights_file_name
from covey.server._store import RunStore

# Killed (SIGKILL) in the discard: as it deletes its first weights file ("files"),
# after what it committed first, or as it opens its next transaction ("rows").
CHILD = """
import os, sys
from pathlib import Path
from covey.server._rundb import RunDB
from covey.server._store import RunStore

run_dir, floor, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real_unlink, real_transaction = Path.unlink, RunDB.transaction
opened = []

def unlink(self, missing_ok=False):
    if self.parent.name == "weights":
        os.kill(os.getpid(), 9)
    return real_unlink(self, missing_ok=missing_ok)

def transaction(self):
    opened.append(True)
    if len(opened) == 2:
        os.kill(os.getpid(), 9)
    return real_transaction(self)

with RunStore.open(run_dir, exclusive=True) as store:
    if where == "files":
        Path.unlink = unlink
    else:
        RunDB.transaction = transaction
    store.discard_after(floor)
"""


@pytest.mark.parametrize("where", ["files", "rows"])
@pytest.mark.parametrize("damaged", [True, False])
def test_a_discard_killed_between_its_steps_is_finished_by_the_next_resume(
    tmp_path: Path, damaged: bool, where: str
) -> None:
    # Before: the rows were deleted and committed first, so a kill before the files
    # went left files of rounds the database no longer had, and the resume was
    # refused ("the database lost its newest rounds").
    run_dir = tmp_path / "run"
    with RunStore.create(run_dir, config={}) as store:
        for r in range(5):
            store.save_round(r, {"w": np.full(3, float(r))}, {"round": r})
    if damaged:  # the resume case: rounds 3 and 4 did not survive, round 2 is the newest good
        for r in (3, 4):
            (run_dir / "weights" / weights_file_name(r)).write_bytes(b"not safetensors")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(run_dir), "2", where], timeout=120, capture_output=True
    )
    assert done.returncode == -9, done.stderr.decode()
    files = {r for r in range(5) if (run_dir / "weights" / weights_file_name(r)).exists()}
    assert files == ({0, 1, 2, 3, 4} if where == "files" else {0, 1, 2})

    # Resumed as RunStore's docstring says a server resumes.
    with RunStore.open(run_dir, exclusive=True) as store:
        r, weights, _, _ = store.load_latest_valid()
        assert r == 2  # never a discarded round, whether its file survived or not
        np.testing.assert_array_equal(weights["w"], np.full(3, 2.0))
        store.discard_after(r)
        assert store.rounds() == [0, 1, 2]
        store.save_round(3, {"w": np.full(3, 30.0)}, {"round": 3})
        assert [rec.round for rec in store.history().rounds] == [0, 1, 2, 3]
        assert store.load_latest_valid()[0] == 3
    left = sorted(p.name for p in (run_dir / "weights").iterdir())
    assert left == [weights_file_name(r) for r in range(4)]
