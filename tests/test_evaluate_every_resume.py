"""``evaluate_every``: a run resumed with its last saved round as its last one evaluates it.

A run stopped after a round that was not due, then resumed with ``rounds``
equal to that round, has no round left to train: its last round is evaluated
then (federated and central), as the uninterrupted run's last round is, and
``history.json``, ``run.sqlite`` and the round callbacks hold the evaluation. A
resume killed during that evaluation leaves the run to resume again, which
evaluates it again; one killed after it was recorded does not evaluate it twice.
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
from _live import Fit, Joined, Served

pytestmark = pytest.mark.timeout(120)


class Halver(covey.Client):
    """Halves the weights; evaluates to the sum of their magnitudes."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        loss = float(np.abs(weights["w"]).sum())
        return covey.EvaluateResult(loss=loss, num_examples=1, metrics={"round": config["round"]})


class Stop(Exception):
    """What a callback raises to stop a run after a round."""


def _central(seen: list[int], fail_in: int | None = None) -> Any:
    def central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
        seen.append(rnd)
        if rnd == fail_in:
            raise Stop(f"central evaluation stopped in round {rnd}")
        return float(np.abs(weights["w"]).sum()), {"mean": float(np.mean(weights["w"]))}

    return central


def _simulate(rounds: int, central: Any, **options: Any) -> covey.sim.SimulationResult:
    return covey.simulate(
        lambda cid: Halver(),
        num_clients=2,
        rounds=rounds,
        strategy=covey.FedAvg(evaluate_every=3),
        initial_weights={"w": np.ones(3)},
        evaluate_fn=central,
        **options,
    )


def _stopped_after(round_: int, run_dir: Path, rounds: int = 10) -> None:
    """A run of ``rounds`` whose callback stops it after round ``round_`` is saved."""

    def stop(record: RoundRecord) -> None:
        if record.round == round_:
            raise Stop(f"stopped after round {round_}")

    with pytest.raises(Stop):
        _simulate(rounds, _central([]), run_dir=run_dir, on_round=stop)


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """A round's record without its wall-clock durations."""
    return {k: v for k, v in record.items() if k != "durations"}


