"""``evaluate_every`` with a run hook that stops the run early on an evaluated metric.

A round that is not due holds no evaluation (no earlier round's value carried
over), so a hook deciding on the evaluated loss decides on the rounds that hold
one; the run's last round is evaluated only if it was due (docs/strategies.md);
and the history the run returns, its ``history.json`` and a resumed run's
history hold the same rounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core._history import History, RoundRecord
from covey.sim import SimulationResult

pytestmark = pytest.mark.timeout(120)


class Worsening(covey.Client):
    """Evaluates to a loss that falls until round 4 and rises after it."""

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)

    def evaluate(self, weights: covey.Weights, config: dict[str, Any]) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=float(abs(config["round"] - 4)), num_examples=1)


class EarlyStopping:
    """Stops once the federated loss is no better than the best one ``patience`` times."""

    def __init__(self, patience: int = 1, stop_at: int | None = None) -> None:
        self.patience = patience
        self.stop_at = stop_at  # stop before this round whatever the loss (None: never)
        self.best: float | None = None
        self.worse = 0
        self.seen: list[tuple[int, float | None, float | None]] = []
        self.rounds_seen: list[list[int]] = []
        self.history = History()

    def start(self, state: Any, seed: int | None, history: History) -> Any:
        self.history = history
        return state

    def before_round(self, round: int, state: Any) -> str | None:
        self.rounds_seen.append([r.round for r in self.history.rounds])
        if round == self.stop_at:
            return f"asked to stop before round {round}"
        if self.worse >= self.patience:
            return f"the federated loss got no better {self.worse} times"
        return None

    def after_round(self, record: RoundRecord, state: Any) -> None:
        self.seen.append((record.round, record.evaluate_loss, record.central_loss))
        loss = record.evaluate_loss
        if loss is None:
            return
        if self.best is None or loss < self.best:
            self.best, self.worse = loss, 0
        else:
            self.worse += 1

    def finish(self, history: History, state: Any) -> None:
        pass


def _simulate(
    hook: EarlyStopping, run_dir: Path, rounds: int = 20, **options: Any
) -> SimulationResult:
    return covey.simulate(
        lambda cid: Worsening(),
        num_clients=2,
        rounds=rounds,
        strategy=covey.Strategy(evaluate_every=3, hooks=(hook,)),
        initial_weights={"w": np.ones(3)},
        evaluate_fn=lambda rnd, weights: (float(rnd), {}),
        run_dir=run_dir,
        **options,
    )


def _evaluated(rounds: list[dict[str, Any]], key: str) -> list[int]:
    return [r["round"] for r in rounds if r.get(key) is not None]


def test_an_early_stop_decides_on_the_evaluated_rounds_alone(tmp_path: Path) -> None:
    hook = EarlyStopping()
    result = _simulate(hook, tmp_path / "run")
    # Rounds 3 (loss 1), 6 (2): one worse, so the run stops before round 7. The
    # rounds between hold no evaluation, not round 3's loss again.
    assert hook.seen == [
        (1, None, None),
        (2, None, None),
        (3, 1.0, 3.0),
        (4, None, None),
        (5, None, None),
        (6, 2.0, 6.0),
    ]
    assert result.history.stopped_reason == "the federated loss got no better 1 times"
    # before_round(r) sees the history of every round before r, round r - 1 included.
    assert hook.rounds_seen == [list(range(r)) for r in range(1, 8)]
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [r.round for r in result.history.rounds]
    assert [r["round"] for r in saved["rounds"]] == list(range(7))
    assert _evaluated(saved["rounds"], "evaluate_loss") == [3, 6]
    assert _evaluated(saved["rounds"], "central_loss") == [0, 3, 6]
    assert saved["stopped_reason"] == result.history.stopped_reason


def test_a_run_stopped_after_a_round_not_due_ends_without_its_evaluation(tmp_path: Path) -> None:
    hook = EarlyStopping(patience=9, stop_at=6)
    result = _simulate(hook, tmp_path / "run")
    assert [r.round for r in result.history.rounds] == list(range(6))
    assert result.history.rounds[-1].evaluate_loss is None  # round 5 was not due
    assert result.history.rounds[-1].central_loss is None
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert _evaluated(saved["rounds"], "evaluate_loss") == [3]


def test_a_resumed_run_gives_its_hook_the_rounds_it_saved_as_they_were(tmp_path: Path) -> None:
    _simulate(EarlyStopping(patience=9, stop_at=6), tmp_path / "run")
    hook = EarlyStopping(patience=9)
    result = _simulate(hook, tmp_path / "run", rounds=9, resume=True)
    assert hook.rounds_seen[0] == list(range(6))
    assert [(r.round, r.evaluate_loss) for r in hook.history.rounds] == [
        (r, 1.0 if r == 3 else 2.0 if r == 6 else 5.0 if r == 9 else None) for r in range(10)
    ]
    assert hook.seen == [(6, 2.0, 6.0), (7, None, None), (8, None, None), (9, 5.0, 9.0)]
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == list(range(10))
    assert result.history.stopped_reason is None
    assert saved["stopped_reason"] is None
