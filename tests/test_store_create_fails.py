"""A run whose creation fails leaves nothing it made behind, and nothing that was there goes.

A run folder whose ``run.sqlite`` cannot be made (a path too deep for SQLite, a
disk that fills up) kept its ``run.lock`` and an empty ``weights/``: a broken
run to ``covey runs list`` and the dashboard. A folder the user made for the
run stays, empty; a second try at the same path, the cause fixed, works.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from _deeppath import deep_folder
from covey.cli import app
from covey.server import RunStore, _rundb

pytestmark = pytest.mark.timeout(120)


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the creation of every run's database fail as on a full disk."""

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_rundb, "_fill_new", full)


@pytest.mark.parametrize("exclusive", [True, False])
def test_a_run_folder_too_deep_for_sqlite_is_left_as_it_was(
    tmp_path: Path, exclusive: bool
) -> None:
    deep = deep_folder(tmp_path / "a", 480)
    run = deep / "runs" / "run"  # both made by create
    with pytest.raises(OSError, match=r"512 bytes or more.*choose a shorter one"):
        RunStore.create(run, config={}, exclusive=exclusive)
    assert list(deep.iterdir()) == []
    with RunStore.create(tmp_path / "b" / "run", config={}, exclusive=exclusive) as store:
        assert store.last_round() is None


def test_a_failed_creation_keeps_the_empty_folder_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with monkeypatch.context() as patched:
        _full_disk(patched)
        with pytest.raises(OSError, match="No space left on device"):
            RunStore.create(run, config={"rounds": 3}, exclusive=True)
    assert run.is_dir()
    assert list(run.iterdir()) == []
    with RunStore.create(run, config={"rounds": 3}, exclusive=True) as store:  # cause fixed
        assert store.config == {"rounds": 3}
        store.save_round(0, {"w": np.zeros(2)}, None)
    assert sorted(p.name for p in (run / "weights").iterdir()) == ["round-00000.safetensors"]


def test_a_failed_creation_keeps_what_the_folder_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        RunStore.create(run, config={}, exclusive=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "weights"]
    assert list((run / "weights").iterdir()) == []


class _Step(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 1.0}, num_examples=1)


def _simulate(run: Path) -> covey.sim.SimulationResult:
    return covey.simulate(
        lambda cid: _Step(),
        2,
        1,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        run_dir=run,
    )


def test_a_simulation_whose_run_cannot_be_created_leaves_its_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given, new = tmp_path / "given", tmp_path / "new"
    given.mkdir()
    with monkeypatch.context() as patched:
        _full_disk(patched)
        for run in (given, new):
            with pytest.raises(OSError, match="No space left on device"):
                _simulate(run)
    assert list(given.iterdir()) == []
    assert not new.exists()
    for run in (given, new):
        assert _simulate(run).history.rounds[-1].round == 1
        assert (run / "run.sqlite").is_file()


def test_a_project_run_whose_run_cannot_be_created_leaves_no_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its project.json and run.lock stayed: `covey runs list` showed a run interrupted
    # during set-up, which no resume could take further than a new run.
    runner = CliRunner()
    made = runner.invoke(app, ["new", "deep-fed", "--dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    root = tmp_path / "deep-fed"
    monkeypatch.syspath_prepend(str(root))
    runs = deep_folder(tmp_path / "runs", 480)
    run = ["run", str(root), "--set", "rounds=1", "--set", "clients=2"]
    result = runner.invoke(app, [*run, "--set", f"runs-dir={str(runs)!r}"])
    assert result.exit_code == 1, result.output
    assert "choose a shorter one" in str(result.exception)
    assert list(runs.iterdir()) == []
    listed = runner.invoke(app, ["runs", "list", str(runs)], env={"COLUMNS": "250"})
    assert "sim-" not in listed.output