def _saved(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """The rounds of ``history.json`` and of ``run.sqlite``, and the run's status."""
    from_json = json.loads((run_dir / "history.json").read_text())["rounds"]
    with RunStore.open(run_dir) as store:
        from_db = store.history().to_dict()["rounds"]
        status = store.status
    return [_plain(r) for r in from_json], [_plain(r) for r in from_db], status


def test_a_run_resumed_with_its_saved_round_as_its_last_evaluates_that_round(
    tmp_path: Path,
) -> None:
    whole = _simulate(5, _central([]))  # the run never stopped: round 5 is its last
    expected = [_plain(r) for r in whole.history.to_dict()["rounds"]]
    run_dir = tmp_path / "run"
    _stopped_after(5, run_dir)  # round 5 of 10 was not due
    assert _saved(run_dir)[1][-1]["central_loss"] is None
    central: list[int] = []
    seen: list[RoundRecord] = []
    result = _simulate(5, _central(central), run_dir=run_dir, resume=True, on_round=seen.append)
    assert central == [5]
    last = result.history.rounds[-1]
    assert last.round == 5
    assert last.central_loss == whole.history.rounds[-1].central_loss
    assert last.evaluate_loss == whole.history.rounds[-1].evaluate_loss
    assert last.evaluate_metrics == {"round": 5}
    assert last.evaluate_participants == [0, 1]
    # The record is the uninterrupted run's (its bytes the fit's and the evaluation's).
    assert [_plain(r) for r in result.history.to_dict()["rounds"]] == expected
    from_json, from_db, status = _saved(run_dir)
    assert from_json == from_db == expected
    assert status == "finished"
    # The callbacks get round 5 (left pending by the stopped run), then evaluated.
    assert [r.round for r in seen] == [5, 5]
    assert seen[-1].central_loss == last.central_loss
    np.testing.assert_array_equal(result.weights["w"], whole.weights["w"])


def test_a_resume_stopped_during_that_evaluation_evaluates_it_on_the_next(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _stopped_after(4, run_dir)
    central: list[int] = []
    with pytest.raises(Stop, match="round 4"):
        _simulate(4, _central(central, fail_in=4), run_dir=run_dir, resume=True)
    assert central == [4]
    from_json, from_db, status = _saved(run_dir)
    assert from_db[-1]["round"] == 4
    assert from_db[-1]["central_loss"] is None  # nothing of the stopped evaluation recorded
    assert from_db[-1]["evaluate_loss"] is None
    assert status == "failed"
    result = _simulate(4, _central(central), run_dir=run_dir, resume=True)
    assert central == [4, 4]
    assert result.history.rounds[-1].central_loss is not None
    assert result.history.rounds[-1].evaluate_loss is not None
    from_json, from_db, status = _saved(run_dir)
    assert from_json == from_db == [_plain(r) for r in result.history.to_dict()["rounds"]]
    assert status == "finished"


def test_a_round_evaluated_on_a_resume_is_not_evaluated_again(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _stopped_after(5, run_dir)
    _simulate(5, _central([]), run_dir=run_dir, resume=True)
    before = _saved(run_dir)[1]
    with RunStore.open(run_dir) as store:
        store.set_status("running")  # killed after the evaluation was recorded
    central: list[int] = []
    result = _simulate(5, _central(central), run_dir=run_dir, resume=True)
    assert central == []
    assert [_plain(r) for r in result.history.to_dict()["rounds"]] == before
    assert _saved(run_dir)[1] == before


SCRIPT = """
import json, os, signal, sys
import numpy as np
import covey


class Halver(covey.Client):
    def fit(self, weights, config):
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

    def evaluate(self, weights, config):
        return covey.EvaluateResult(loss=float(np.abs(weights["w"]).sum()), num_examples=1)


def central(rnd, weights):
    if rnd == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return float(np.abs(weights["w"]).sum()), {}


covey.simulate(
    lambda cid: Halver(),
    num_clients=2,
    rounds=5,
    strategy=covey.FedAvg(evaluate_every=3),
    initial_weights={"w": np.ones(3)},
    evaluate_fn=central,
    run_dir=sys.argv[1],
    resume=True,
)
"""


def test_a_resume_killed_during_that_evaluation_evaluates_it_on_the_next(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    _stopped_after(5, run_dir)
    script = tmp_path / "resume.py"
    script.write_text(SCRIPT)
    killed_script(script, run_dir)
    _, from_db, status = _saved(run_dir)
    assert from_db[-1]["round"] == 5
    assert from_db[-1]["central_loss"] is None
    assert status == "running"
    central: list[int] = []
    result = _simulate(5, _central(central), run_dir=run_dir, resume=True)
    assert central == [5]
    from_json, from_db, status = _saved(run_dir)
    assert from_db[-1]["central_loss"] == result.history.rounds[-1].central_loss is not None
    assert from_json == from_db
    assert status == "finished"


class Evaluating(Fit):
    """Adds one to every weight; evaluates to their sum."""

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=float(np.sum(weights["w"])), num_examples=1)


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_served_run_resumed_with_its_saved_round_as_its_last_evaluates_it(
    tmp_path: Path,
) -> None:
    strategy = covey.FedAvg(
        evaluate_every=2, min_fit_clients=1, min_evaluate_clients=1, min_available_clients=1
    )
    run_dir = tmp_path / "run"

    def stop(record: RoundRecord) -> None:
        if record.round == 3:
            raise Stop("stopped after round 3")

    central: list[int] = []
    served = Served(strategy, 6, run_dir=run_dir, evaluate_fn=_central(central), on_round=stop)
    joined = Joined(served.port, Evaluating(), name="site")
    with pytest.raises(Stop):
        served.join(60)
    joined.join(30)
    assert central == [0, 2]
    assert _saved(run_dir)[1][-1]["round"] == 3
    assert _saved(run_dir)[1][-1]["evaluate_loss"] is None
    central.clear()
    served = Served(strategy, 3, run_dir=run_dir, resume=True, evaluate_fn=_central(central))
    joined = Joined(served.port, Evaluating(), name="site")
    result = served.join(60)
    joined.join(30)
    assert central == [3]
    last = result.history.rounds[-1]
    assert last.round == 3
    assert last.central_loss == 24.0  # 8 weights, one added in each of 3 rounds
    assert last.evaluate_loss == 24.0
    from_json, from_db, status = _saved(run_dir)
    assert from_json == from_db == [_plain(r) for r in result.history.to_dict()["rounds"]]
    assert status == "finished"


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_served_fedbuff_run_resumed_with_its_saved_update_as_its_last_evaluates_it(
    tmp_path: Path,
) -> None:
    strategy = covey.FedBuff(buffer_size=1, min_available_clients=1, evaluate_every=2)
    run_dir = tmp_path / "run"

    def stop(record: RoundRecord) -> None:
        if record.round == 3:
            raise Stop("stopped after update 3")

    central: list[int] = []
    served = Served(strategy, 5, run_dir=run_dir, evaluate_fn=_central(central), on_round=stop)
    joined = Joined(served.port, name="site")
    with pytest.raises(Stop):
        served.join(60)
    joined.join(30)
    assert central == [0, 2]
    assert _saved(run_dir)[1][-1]["round"] == 3
    central.clear()
    served = Served(strategy, 3, run_dir=run_dir, resume=True, evaluate_fn=_central(central))
    joined = Joined(served.port, name="site")
    result = served.join(60)
    joined.join(30)
    assert central == [3]
    assert result.history.rounds[-1].round == 3
    assert result.history.rounds[-1].central_loss == 24.0  # one added to 8 weights, 3 times
    from_json, from_db, status = _saved(run_dir)
    assert from_json == from_db == [_plain(r) for r in result.history.to_dict()["rounds"]]
    assert status == "finished"


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_served_run_evaluating_centrally_alone_needs_no_client_back(tmp_path: Path) -> None:
    strategy = covey.FedAvg(
        evaluate_every=2, fraction_evaluate=0.0, min_fit_clients=1, min_available_clients=1
    )
    run_dir = tmp_path / "run"

    def stop(record: RoundRecord) -> None:
        if record.round == 3:
            raise Stop("stopped after round 3")

    served = Served(strategy, 6, run_dir=run_dir, evaluate_fn=_central([]), on_round=stop)
    joined = Joined(served.port, name="site")
    with pytest.raises(Stop):
        served.join(60)
    joined.join(30)
    central: list[int] = []  # no client connects to the resumed run
    served = Served(
        strategy, 3, run_dir=run_dir, resume=True, evaluate_fn=_central(central), wait_timeout=1
    )
    result = served.join(60)
    assert central == [3]
    assert result.history.rounds[-1].central_loss == 24.0
    assert result.history.rounds[-1].evaluate_participants == []
    assert _saved(run_dir)[1][-1]["central_loss"] == 24.0
