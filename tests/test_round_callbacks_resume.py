"""Round callbacks are called at least once for every round across a stop and a resume.

A run folder marks the saved round whose ``on_round`` callbacks have not all
returned (in the round's own save); a run stopped by a callback that raised (a
tracking server down), or killed before its callbacks returned, leaves the mark,
and the resumed run first calls them with that round's saved record. A run
resumed with nothing pending calls nothing again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _procs import killed_script
from covey.core._history import RoundRecord
from covey.server._store import RunStore

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

pytestmark = pytest.mark.timeout(120)


class Tracker:
    """Logs each round it is given; raises once, for the round ``down_at`` (a server down)."""

    def __init__(self, down_at: int | None = None) -> None:
        self.down_at = down_at
        self.given: list[int] = []
        self.logged: list[RoundRecord] = []

    def __call__(self, record: RoundRecord) -> None:
        self.given.append(record.round)
        if record.round == self.down_at:
            self.down_at = None
            raise ConnectionError("the tracking server cannot be reached")
        self.logged.append(record)


class Half(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)


def _central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
    return float(np.sum(weights["w"])), {}


def _sim(run: Path, rounds: int, **options: Any) -> covey.sim.SimulationResult:
    return covey.simulate(
        lambda cid: Half(),
        3,
        rounds,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.ones(4)},
        options.pop("evaluate_fn", _central),
        run_dir=run,
        **options,
    )


def test_a_round_whose_callback_raised_reaches_it_when_the_simulation_resumes(
    tmp_path: Path,
) -> None:
    # The resumed run used to start after round 2: the tracker got [0, 1, 3, 4].
    run = tmp_path / "run"
    tracker = Tracker(down_at=2)
    with pytest.raises(ConnectionError, match="tracking server"):
        _sim(run, 4, on_round=tracker)
    with RunStore.open(run) as store:
        assert (store.last_round(), store.pending_callbacks) == (2, 2)
    result = _sim(run, 4, on_round=tracker, resume=True)
    assert [r.round for r in tracker.logged] == [0, 1, 2, 3, 4]
    assert tracker.given == [0, 1, 2, 2, 3, 4]  # round 2 twice: it raised the first time
    # the saved record, as the stopped run gave it
    assert tracker.logged[2].central_loss == result.history.rounds[2].central_loss == 1.0
    with RunStore.open(run) as store:
        assert (store.status, store.pending_callbacks) == ("finished", None)


def test_a_callback_that_raises_again_as_the_run_resumes_leaves_the_round_pending(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConnectionError):
        _sim(run, 3, on_round=Tracker(down_at=1))
    still_down = Tracker(down_at=1)
    with pytest.raises(ConnectionError):
        _sim(run, 3, on_round=still_down, resume=True)
    assert still_down.given == [1]  # nothing else ran
    tracker = Tracker()
    _sim(run, 3, on_round=tracker, resume=True)
    assert tracker.given == [1, 2, 3]


def test_a_simulation_resumed_with_nothing_pending_calls_no_round_again(tmp_path: Path) -> None:
    # Stopped by another failure (its evaluate_fn, in round 3): round 2's callbacks returned.
    run = tmp_path / "run"

    def central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
        if rnd == 3:
            raise RuntimeError("the evaluation data went away")
        return _central(rnd, weights)

    tracker = Tracker()
    with pytest.raises(RuntimeError, match="evaluation data"):
        _sim(run, 4, on_round=tracker, evaluate_fn=central)
    with RunStore.open(run) as store:
        assert (store.last_round(), store.pending_callbacks) == (2, None)
    _sim(run, 4, on_round=tracker, resume=True)
    assert tracker.given == [0, 1, 2, 3, 4]
    # A finished run trained on: its last round is not given again.
    more = Tracker()
    _sim(run, 5, on_round=more, resume=True)
    assert more.given == [5]


def test_a_resume_without_callbacks_leaves_the_pending_round_to_one_with_them(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConnectionError):
        _sim(run, 3, on_round=Tracker(down_at=2))
    _sim(run, 2, resume=True)  # no round left to run, and nothing to call
    with RunStore.open(run) as store:
        assert store.pending_callbacks == 2
    tracker = Tracker()
    _sim(run, 3, resume=True, on_round=tracker)
    assert tracker.given == [2, 3]
    # A round saved by a run without callbacks marks none.
    _sim(run, 4, resume=True)
    with RunStore.open(run) as store:
        assert store.pending_callbacks is None


KILLED = """
import json, os, signal, sqlite3, sys, time
from pathlib import Path
import numpy as np
import covey

run, out = Path(sys.argv[1]), Path(sys.argv[2])


class Half(covey.Client):
    def fit(self, weights, config):
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)


def saved(rnd):
    uri = (run / "run.sqlite").resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return conn.execute("SELECT 1 FROM rounds WHERE round = ?", (rnd,)).fetchone()
    finally:
        conn.close()


def on_round(record):
    if record.round == 2:  # killed once its round is saved, before the tracker logged it
        for _ in range(600):
            if saved(2):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.05)
        raise AssertionError("round 2 was never saved")
    with open(out, "a") as f:
        f.write(json.dumps(record.round) + "\\n")


covey.simulate(
    lambda cid: Half(), 3, 4, covey.FedAvg(fraction_evaluate=0.0), {"w": np.ones(4)},
    run_dir=run, on_round=on_round,
)
"""


def test_a_simulation_killed_in_its_callbacks_gives_them_the_saved_round_on_resume(
    tmp_path: Path,
) -> None:
    run, out, script = tmp_path / "run", tmp_path / "logged.jsonl", tmp_path / "killed.py"
    script.write_text(KILLED)
    killed_script(script, run, out)
    logged = [json.loads(line) for line in out.read_text().splitlines()]
    assert logged == [0, 1]
    tracker = Tracker()
    _sim(run, 4, on_round=tracker, resume=True)
    assert tracker.given == [2, 3, 4]


def _strategy() -> covey.Strategy:
    return covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)


def _served(run: Path, rounds: int, tracker: Tracker, **options: Any) -> Served:
    served = Served(_strategy(), rounds, run_dir=run, plot=False, on_round=tracker, **options)
    Joined(served.port).join(60)
    return served


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_round_whose_callback_raised_reaches_it_when_the_served_run_resumes(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    tracker = Tracker(down_at=2)
    with pytest.raises(ConnectionError, match="tracking server"):
        _served(run, 4, tracker).join(60)
    with RunStore.open(run) as store:
        assert (store.last_round(), store.pending_callbacks) == (2, 2)
    resumed = _served(run, 4, tracker, resume=True, address="127.0.0.1:0").join(60)
    assert [r.round for r in tracker.logged] == [0, 1, 2, 3, 4]
    assert tracker.given == [0, 1, 2, 2, 3, 4]
    assert [r.round for r in resumed.history.rounds] == [0, 1, 2, 3, 4]
    with RunStore.open(run) as store:
        assert (store.status, store.pending_callbacks) == ("finished", None)
    # Nothing pending now: a run trained on gives its new round only.
    more = Tracker()
    _served(run, 5, more, resume=True, address="127.0.0.1:0").join(60)
    assert more.given == [5]
