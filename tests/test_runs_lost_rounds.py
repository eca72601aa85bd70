"""A ``history.json`` that lost whole rounds, still JSON, beside a store that holds them.

``covey runs show`` (``--all``, and ``--last`` when it reads the file whole),
``covey runs list``, ``covey runs report`` and the dashboard read only the file's
rounds and left the lost ones out of their tables unsaid.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.core._history import History
from covey.dashboard._runs import read_run

pytestmark = pytest.mark.timeout(120)

ROUNDS = 12
WARNING = "lacks rounds 3-5 and 8 that"


class _Adder(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same run twice: whole, and with rounds 3, 4, 5 and 8 gone from its history.json."""
    whole = tmp_path_factory.mktemp("whole") / "run"
    covey.simulate(
        lambda cid: _Adder(),
        3,
        ROUNDS,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        run_dir=whole,
    )
    lost = tmp_path_factory.mktemp("lost") / "run"
    shutil.copytree(whole, lost)
    history = History.load(lost)
    history.rounds = [r for r in history.rounds if r.round not in (3, 4, 5, 8)]
    history.save(lost / "history.json")
    return whole, lost


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("flags", [["--all"], ["--last", "4"], []])
def test_runs_show_names_the_lost_rounds_and_shows_them_from_the_store(
    runs: tuple[Path, Path], flags: list[str]
) -> None:
    whole, lost = runs
    said = _invoke("runs", "show", str(lost), *flags)
    assert f"{lost / 'history.json'} {WARNING} {lost / 'run.sqlite'} holds" in said
    shown = [line for line in said.splitlines()[1:] if "lacks rounds" not in line]
    assert shown == _invoke("runs", "show", str(whole), *flags).splitlines()[1:]  # its name


def test_runs_list_names_the_lost_rounds(runs: tuple[Path, Path]) -> None:
    said = _invoke("runs", "list", str(runs[1].parent))
    assert WARNING in said


def test_the_dashboard_and_the_report_name_the_lost_rounds_and_show_them(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    whole, lost = runs
    run = read_run("run", lost)
    assert [r["round"] for r in run.rounds] == list(range(ROUNDS + 1))
    assert run.rounds == read_run("run", whole).rounds
    assert run.warning is not None
    assert WARNING in run.warning
    said = _invoke("runs", "report", str(lost), "--out", str(tmp_path / "r.html"))
    assert WARNING in said
    assert WARNING in (tmp_path / "r.html").read_text()
    assert read_run("run", whole).warning is None
