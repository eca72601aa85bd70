"""``covey runs show`` of a long run with a store reads only the rounds it shows."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
import covey.cli._runtail as runtail_module
import covey.core._history as history_module
from _counting import count_calls
from covey.cli import app
from covey.core._history import History, RoundRecord
from covey.core._recordvalues import record_json
from covey.core._roundrecord import Failure

ROUNDS = 130


class _Adder(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("sim") / "run"
    covey.simulate(
        lambda cid: _Adder(),
        3,
        ROUNDS,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        run_dir=run,
    )
    return run


def _copy(run: Path, to: Path, change: Callable[[RoundRecord], None] | None = None) -> Path:
    """A copy of ``run`` with each round changed by ``change``, in both its files."""
    history = History.load(run)
    for record in history.rounds:
        if change is not None:
            change(record)
    to.mkdir()
    history.save(to / "history.json")
    (to / "run.json").write_bytes((run / "run.json").read_bytes())
    with sqlite3.connect(run / "run.sqlite") as source, sqlite3.connect(to / "run.sqlite") as db:
        source.backup(db)
    with sqlite3.connect(to / "run.sqlite") as db:
        for record in history.rounds:
            text = json.dumps(record_json(record))
            db.execute("UPDATE rounds SET record = ? WHERE round = ?", (text, record.round))
    return to


def _show(run: Path, *flags: str) -> str:
    result = CliRunner().invoke(app, ["runs", "show", str(run), *flags], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    return result.output


def _both(run: Path, monkeypatch: pytest.MonkeyPatch, *flags: str) -> tuple[str, str]:
    """``runs show``'s output read in part, and read whole."""
    fast = _show(run, *flags)
    with monkeypatch.context() as m:
        m.setattr(runtail_module, "_from_store", lambda *a: (None, None))
        whole = _show(run, *flags)
    return fast, whole


def _varied(record: RoundRecord) -> None:
    rnd = record.round
    if rnd in (3, 50, 100, 129):
        record.fit_failures.append(Failure(1, "fit", f"client 1 fell over in round {rnd}"))
    if rnd == 60:
        record.evaluate_failures.append(Failure(2, "evaluate", "no test set"))
    if rnd in (2, 4, 6, 8, 10, 12, 120):
        record.aggregated = False
        record.aggregate_info = {"error": f"the sum overflowed in round {rnd}"}
    if 1 <= rnd <= 10:
        record.central_loss = 1.0 / rnd
    if rnd == 5:
        record.evaluate_metrics = {"accuracy": 0.5}
    if rnd == 7:
        record.central_metrics = {"accuracy": math.nan}
    if rnd == 125:
        record.evaluate_loss = math.nan
        record.fit_metrics = {"steps": 3, "train_loss": math.inf}


def _no_aggregation(record: RoundRecord) -> None:
    if record.round > 0:
        record.aggregated = False
        record.aggregate_info = {"error": "x" * 400}


@pytest.mark.parametrize("change", [None, _varied, _no_aggregation])
@pytest.mark.parametrize("flags", [(), ("--last", "5"), ("--last", "1"), ("--last", "128")])
def test_a_long_run_shown_in_part_reads_as_it_did_whole(
    simulated: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[RoundRecord], None] | None,
    flags: tuple[str, ...],
) -> None:
    run = _copy(simulated, tmp_path / "run", change)
    assert runtail_module.tail_history(run, int(flags[1]) if flags else 100) is not None
    fast, whole = _both(run, monkeypatch, *flags)
    assert fast == whole
    assert "not shown" in fast


def test_a_run_stopped_in_its_last_round_names_the_round_before(
    simulated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy(simulated, tmp_path / "run", _varied)
    history = History.load(run)
    history.stopped_reason = f"round {ROUNDS}: the test set is gone"
    history.save(run / "history.json")
    fast, whole = _both(run, monkeypatch, "--last", "1")
    assert fast == whole
    assert f"after round {ROUNDS - 1}" in fast


def test_a_history_behind_its_store_is_read_whole(
    simulated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy(simulated, tmp_path / "run", _varied)
    history = History.load(run)
    history.rounds.pop()  # killed between two writes of a large history.json
    history.save(run / "history.json")
    assert runtail_module.tail_history(run, 100) is None
    fast, whole = _both(run, monkeypatch)
    assert fast == whole


def test_showing_the_last_rounds_of_a_long_run_reads_only_those_records(
    simulated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy(simulated, tmp_path / "run", _varied)
    parsed = count_calls(monkeypatch, "round_from_json", history_module)
    _show(run, "--last", "5")
    # the rounds shown, the one before (the last that finished) and the last that failed
    # to aggregate: not every round's (131 before)
    assert parsed[0] <= 5 + 1 + 2, parsed[0]


def test_a_field_this_covey_does_not_know_is_read_whole_and_warned_of(
    simulated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy(simulated, tmp_path / "run", _varied)
    data = json.loads((run / "history.json").read_text())
    data["rounds"][3]["fit_failures"][0]["shiny"] = 1
    (run / "history.json").write_text(json.dumps(data, indent=2))
    with sqlite3.connect(run / "run.sqlite") as db:
        db.execute("UPDATE rounds SET record = ? WHERE round = 3", (json.dumps(data["rounds"][3]),))
    assert runtail_module.tail_history(run, 100) is None
    fast, whole = _both(run, monkeypatch)
    assert fast == whole
    assert "shiny" in fast


def test_a_history_whose_rounds_before_those_shown_are_lost_is_read_whole_and_warned_of(
    simulated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: its head and last round were as the store's, so the rounds shown were read
    # from the store and the file's damage went unsaid.
    run = _copy(simulated, tmp_path / "run")
    path = run / "history.json"
    text = path.read_bytes()
    at = text.index(b'\n    {\n      "round": 3,')
    path.write_bytes(text[:at] + bytes(4096) + text[at + 4096 :])  # a block of zeros
    assert runtail_module.tail_history(run, 5) is None
    fast, whole = _both(run, monkeypatch, "--last", "5")
    assert fast == whole
    assert "not a covey history" in fast
    assert f"the last 5 of {ROUNDS + 1}" in " ".join(fast.split())


def test_damage_before_the_rounds_shown_leaves_them_right_and_is_named_by_all(
    simulated: Path, tmp_path: Path
) -> None:
    """A change inside a round before those shown leaves them right, and is named by --all.

    Read in part, the file's rounds are only counted: ``--all`` reads it whole and
    warns of the damage, and the help of ``--last`` says so.
    """
    run = _copy(simulated, tmp_path / "run")
    path = run / "history.json"
    text = path.read_bytes()
    at = text.index(b'"round": 3,')
    path.write_bytes(text[:at] + b'"round": X,' + text[at + len(b'"round": 3,') :])
    assert runtail_module.tail_history(run, 5) is not None
    fast = _show(run, "--last", "5")
    assert f"the last 5 of {ROUNDS + 1}" in " ".join(fast.split())
    assert "not a covey history" not in fast
    whole = _show(run, "--all")
    assert "not a covey history" in whole
    assert "read from" in whole
    result = CliRunner().invoke(app, ["runs", "show", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "before them goes unnoticed" in " ".join(result.output.replace("│", " ").split())
