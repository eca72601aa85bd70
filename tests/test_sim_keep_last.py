"""``simulate(..., keep_last=...)``: how many rounds of a simulation keep their weights file.

Every round's record is kept whatever ``keep_last`` is; the option only decides
which ``weights/round-*.safetensors`` files are deleted, so the results are the
same bit for bit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.server import RunStore

pytestmark = pytest.mark.timeout(120)


class Step(covey.Client):
    """Moves the model one step: after round r, the global model is r everywhere."""

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 1.0}, num_examples=1)


def sim(run: Path | None, rounds: int, **options: Any) -> covey.sim.SimulationResult:
    return covey.simulate(
        lambda cid: Step(),
        2,
        rounds,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        evaluate_fn=lambda rnd, w: (float(w["w"][0]), {}),
        run_dir=run,
        **options,
    )


def files(run: Path) -> list[int]:
    """The rounds whose weights file is in the run folder."""
    names = (run / "weights").glob("round-*.safetensors")
    found = [re.fullmatch(r"round-(\d+)\.safetensors", p.name) for p in names]
    return sorted(int(m.group(1)) for m in found if m is not None)


def records(result: covey.sim.SimulationResult) -> list[dict[str, Any]]:
    rounds = result.history.to_dict()["rounds"]
    for record in rounds:
        record.pop("durations", None)  # wall-clock seconds
    return list(rounds)


def test_keep_last_none_keeps_every_round_and_each_one_loads(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = sim(run, 5, keep_last=None)
    assert files(run) == [0, 1, 2, 3, 4, 5]
    assert result.history.config["keep_last"] is None
    with RunStore.open(run) as store:
        assert store.kept_rounds() == [0, 1, 2, 3, 4, 5]
        assert store.config["keep_last"] is None
        for k in range(6):
            weights, record, _ = store.load_round(k)
            assert weights["w"].tolist() == [float(k), float(k)]
            assert record is not None


def test_keep_last_3_keeps_the_newest_3_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sim(run, 5, keep_last=3)
    assert files(run) == [3, 4, 5]
    with RunStore.open(run) as store:
        assert store.kept_rounds() == [3, 4, 5]
        assert [r.round for r in store.history().rounds] == [0, 1, 2, 3, 4, 5]
        assert store.config["keep_last"] == 3


def test_the_default_still_keeps_two(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = sim(run, 4)
    assert files(run) == [3, 4]
    assert result.history.config["keep_last"] == 2


def test_the_results_do_not_depend_on_keep_last(tmp_path: Path) -> None:
    every = sim(tmp_path / "every", 3, keep_last=None)
    default = sim(tmp_path / "default", 3)
    unsaved = sim(None, 3)
    for other in (default, unsaved):
        assert other.weights["w"].tobytes() == every.weights["w"].tobytes()
        assert records(other) == records(every)


@pytest.mark.parametrize("value", [True, 0, -1, 2.5, "3", 1, 10**9 + 1, 2**63])
def test_a_bad_keep_last_is_refused_before_any_client_is_built(tmp_path: Path, value: Any) -> None:
    built: list[int] = []

    def client_fn(cid: int) -> covey.Client:
        built.append(cid)
        return Step()

    run = tmp_path / "run"
    with pytest.raises(ValueError, match="keep_last") as info:
        covey.simulate(client_fn, 2, 2, None, {"w": np.zeros(2)}, run_dir=run, keep_last=value)
    assert repr(value) in str(info.value) or "keep_last=1" in str(info.value)
    assert built == []
    assert not run.exists()


def test_keep_last_1_is_refused_since_a_resume_needs_a_fallback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"keep_last=1 would leave a resume no fallback"):
        sim(tmp_path / "run", 2, keep_last=1)


@pytest.mark.parametrize("value", [None, 3])
def test_keep_last_other_than_the_default_needs_run_dir(value: int | None) -> None:
    with pytest.raises(ValueError, match=rf"keep_last={value} needs run_dir"):
        sim(None, 2, keep_last=value)
    assert sim(None, 1, keep_last=2).history.rounds[-1].round == 1  # the default: accepted


def test_a_resume_with_keep_last_none_keeps_the_new_rounds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sim(run, 3)
    assert files(run) == [2, 3]
    resumed = sim(run, 6, resume=True, keep_last=None)
    assert files(run) == [2, 3, 4, 5, 6]
    assert resumed.history.config["keep_last"] is None
    whole = sim(tmp_path / "whole", 6)
    assert resumed.weights["w"].tobytes() == whole.weights["w"].tobytes()
    assert records(resumed) == records(whole)
    with RunStore.open(run) as store:
        assert store.config["keep_last"] is None
        assert store.config["rounds"] == 6
        with pytest.raises(ValueError, match="were pruned") as info:
            store.load_round(1)
    said = str(info.value)
    assert "before it was resumed with keep_last=None" in said
    assert "simulate(keep_last=None)" in said


def test_a_resume_prunes_with_the_keep_last_it_is_given(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sim(run, 3, keep_last=None)
    assert files(run) == [0, 1, 2, 3]
    sim(run, 5, resume=True, keep_last=3)
    assert files(run) == [3, 4, 5]


def test_the_pruned_round_error_says_how_many_rounds_are_kept_and_names_the_option(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    sim(run, 5, keep_last=3)
    with RunStore.open(run) as store, pytest.raises(ValueError, match="were pruned") as info:
        store.load_round(1)
    said = str(info.value)
    assert "rounds 3, 4 and 5 only" in said
    assert "newest 3 rounds only (keep_last=3" in said
    assert "simulate(keep_last=None) keeps every round's weights" in said


def test_covey_runs_show_says_keep_last(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sim(run, 2, keep_last=3)
    shown = CliRunner().invoke(app, ["runs", "show", str(run)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "keep_last 3" in shown.output
    every = tmp_path / "every"
    sim(every, 2, keep_last=None)
    shown = CliRunner().invoke(app, ["runs", "show", str(every)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "keep_last every round" in shown.output


def test_the_process_backend_keeps_every_round_with_keep_last_none(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = sim(run, 3, keep_last=None, backend="process", num_workers=2)
    assert files(run) == [0, 1, 2, 3]
    assert result.weights["w"].tolist() == [3.0, 3.0]
    with RunStore.open(run) as store:
        assert [store.load_round(k)[0]["w"][0] for k in range(4)] == [0.0, 1.0, 2.0, 3.0]
