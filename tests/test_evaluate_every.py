"""``evaluate_every``: federated and central evaluation every N rounds, and after the last.

Simulated, resumed and served over gRPC on 127.0.0.1 (threads, no TLS).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core._messages import MAX_ROUNDS

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

pytestmark = pytest.mark.timeout(120)


class Halver(covey.Client):
    """Halves the weights; records the rounds it was asked to evaluate in."""

    def __init__(self, evaluated: list[int]) -> None:
        self.evaluated = evaluated

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        self.evaluated.append(config["round"])
        return covey.EvaluateResult(loss=float(np.abs(weights["w"]).sum()), num_examples=1)


def _central(seen: list[int]) -> Any:
    def central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
        seen.append(rnd)
        return float(np.abs(weights["w"]).sum()), {}

    return central


def _rounds_with(history: covey.History, attr: str) -> list[int]:
    return [r.round for r in history.rounds if getattr(r, attr) is not None]


def _simulate(rounds: int, every: int, **options: Any) -> tuple[Any, list[int], list[int]]:
    evaluated: list[int] = []
    central: list[int] = []
    result = covey.simulate(
        lambda cid: Halver(evaluated),
        num_clients=2,
        rounds=rounds,
        strategy=covey.FedAvg(evaluate_every=every),
        initial_weights={"w": np.ones(3)},
        evaluate_fn=_central(central),
        **options,
    )
    return result, sorted(set(evaluated)), central


def test_a_simulation_evaluates_every_n_rounds_and_the_last() -> None:
    result, evaluated, central = _simulate(7, 3)
    assert evaluated == [3, 6, 7]
    assert central == [0, 3, 6, 7]
    assert _rounds_with(result.history, "evaluate_loss") == [3, 6, 7]
    assert _rounds_with(result.history, "central_loss") == [0, 3, 6, 7]
    assert [r.round for r in result.history.rounds] == list(range(8))  # every round trained


def test_the_default_evaluates_every_round() -> None:
    _, evaluated, central = _simulate(3, 1)
    assert evaluated == [1, 2, 3]
    assert central == [0, 1, 2, 3]
    assert "evaluate_every" not in covey.FedAvg().describe()["options"]  # as older runs recorded
    assert covey.FedAvg(evaluate_every=4).describe()["options"]["evaluate_every"] == 4


def test_a_resumed_simulation_keeps_counting_rounds_from_the_first(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _, evaluated, central = _simulate(4, 3, run_dir=run_dir)
    assert (evaluated, central) == ([3, 4], [0, 3, 4])
    result, evaluated, central = _simulate(8, 3, run_dir=run_dir, resume=True)
    assert (evaluated, central) == ([6, 8], [6, 8])
    assert _rounds_with(result.history, "central_loss") == [0, 3, 4, 6, 8]
    with pytest.raises(ValueError, match="evaluate_every"):  # another history: refused
        _simulate(9, 2, run_dir=run_dir, resume=True)


def test_a_resume_with_another_evaluate_every_names_the_default_it_left(tmp_path: Path) -> None:
    """A run that left it at 1 does not record it, and the refusal still says 1, not None."""
    _simulate(2, 1, run_dir=tmp_path / "every")
    with pytest.raises(ValueError, match=r"evaluate_every 1 \(the run's\) is 2 now"):
        _simulate(4, 2, run_dir=tmp_path / "every", resume=True)
    _simulate(2, 3, run_dir=tmp_path / "third")
    with pytest.raises(ValueError, match=r"evaluate_every 3 \(the run's\) is 1 now"):
        _simulate(4, 1, run_dir=tmp_path / "third", resume=True)


def test_fedbuff_evaluates_centrally_every_n_updates() -> None:
    seen: list[int] = []
    covey.simulate(
        lambda cid: Halver([]),
        num_clients=4,
        rounds=5,
        strategy=covey.FedBuff(buffer_size=2, evaluate_every=2),
        initial_weights={"w": np.ones(3)},
        evaluate_fn=_central(seen),
    )
    assert seen == [0, 2, 4, 5]


def test_a_served_run_evaluates_every_n_rounds_and_the_last() -> None:
    evaluated: list[int] = []
    central: list[int] = []
    served = Served(
        covey.FedAvg(evaluate_every=2, min_available_clients=2),
        5,
        initial_weights={"w": np.ones(3)},
        evaluate_fn=_central(central),
        wait_timeout=60,
        round_timeout=60,
    )
    joined = [Joined(served.port, Halver(evaluated), insecure=True, name=f"s{k}") for k in (0, 1)]
    result = served.join(120)
    for one in joined:
        one.join(120)
    assert sorted(set(evaluated)) == [2, 4, 5]
    assert central == [0, 2, 4, 5]
    assert _rounds_with(result.history, "evaluate_loss") == [2, 4, 5]


@pytest.mark.filterwarnings("ignore:serving WITHOUT TLS")
def test_a_resumed_served_run_keeps_counting_rounds_from_the_first(tmp_path: Path) -> None:
    strategy = covey.FedAvg(
        evaluate_every=2, fraction_evaluate=0.0, min_fit_clients=1, min_available_clients=1
    )
    central: list[int] = []
    run_dir = tmp_path / "run"
    for rounds, resume in ((3, False), (6, True)):
        served = Served(
            strategy, rounds, run_dir=run_dir, resume=resume, evaluate_fn=_central(central)
        )
        joined = Joined(served.port)
        result = served.join(60)
        joined.join(30)
    assert central == [0, 2, 3, 4, 6]
    assert _rounds_with(result.history, "central_loss") == [0, 2, 3, 4, 6]


@pytest.mark.parametrize(
    ("every", "error", "match"),
    [
        (True, TypeError, "evaluate_every must be an int from 1 to .*got bool True"),
        (2.0, TypeError, r"evaluate_every must be an int .*got float 2\.0"),
        ("3", TypeError, "evaluate_every must be an int .*got str '3'"),
        (0, ValueError, "evaluate_every must be an int from 1 to .*got 0"),
        (-2, ValueError, "evaluate_every must be an int from 1 to .*got -2"),
        (MAX_ROUNDS + 1, ValueError, f"evaluate_every must be an int .*got {MAX_ROUNDS + 1}"),
    ],
)
def test_an_evaluate_every_that_is_no_round_count_is_refused_naming_it(
    every: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        covey.FedAvg(evaluate_every=every)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        covey.Strategy(evaluate_every=every)  # type: ignore[arg-type]


def test_a_numpy_count_is_taken_as_the_int_it_is() -> None:
    strategy = covey.FedAvg(evaluate_every=np.int64(3))
    assert strategy.evaluate_every == 3
    assert type(strategy.evaluate_every) is int
