"""Checkpoints written off the round's critical path stay crash-consistent.

:class:`covey.server._saver.BackgroundSaver` writes round r in a thread while
round r + 1 runs. A SIGKILL while that write is in flight must leave the
previous round loadable, and the run resumable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from covey.server import RunStore
from covey.server._saver import BackgroundSaver


def _weights(value: float, size: int = 8) -> dict[str, np.ndarray]:
    return {"w": np.full(size, value, dtype=np.float32)}


def test_submit_returns_before_the_write_and_flush_waits(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", config={})
    gate = threading.Event()
    real = store.save_round

    def slow_save(*args: Any, **kwargs: Any) -> None:
        assert gate.wait(30)
        real(*args, **kwargs)

    store.save_round = slow_save  # type: ignore[method-assign]
    saver = BackgroundSaver(store)
    saver.submit(1, _weights(1.0), None, b"state")
    assert store.rounds() == []  # the loop went on while round 1 is being written
    gate.set()
    saver.flush()
    assert store.rounds() == [1]
    store.close()


def test_a_failed_save_is_raised_by_the_next_call(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", config={})
    saver = BackgroundSaver(store)
    saver.submit(2, _weights(2.0), None)
    saver.submit(1, _weights(1.0), None)  # out of order: the store refuses it
    with pytest.raises(ValueError, match="increasing order"):
        saver.flush()
    saver.flush()  # the error is raised once
    assert store.rounds() == [2]
    store.close()


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import safetensors.numpy
    import covey.server._store as store_mod
    from covey.server import RunStore
    from covey.server._saver import BackgroundSaver

    run_dir, where = sys.argv[1], sys.argv[2]
    store = RunStore.create(run_dir, config={})
    saver = BackgroundSaver(store)
    saver.submit(1, {"w": np.full(1000, 1.0, dtype=np.float32)}, None, b"one")
    saver.flush()

    def hold():
        print("writing", flush=True)
        time.sleep(600)

    if where == "file":  # the temporary file is written, not yet renamed
        real_save = safetensors.numpy.save_file
        def save_file(*args, **kwargs):
            real_save(*args, **kwargs)
            hold()
        safetensors.numpy.save_file = save_file
    else:  # the weights file is in place, its database row not yet committed
        real_write = store_mod.write_weights
        def write_weights(*args, **kwargs):
            out = real_write(*args, **kwargs)
            hold()
            return out
        store_mod.write_weights = write_weights
    saver.submit(2, {"w": np.full(1000, 2.0, dtype=np.float32)}, None, b"two")
    time.sleep(600)  # the next round would train here
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["file", "commit"])
def test_sigkill_during_a_background_write_leaves_the_previous_round(
    tmp_path: Path, where: str
) -> None:
    run_dir = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(run_dir), where],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "writing"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    store = RunStore.open(run_dir)
    try:
        round_, weights, _, state = store.load_latest_valid()
        assert round_ == 1
        assert state == b"one"
        np.testing.assert_array_equal(weights["w"], np.full(1000, 1.0, dtype=np.float32))
        # the run resumes: round 2 can be written again over whatever the kill left
        store.discard_after(1)
        saver = BackgroundSaver(store)
        saver.submit(2, _weights(2.0, 1000), None, b"two")
        saver.flush()
        assert store.load_latest_valid()[0] == 2
    finally:
        store.close()
