"""What a long run costs per round stays flat: counted, never timed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
import covey.core._history as history_module
from covey.core._history import History, RoundRecord
from covey.server._outputs import RunOutputs


class _Adder(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def _count_records_serialized(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the round records turned into JSON (``asdict`` of a record) from now on."""
    calls = [0]

    def counting(obj: Any) -> Any:
        if isinstance(obj, RoundRecord):
            calls[0] += 1
        return dataclasses.asdict(obj)

    monkeypatch.setattr(history_module, "asdict", counting)
    return calls


def test_simulate_run_dir_serializes_each_round_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_records_serialized(monkeypatch)
    rounds = 150
    result = covey.simulate(
        lambda cid: _Adder(),
        3,
        rounds,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        run_dir=tmp_path / "run",
    )
    # history.json after every round, each record written into it a few times, not once
    # per later round (rounds * rounds / 2 = 11,000 before)
    assert calls[0] <= 4 * (rounds + 1), calls[0]
    assert History.load(tmp_path / "run").to_json() == result.history.to_json()


def test_run_outputs_serialize_each_round_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_records_serialized(monkeypatch)
    outputs = RunOutputs(tmp_path, plot=False)
    history = History(config={"rounds": 200}, clients={0: "site-a"})
    for r in range(200):
        history.rounds.append(RoundRecord(r, fit_participants=[0], central_loss=1.0 / (r + 1)))
        outputs.round_done(history)
        if r in (0, 1, 57):
            assert (tmp_path / History.FILE_NAME).read_text() == history.to_json()
    assert calls[0] <= 3 * 200, calls[0]
    assert (tmp_path / History.FILE_NAME).read_text() == history.to_json()
