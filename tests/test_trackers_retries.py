"""Trackers of a deployed run whose round was run again (``serve(round_retries=N)``).

The attempt given up is no round of the run: a tracker sees each round once,
with the numbers of the attempt that counted. Read back with TensorBoard's
``EventAccumulator``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core import RoundRecord
from covey.trackers import round_scalars

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Raw, Served

pytestmark = pytest.mark.timeout(120)

RAW_HEARTBEAT = 10.0
"""A Raw client sends no heartbeats: it must not be dropped before round 1 sends it a task."""


class Counting(covey.Client):
    """Adds one to every weight; reports how many fits it has done, this one included."""

    def __init__(self) -> None:
        self.fits = 0
        self.lock = threading.Lock()

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        with self.lock:
            self.fits += 1
            fits = self.fits
        return covey.FitResult(
            weights={k: v + 1 for k, v in weights.items()},
            num_examples=1,
            metrics={"fits": float(fits)},
        )


def test_a_tracker_sees_a_retried_round_once_with_the_attempt_that_counted(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from covey.trackers import TensorBoardLogger

    strategy = covey.FedAvg(
        fraction_fit=1.0, min_fit_clients=2, min_available_clients=2, fraction_evaluate=0.0
    )
    seen: list[RoundRecord] = []
    with TensorBoardLogger(tmp_path / "tb") as tb:
        served = Served(
            strategy,
            2,
            round_retries=1,
            run_dir=tmp_path / "run",
            heartbeat=RAW_HEARTBEAT,
            on_round=[seen.append, tb],
        )
        early = Counting()
        sites = [Joined(served.port, early, name="early")]
        # Round 1 samples "early" and the raw client, which takes its task and drops
        # its connection: the attempt falls short (1 of 2 replied), on lost connections
        # alone, and is run again once a second site is there.
        raw = Raw(served.port)
        task = raw.next_task()
        assert (task.kind, task.round) == ("fit", 1)
        raw.call.cancel()
        late = Counting()
        sites.append(Joined(served.port, late, name="late"))
        try:
            result = served.join()
        finally:
            for site in sites:
                site.join()
            raw.close()

    history = result.history
    assert [r.round for r in history.rounds] == [0, 1, 2]
    counted = history.rounds[1]
    assert len(counted.aggregate_info["retried"]) == 1  # the attempt given up
    assert "raw: client disconnected" in counted.aggregate_info["retried"][0]
    assert not counted.fit_failures
    # "early" fitted in both attempts, "late" in the second only: the mean of 2 and 1.
    assert counted.fit_metrics["fits"] == pytest.approx(1.5)
    np.testing.assert_array_equal(result.weights["w"], np.full(8, 2.0))
    # The round's traffic is every attempt's: the model went to two clients in each.
    assert history.rounds[2].bytes_sent == 2 * 64
    assert counted.bytes_sent == 2 * 2 * 64

    # Each round reached the callbacks once, as the record the history keeps.
    assert [r.round for r in seen] == [0, 1, 2]
    assert seen[1] is counted

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in history.rounds:
        for tag, value in round_scalars(record).items():
            expected.setdefault(tag, []).append((record.round, value))
    assert {"fit/fits", "clients/fit", "clients/failures"} <= set(expected)
    for tag, values in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in values], tag  # each round once
        assert np.allclose([v for _, v in got], [v for _, v in values], rtol=1e-6), tag
    fits = {e.step: e.value for e in events.Scalars("fit/fits")}
    assert fits == {1: 1.5, 2: 2.5}  # not round 1's first attempt's 1.0
    failures = {e.step: e.value for e in events.Scalars("clients/failures")}
    assert failures == {1: 0.0, 2: 0.0}  # not the attempt's lost client
