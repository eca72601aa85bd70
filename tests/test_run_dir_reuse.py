"""A simulation never writes over a run already kept in its ``run_dir``.

A simulation cannot be resumed, so a second ``simulate(run_dir=...)`` into the
folder of a finished run used to replace its ``history.json`` and ``run.json``
without a word: the first run's rounds were lost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app


class _Half(covey.Client):
    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)


def _simulate(run_dir: Path, rounds: int) -> covey.History:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    return covey.simulate(
        lambda cid: _Half(), 2, rounds, strategy, {"w": np.ones(2)}, run_dir=run_dir
    ).history


def test_a_second_simulation_into_a_finished_run_s_folder_is_refused(tmp_path: Path) -> None:
    _simulate(tmp_path / "run", 3)
    before = (tmp_path / "run" / "history.json").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        _simulate(tmp_path / "run", 1)
    assert (tmp_path / "run" / "history.json").read_text() == before
    assert [r["round"] for r in json.loads(before)["rounds"]] == [0, 1, 2, 3]
    _simulate(tmp_path / "other", 1)  # a folder of its own is fine, and so is an empty one
    (tmp_path / "empty").mkdir()
    _simulate(tmp_path / "empty", 1)


def test_covey_demo_refuses_a_run_dir_that_holds_a_run(tmp_path: Path) -> None:
    _simulate(tmp_path / "run", 1)
    result = CliRunner().invoke(app, ["demo", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "already holds a run" in result.output
