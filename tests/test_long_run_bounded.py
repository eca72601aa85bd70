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
from collections.abc import Sequence
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


def _fresh(*parts: str) -> str:
    return "".join(parts)  # a new string object each call, as an f-string makes it


class Named(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        metrics = {_fresh("lo", "ss"): float(self.cid)}
        return covey.FitResult(weights={"w": weights["w"] + 1.0}, num_examples=1, metrics=metrics)

    def evaluate(self, weights: covey.Weights, config: dict[str, Any]) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=0.0, num_examples=1, metrics={_fresh("ac", "c"): 1.0})


def _by_client(results: Sequence[tuple[int, covey.core.Metrics]]) -> dict[str, Any]:
    return {_fresh("per_", "client"): {cid: m["loss"] for cid, (_, m) in enumerate(results)}}


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_the_history_keeps_one_copy_of_a_metric_name_for_all_its_rounds(backend: str) -> None:
    # The names are the same every round: a string made afresh each round (by the
    # client, a metrics function, evaluate_fn, or decoded from a reply) and kept by
    # every round's record would grow a long run's memory by its names alone.
    result = covey.simulate(
        Named,
        4,
        4,
        covey.FedAvg(fraction_fit=1.0, fraction_evaluate=1.0, fit_metrics=_by_client),
        {"w": np.zeros(3)},
        evaluate_fn=lambda rnd, w: (0.0, {_fresh("cen", "tral"): 1.0}),
        backend=backend,  # type: ignore[arg-type]
        num_workers=2,
    )

    def names(record: covey.core.RoundRecord) -> list[str]:
        by_client = record.fit_metrics["per_client"]
        return [*record.fit_metrics, *by_client, *record.evaluate_metrics, *record.central_metrics]

    first, *later = result.history.rounds[1:]
    assert names(first) == ["per_client", "0", "1", "2", "3", "acc", "central"]
    assert len(later) == 3
    for record in later:
        assert [a is b for a, b in zip(names(record), names(first), strict=True)] == [True] * 7
