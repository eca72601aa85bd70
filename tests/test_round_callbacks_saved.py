"""What ``on_round`` writes into a round's record is in ``run.sqlite``, as a resume loads it.

A round is saved before its callbacks run (round r is written while round r + 1
trains); what they write into its record is written over the saved one with the
next round's save, or as the run ends. A run stopped before that calls them again
with the saved record as it resumes (callbacks at least once), so a stopped and
resumed run's history is the uninterrupted one's.
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


class Half(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)


class Writer:
    """Writes the round's tag into its record; raises once, for round ``down_at``, after."""

    def __init__(self, down_at: int | None = None) -> None:
        self.down_at = down_at

    def __call__(self, record: RoundRecord) -> None:
        record.aggregate_info["tag"] = f"round {record.round}"
        record.fit_metrics["tagged"] = record.round
        if record.round == self.down_at:
            self.down_at = None
            raise ConnectionError("the tracking server cannot be reached")


def _sim(run: Path, rounds: int, **options: Any) -> covey.sim.SimulationResult:
    return covey.simulate(
        lambda cid: Half(),
        3,
        rounds,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.ones(4)},
        run_dir=run,
        **options,
    )


def _tags(rounds: list[RoundRecord]) -> list[tuple[Any, Any]]:
    return [(r.aggregate_info.get("tag"), r.fit_metrics.get("tagged")) for r in rounds]


def _saved(run: Path) -> list[tuple[Any, Any]]:
    with RunStore.open(run) as store:
        return _tags(store.history().rounds)


def _history_json(run: Path) -> list[tuple[Any, Any]]:
    rounds = json.loads((run / "history.json").read_text())["rounds"]
    return [(r["aggregate_info"].get("tag"), r["fit_metrics"].get("tagged")) for r in rounds]


TAGS = [(f"round {r}", r) for r in range(5)]


def test_a_simulation_resumed_has_what_on_round_wrote_into_its_saved_rounds(
    tmp_path: Path,
) -> None:
    # Saved before on_round ran, the rounds a resume loaded had lost what it wrote.
    whole = _sim(tmp_path / "whole", 4, on_round=Writer())
    assert _tags(whole.history.rounds) == _saved(tmp_path / "whole") == TAGS
    run = tmp_path / "run"
    _sim(run, 2, on_round=Writer())
    assert _saved(run) == TAGS[:3]
    resumed = _sim(run, 4, on_round=Writer(), resume=True)
    assert _tags(resumed.history.rounds) == _history_json(run) == _saved(run) == TAGS


def test_what_a_callback_writes_as_the_run_resumes_is_saved(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConnectionError):
        _sim(run, 4, on_round=Writer(down_at=2))
    with RunStore.open(run) as store:
        assert store.pending_callbacks == 2
    assert _saved(run) == [*TAGS[:2], (None, None)]  # round 2 as saved before its callbacks
    resumed = _sim(run, 4, on_round=Writer(), resume=True)  # called with round 2 again
    assert _tags(resumed.history.rounds) == _history_json(run) == _saved(run) == TAGS
    # A resume with no round to train saves what the replayed callbacks write too.
    run = tmp_path / "short"
    with pytest.raises(ConnectionError):
        _sim(run, 4, on_round=Writer(down_at=2))
    _sim(run, 2, on_round=Writer(), resume=True)
    assert _saved(run) == TAGS[:3]
    with RunStore.open(run) as store:
        assert store.pending_callbacks is None


KILLED = """
import os, signal, sys
from pathlib import Path
import numpy as np
import covey

run = Path(sys.argv[1])


class Half(covey.Client):
    def fit(self, weights, config):
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)


def on_round(record):
    record.aggregate_info["tag"] = f"round {record.round}"
    record.fit_metrics["tagged"] = record.round
    if record.round == 3:  # round 2's callbacks returned; round 3 is being saved
        os.kill(os.getpid(), signal.SIGKILL)


covey.simulate(
    lambda cid: Half(), 3, 4, covey.FedAvg(fraction_evaluate=0.0), {"w": np.ones(4)},
    run_dir=run, on_round=on_round,
)
"""


def test_a_simulation_killed_after_its_callbacks_wrote_resumes_with_what_they_wrote(
    tmp_path: Path,
) -> None:
    run, script = tmp_path / "run", tmp_path / "killed.py"
    script.write_text(KILLED)
    killed_script(script, run)
    with RunStore.open(run) as store:
        last, pending = store.last_round(), store.pending_callbacks
    assert last in (2, 3)  # round 3's save, or not yet
    assert pending == last
    # Round 2's callbacks returned: round 3's save, if done, wrote what they wrote.
    assert _saved(run)[:last] == TAGS[:last]
    resumed = _sim(run, 4, on_round=Writer(), resume=True)
    assert _tags(resumed.history.rounds) == _history_json(run) == _saved(run) == TAGS


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_served_run_saves_what_on_round_wrote_into_its_rounds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)

    def served(rounds: int, **options: Any) -> covey.deploy.ServeResult:
        job = Served(strategy, rounds, run_dir=run, plot=False, on_round=Writer(), **options)
        Joined(job.port).join(60)
        return job.join(60)

    served(2)
    assert _saved(run) == TAGS[:3]
    resumed = served(4, resume=True, address="127.0.0.1:0")
    assert _tags(resumed.history.rounds) == _history_json(run) == _saved(run) == TAGS


class Notes:
    """A run hook starting each round's ``aggregate_info["notes"]`` list."""

    def start(self, state: Any, seed: int | None, history: covey.History) -> Any:
        return state

    def before_round(self, round: int, state: Any) -> str | None:
        return None

    def after_round(self, record: RoundRecord, state: Any) -> None:
        record.aggregate_info["notes"] = ["hook"]

    def finish(self, history: covey.History, state: Any) -> None:
        pass


def _append(record: RoundRecord) -> None:
    if record.round:  # round 0 is no round the hook saw
        record.aggregate_info["notes"].append(f"round {record.round}")


def test_what_on_round_appends_to_a_list_in_the_record_is_saved_for_a_resume(
    tmp_path: Path,
) -> None:
    # Before: a list the record held, appended to in place, was not saved again: a stopped
    # and resumed run's saved rounds lacked what its callbacks appended.
    def sim(run: Path, rounds: int, **options: Any) -> covey.sim.SimulationResult:
        strategy = covey.Strategy(fraction_evaluate=0.0, hooks=(Notes(),))
        return covey.simulate(
            lambda cid: Half(), 3, rounds, strategy, {"w": np.ones(4)}, run_dir=run, **options
        )

    def notes(rounds: list[RoundRecord]) -> list[Any]:
        return [r.aggregate_info.get("notes") for r in rounds]

    whole = notes(sim(tmp_path / "whole", 4, on_round=_append).history.rounds)
    assert whole == [None, *(["hook", f"round {r}"] for r in range(1, 5))]
    run = tmp_path / "run"
    sim(run, 2, on_round=_append)
    with RunStore.open(run) as store:
        assert notes(store.history().rounds) == whole[:3]
    resumed = sim(run, 4, on_round=_append, resume=True)
    with RunStore.open(run) as store:
        assert notes(resumed.history.rounds) == notes(store.history().rounds) == whole
