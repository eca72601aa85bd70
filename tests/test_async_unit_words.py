"""An asynchronous (FedBuff) run is counted in updates wherever it is shown or refused.

The dashboard's API tells the page the unit, ``covey runs show`` and ``covey runs list``
name it, as do the run store's and the resume checks' messages; a FedBuff selector that
chooses nobody is named. ``simulate`` refuses an availability or ``client_durations``
function of the wrong signature, and an empty ``run_dir``, before the run starts.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.deploy._servechecks import check_new_run_dir, check_resumable
from covey.server import RunStore

ASYNC = {"rounds": 8, "strategy": {"name": "FedBuff", "options": {"buffer_size": 2}}}
SYNC = {"rounds": 8, "strategy": {"name": "FedAvg", "options": {"fraction_fit": 1.0}}}


class Const(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.ones(2)}, num_examples=1)


def _failed_run(folder: Path, config: dict[str, Any]) -> None:
    """A served run that failed after its third record, with a checkpoint to continue from."""
    with RunStore.create(folder, config=config) as store:
        for r in range(4):
            store.save_round(r, {"w": np.full(2, float(r))}, {"round": r})
        store.set_status("failed")
        history = store.history()
    history.stopped_reason = "the clients left"
    history.save(folder / "history.json")


def _said(args: list[str]) -> str:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    return " ".join(result.output.split())


# -- the dashboard ------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "step"), [(ASYNC, "update"), (SYNC, "round")])
def test_the_dashboard_api_gives_the_run_s_unit(
    tmp_path: Path, config: dict[str, Any], step: str
) -> None:
    pytest.importorskip("starlette", reason="the dashboard extra is needed")
    from covey.dashboard._runs import detail, read_run, summary

    _failed_run(tmp_path / "run", config)
    run = read_run("run", tmp_path / "run")
    assert summary(run)["step"] == step
    assert detail(run)["step"] == step
    # The hint to continue it after "its last complete round" counted rounds alone.
    assert f"continue it after its last complete {step} with" in summary(run)["note"]


def test_a_simulated_fedbuff_run_is_given_as_counting_updates(tmp_path: Path) -> None:
    # Its run.json names the strategy only: the options are in history.json.
    pytest.importorskip("starlette", reason="the dashboard extra is needed")
    from covey.dashboard._runs import read_run, summary

    covey.simulate(
        lambda cid: Const(),
        3,
        2,
        covey.FedBuff(buffer_size=2),
        {"w": np.zeros(2)},
        run_dir=tmp_path,
    )
    assert summary(read_run("run", tmp_path))["step"] == "update"


@pytest.mark.parametrize(("config", "step"), [(ASYNC, "update"), (SYNC, "round")])
def test_the_report_names_the_run_s_unit(tmp_path: Path, config: dict[str, Any], step: str) -> None:
    pytest.importorskip("plotly", reason="the dashboard extra is needed")
    from covey.dashboard._report import render_report
    from covey.dashboard._runs import read_run

    _failed_run(tmp_path, config)
    page = render_report(read_run("run", tmp_path))
    assert f"<h2>{step.capitalize()}s</h2>" in page
    assert f'<table id="rounds"><thead><tr><th>{step}</th>' in page
    assert f"<tr><th>{step}s</th><td>3</td></tr>" in page
    assert f'"text":"Clients per {step}"' in page
    if step == "update":
        assert "Clients per round" not in page
        assert "<th>round</th>" not in page


def test_the_page_names_the_unit_it_is_given() -> None:
    # The script reads the API's step for its headers, chart axes and titles.
    from importlib import resources

    script = (resources.files("covey.dashboard") / "static" / "app.js").read_text("utf-8")
    assert 'run.step === "update"' in script
    assert '"Clients per " + step' in script
    assert '"Clients per round"' not in script
    assert "<th>round</th>" not in script


# -- covey runs show / list ---------------------------------------------------------------------


def test_runs_show_names_an_asynchronous_run_s_updates(tmp_path: Path) -> None:
    _failed_run(tmp_path / "fedbuff", {**ASYNC, "keep_last": None})
    said = _said(["runs", "show", str(tmp_path / "fedbuff")])
    assert "strategy FedBuff, updates 8, keep_last every update" in said
    assert "continue it after its last complete update with" in said
    assert "stopped early after update 3: the clients left" in said
    assert "rounds 8" not in said
    assert "complete round" not in said
    assert "round 3" not in said
    _failed_run(tmp_path / "fedavg", {**SYNC, "keep_last": None})
    said = _said(["runs", "show", str(tmp_path / "fedavg")])  # as it was
    assert "strategy FedAvg, rounds 8, keep_last every round" in said
    assert "continue it after its last complete round with" in said


def test_runs_show_leaves_out_the_columns_no_update_has_a_value_in(tmp_path: Path) -> None:
    # A FedBuff run that never evaluates (fraction_evaluate=0) showed empty evaluate columns.
    class Scored(Const):
        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            return covey.FitResult(
                delta={"w": np.ones(2)}, num_examples=1, metrics={"train_loss": 0.5}
            )

    strategy = covey.FedBuff(buffer_size=2, fraction_evaluate=0.0)
    run = tmp_path / "run"
    covey.simulate(lambda cid: Scored(), 3, 4, strategy, {"w": np.zeros(2)}, run_dir=run)
    header = _said(["runs", "show", str(run)])
    assert "train_loss" in header
    assert "evaluate" not in header.replace("fraction_evaluate", "")
    assert "central" not in header
    # A column with a value in any update stays, even where the updates shown have none.
    history = covey.History.load(run / "history.json")
    history.rounds[1].evaluate_loss = 0.25
    history.save(run / "history.json")
    said = _said(["runs", "show", str(run), "--last", "2"])
    assert said.count("evaluate") - said.count("fraction_evaluate") == 1
    assert "accuracy" not in said


def test_updates_that_did_not_aggregate_are_named_as_updates() -> None:
    from covey.core import RoundRecord
    from covey.server._outputs import not_aggregated

    def record(rnd: int) -> RoundRecord:
        info = {"error": "AggregationError: late"} if rnd in (2, 3) else {}
        return RoundRecord(rnd, aggregated=rnd not in (0, 2, 3), aggregate_info=info)

    history = covey.History([record(r) for r in range(5)], config=ASYNC)
    assert not_aggregated(history) == (
        "2 of 4 updates did not aggregate (the model was left as it was); updates 2 and 3: "
        "AggregationError: late"
    )
    from covey.cli._rounds import endings

    history.rounds = [record(0), record(2)]
    assert endings(history) == [
        "no update aggregated: the model is the one the run started with; update 2: "
        "AggregationError: late",
    ]
    history.rounds, history.stopped_reason = [record(0)], "no client came back"
    assert endings(history) == ["stopped before any update finished: no client came back"]


def test_runs_list_names_the_count_of_each_run(tmp_path: Path) -> None:
    _failed_run(tmp_path / "a-fedbuff", ASYNC)
    said = _said(["runs", "list", str(tmp_path)])
    assert " updates " in said
    assert " rounds " not in said
    _failed_run(tmp_path / "b-fedavg", SYNC)
    said = _said(["runs", "list", str(tmp_path)])
    assert " updates/rounds " in said  # both: each row says which
    assert "3/8 updates" in said
    assert "3/8 rounds" in said


# -- the run store and the resume checks --------------------------------------------------------


def test_a_damaged_record_of_an_asynchronous_run_is_named_an_update_record(
    tmp_path: Path,
) -> None:
    # It was "a round record in ... is damaged (ValueError: round 0: ...)".
    with RunStore.create(tmp_path, config=ASYNC) as store:
        store.save_round(0, {"w": np.zeros(2)}, {"round": 0})
    damaged = json.dumps({"round": 0, "fit_failures": 3})
    conn = sqlite3.connect(tmp_path / "run.sqlite")
    with conn:
        conn.execute("UPDATE rounds SET record = ? WHERE round = 0", (damaged,))
    conn.close()
    with RunStore.open(tmp_path) as store, pytest.raises(ValueError, match="is damaged") as e:
        store.history()
    assert str(e.value).startswith(
        f"an update record in {tmp_path / 'run.sqlite'} is damaged (ValueError: update 0: "
    )


@pytest.mark.parametrize(("config", "step"), [(ASYNC, "update"), (SYNC, "round")])
def test_a_resume_with_too_few_is_refused_in_the_run_s_unit(
    tmp_path: Path, config: dict[str, Any], step: str
) -> None:
    _failed_run(tmp_path, config)
    with RunStore.open(tmp_path) as store:
        with pytest.raises(ValueError, match=f"fewer {step}s than it ran; resume it with"):
            check_resumable(store, 2)
        store.set_status("finished")
        with pytest.raises(ValueError, match=f"resume it with more {step}s than 3 "):
            check_resumable(store, 3)


# -- a FedBuff selector that chooses nobody -----------------------------------------------------


def test_a_fedbuff_selector_that_chooses_nobody_is_named() -> None:
    # It was "update 1: no client can be given a task: 8 eligible, 0 waiting in the buffer".
    def none_of_them(candidates: Any, update: int, rng: Any) -> list[int]:
        return []

    with pytest.raises(covey.FederationError) as stopped:
        covey.simulate(
            lambda cid: Const(),
            8,
            2,
            covey.FedBuff(buffer_size=2, selector=none_of_them),
            {"w": np.zeros(2)},
        )
    said = str(stopped.value)
    assert said.startswith("update 1: selector "), said
    assert "none_of_them chose none of the 8 idle clients it was given" in said
    assert "Have the selector choose at least one of its candidates" in said


def test_a_fedbuff_selector_s_error_is_noted_with_the_update() -> None:
    def broken(candidates: Any, update: int, rng: Any) -> list[int]:
        raise KeyError("site")

    with pytest.raises(KeyError) as raised:
        covey.simulate(
            lambda cid: Const(),
            4,
            1,
            covey.FedBuff(buffer_size=2, selector=broken),
            {"w": np.zeros(2)},
        )
    assert any("raised by selector" in n and "in update 1" in n for n in raised.value.__notes__)


# -- simulate's functions and run_dir -----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (
            {"availability": lambda cid: True},
            "availability <lambda>(cid) cannot be called as availability(cid, round) -> bool",
        ),
        (
            {"client_durations": lambda cid: 1.0, "strategy": covey.FedBuff(buffer_size=1)},
            "client_durations <lambda>(cid) cannot be called as "
            "client_durations(cid, rng) -> seconds",
        ),
        (
            {"availability": lambda cid, rnd, extra: True},
            "availability <lambda>(cid, rnd, extra) cannot be called as",
        ),
    ],
)
def test_a_function_of_the_wrong_signature_is_refused_before_the_run(
    options: dict[str, Any], said: str, tmp_path: Path
) -> None:
    strategy = options.pop("strategy", covey.FedAvg())
    with pytest.raises(TypeError) as refused:
        covey.simulate(
            lambda cid: Const(), 3, 2, strategy, {"w": np.zeros(2)}, run_dir=tmp_path, **options
        )
    assert str(refused.value).startswith(said)
    assert not (tmp_path / "history.json").exists()  # refused before the run started


def test_functions_that_take_the_arguments_as_they_like_still_run() -> None:
    class Online:
        def __call__(self, *ids: int) -> bool:
            return True

    result = covey.simulate(
        lambda cid: Const(),
        3,
        2,
        covey.FedBuff(buffer_size=1),
        {"w": np.zeros(2)},
        availability=Online(),
        client_durations=lambda cid, rng, scale=1.0: scale,
    )
    assert len(result.history.rounds) == 3


def test_an_empty_run_dir_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It wrote history.json, run.json, run.lock and run.sqlite into the current folder.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="run_dir") as e:
        covey.simulate(lambda cid: Const(), 2, 1, covey.FedAvg(), {"w": np.zeros(2)}, run_dir="")
    assert str(e.value) == 'run_dir is empty (""); give a folder, or leave it out'
    with pytest.raises(ValueError, match="run_dir is empty"):  # serve's, before it listens
        check_new_run_dir("")
    assert list(tmp_path.iterdir()) == []
