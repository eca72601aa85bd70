"""Which rounds of a run keep their weights, and loading the best round's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import EvaluateResult, FitResult
from covey.server import RunStore


def small(r: int) -> dict[str, Any]:
    return {"w": np.full(3, float(r))}


def test_a_pruned_round_names_the_rounds_kept_and_the_keep_last_setting(tmp_path: Path) -> None:
    with RunStore.create(tmp_path / "run", config={}) as store:
        for r in range(5):
            store.save_round(r, small(r), None, keep_last=2)
        assert store.kept_rounds() == [3, 4]
        with pytest.raises(ValueError, match="were pruned") as info:
            store.load_round(1)
    said = str(info.value)
    assert "round 1" in said
    assert "pruned" in said
    assert "rounds 3 and 4" in said
    assert "keep_last" in said
    assert "--keep-last" in said


def test_a_store_keeping_every_round_or_none(tmp_path: Path) -> None:
    with RunStore.create(tmp_path / "run", config={}) as store:
        assert store.kept_rounds() == []
        store.save_round(0, small(0), None)
        store.save_round(1, small(1), None)
        assert store.kept_rounds() == [0, 1]
        store.save_round(2, small(2), None, keep_last=1)
        assert store.kept_rounds() == [2]
        with pytest.raises(ValueError, match=r"keeps the weights of round 2 only"):
            store.load_round(0)
        store.discard_after(None)
        assert store.kept_rounds() == []


class Learner(covey.Client):
    """Its model gets better in rounds 1 and 2, worse after."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        step = 1.0 if config["round"] <= 2 else -1.0
        return FitResult(weights={"w": weights["w"] + step}, num_examples=10)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=-float(weights["w"][0]), num_examples=10)


def simulate(run_dir: Path, rounds: int) -> covey.History:
    return covey.simulate(
        lambda cid: Learner(),
        2,
        rounds,
        covey.FedAvg(),
        {"w": np.zeros(1)},
        evaluate_fn=lambda rnd, w: (-float(w["w"][0]), {"score": float(w["w"][0])}),
        run_dir=run_dir,
    ).history


def test_the_best_round_of_a_simulation_loads_while_kept(tmp_path: Path) -> None:
    history = simulate(tmp_path / "short", 3)
    best, score = history.best_round("score")
    assert (best, score) == (2, 2.0)
    with RunStore.open(tmp_path / "short") as store:
        assert store.kept_rounds() == [2, 3]
        weights, record, _ = store.load_round(best)
    assert weights["w"].tolist() == [2.0]
    assert record is not None
    assert record["central_metrics"]["score"] == score


def test_a_simulations_best_round_past_its_last_two_says_what_is_kept(tmp_path: Path) -> None:
    history = simulate(tmp_path / "long", 5)
    best, _ = history.best_round("score")
    with RunStore.open(tmp_path / "long") as store:
        assert store.history().best_round("score") == (best, 2.0)
        with pytest.raises(ValueError, match="were pruned") as info:
            store.load_round(best)
    said = str(info.value)
    assert "round 2" in said
    assert "rounds 4 and 5" in said
    assert "the simulation keeps the weights of its newest 2 rounds only" in said
    assert "simulate(keep_last=None) keeps every round's weights" in said


def test_a_pruned_rounds_aggregation_state_goes_with_its_file(tmp_path: Path) -> None:
    # Before, every round's state (a server optimizer's moments, twice the model) stayed
    # in run.sqlite: with keep_last, the folder still grew by that much every round.
    run_dir = tmp_path / "run"
    state = bytes(1 << 20)
    with RunStore.create(run_dir, config={}) as store:
        for r in range(12):
            store.save_round(r, small(r), None, state, keep_last=2)
        assert store.kept_rounds() == [10, 11]
        assert store.rounds() == list(range(12))
        with store._db.reading() as conn:
            held = conn.execute(
                "SELECT round FROM rounds WHERE server_state IS NOT NULL ORDER BY round"
            ).fetchall()
        assert [r for (r,) in held] == [10, 11]
        assert store.load_round(11)[2] == state
        assert store.load_latest_valid()[0] == 11
    on_disk = sum(path.stat().st_size for path in run_dir.glob("run.sqlite*"))
    assert on_disk < 6 * len(state)  # the states of 12 rounds took more than 12 MB
