"""A long simulation holds what one round needs, not one of anything per round.

Counted, not timed: the open files, the threads, the files in the run folder
and the objects the garbage collector tracks, between a round early in the run
and its last one. The history grows by one record a round (it is the result);
nothing else may.
"""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey

pytestmark = pytest.mark.timeout(120)

EARLY, ROUNDS = 20, 120
SLACK = 3  # a checkpoint being written as a round ends holds a file or two for a moment


class Step(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 1.0}, num_examples=1)

    def evaluate(self, weights: covey.Weights, config: dict[str, Any]) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=float(weights["w"][0]), num_examples=1)


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _run_files(run: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(run))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
@pytest.mark.parametrize("backend", ["inline", "process"])
def test_open_files_threads_and_run_folder_files_stay_bounded(tmp_path: Path, backend: str) -> None:
    run = tmp_path / "run"
    seen: dict[int, tuple[int, int, int, int]] = {}

    def count(record: covey.core.RoundRecord) -> None:
        if record.round in (EARLY, ROUNDS):
            gc.collect()
            seen[record.round] = (
                _open_files(),
                threading.active_count(),
                _run_files(run),
                len(gc.get_objects()),
            )

    result = covey.simulate(
        lambda cid: Step(),
        4,
        ROUNDS,
        covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.5),
        {"w": np.zeros(3)},
        evaluate_fn=lambda rnd, w: (float(w["w"][0]), {}),
        backend=backend,  # type: ignore[arg-type]
        num_workers=2,
        run_dir=run,
        on_round=count,
    )
    assert len(result.history.rounds) == ROUNDS + 1
    (fds, threads, files, objects), (fds2, threads2, files2, objects2) = (
        seen[EARLY],
        seen[ROUNDS],
    )
    assert fds2 <= fds + SLACK, (fds, fds2)
    assert threads2 <= threads + SLACK, (threads, threads2)
    assert files2 <= files + SLACK, (files, files2)
    assert len(list((run / "weights").iterdir())) == 2  # keep_last's default
    # The records of the rounds between (about five objects each), and no more.
    assert objects2 - objects <= 15 * (ROUNDS - EARLY), (objects, objects2)
