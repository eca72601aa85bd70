"""covey.xgboost: a resumed run keeps every hyperparameter it recorded, and an older run resumes."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey

xgb = pytest.importorskip("xgboost")

from covey.xgboost import (  # noqa: E402
    XGBoostBagging,
    XGBoostClient,
    XGBoostCyclic,
    bagging,
    from_weights,
    initial_model,
    num_trees,
)

BINARY = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 2, "nthread": 1}


def _data(cid: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cid)
    x = rng.normal(size=(40 + 20 * cid, 4))
    return x, (x[:, 0] > 0) * 1.0


def _simulate(
    run: Path, strategy: covey.Strategy, rounds: int, resume: bool, client_rounds: int = 1
) -> covey.sim.SimulationResult:
    return covey.simulate(
        lambda cid: XGBoostClient(*_data(cid), BINARY, local_rounds=client_rounds),
        num_clients=2,
        rounds=rounds,
        strategy=strategy,
        initial_weights=initial_model(BINARY, 4, capacity=1 << 18),
        backend="inline",
        seed=0,
        run_dir=run,
        resume=resume,
    )


def _as_an_older_covey_recorded(run: Path, *unrecorded: str) -> dict[str, Any]:
    """Drop ``unrecorded`` from the run's recorded hyperparameters, as an older covey wrote them.

    Its aggregator is recorded as that covey did too: by the step's function name.
    """
    with sqlite3.connect(run / "run.sqlite") as conn:
        [(text,)] = conn.execute("SELECT config FROM run WHERE id = 1").fetchall()
        config = json.loads(text)
        step = "bagging" if config["strategy"]["name"] == "XGBoostBagging" else "cyclic"
        config["strategy"]["aggregator"] = f"{step}.<locals>.update"
        kept = config["strategy"]["hyperparameters"]
        for key in unrecorded:
            del kept[key]
        conn.execute("UPDATE run SET config = ? WHERE id = 1", (json.dumps(config),))
    conn.close()
    return dict(kept)


def _options() -> dict[str, Any]:
    return {"fraction_evaluate": 0.0}


def test_weighted_is_recorded_and_a_resume_with_another_is_refused(tmp_path: Path) -> None:
    recorded = XGBoostBagging(weighted=False, fraction_evaluate=0.0).describe()
    assert recorded["hyperparameters"]["weighted"] is False
    run = tmp_path / "run"
    _simulate(run, XGBoostBagging(**_options()), 1, False)
    message = r"cannot be resumed with other settings.*weighted True \(the run's\) is False now"
    with pytest.raises(ValueError, match=message):
        _simulate(run, XGBoostBagging(weighted=False, **_options()), 2, True)
    _simulate(run, XGBoostBagging(**_options()), 2, True)


def _older_run(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    strategy: covey.Strategy,
    client_rounds: int = 1,
) -> tuple[Path, dict[str, Any]]:
    """A run of one round recorded as an older covey did: its folder and hyperparameters left.

    It lacks ``local_rounds`` when the clients boost ``client_rounds`` of their own,
    else ``weighted``. Warnings are captured from here on.
    """
    caplog.set_level(logging.WARNING, logger="covey")
    run = tmp_path / "run"
    _simulate(run, strategy, 1, False, client_rounds=client_rounds)
    left_out = "local_rounds" if client_rounds != 1 else "weighted"
    return run, _as_an_older_covey_recorded(run, left_out)


def _said(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The messages logged that hold ``text``."""
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _said_once(caplog: pytest.LogCaptureFixture, text: str) -> str:
    """The one message logged that holds ``text``."""
    (said,) = _said(caplog, text)
    return said


@pytest.mark.parametrize("value", ["no", "False", None, 0, 1])
def test_a_weighted_that_is_not_true_or_false_is_refused_naming_it(value: object) -> None:
    # Any text reads as true and None as false: weighted="False" would weigh clients.
    for make in (XGBoostBagging, bagging):
        with pytest.raises(TypeError, match=rf"weighted must be True or False, got {value!r}"):
            make(weighted=value)  # type: ignore[arg-type]
    numpys = XGBoostBagging(weighted=np.bool_(False))  # type: ignore[arg-type]
    assert numpys.describe()["hyperparameters"]["weighted"] is False


@pytest.mark.parametrize("weighted", [True, False])
def test_a_run_that_recorded_no_weighted_resumes_with_either_and_says_so(
    tmp_path: Path, weighted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    run, kept = _older_run(tmp_path, caplog, XGBoostBagging(weighted=weighted, **_options()))
    assert kept == {"max_trees": None, "local_rounds": 1}
    resumed = _simulate(run, XGBoostBagging(weighted=weighted, **_options()), 2, True)
    assert [r.aggregated for r in resumed.history.rounds[1:]] == [True, True]
    said = _said_once(caplog, "recorded no weighted")
    assert f"with weighted={weighted}" in said
    assert "resume it with the weighted it was started with" in said


@pytest.mark.parametrize("kind", [XGBoostBagging, XGBoostCyclic])
def test_a_run_whose_clients_chose_local_rounds_resumes_warning_of_the_strategys(
    tmp_path: Path, kind: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # An older covey sent no local_rounds: its clients boosted their own, 2, and the
    # run recorded none.
    run, _ = _older_run(tmp_path, caplog, kind(local_rounds=2, **_options()), client_rounds=2)
    # Resumed as it was written, the strategy's default of 1 now wins over the clients' 2:
    # the resume says so, naming local_rounds and how to keep the run's.
    _simulate(run, kind(**_options()), 2, True, client_rounds=2)
    said = _said_once(caplog, "recorded no local_rounds")
    assert "with local_rounds=1" in said
    assert "their own local_rounds" in said
    assert "resume it with the strategy's local_rounds set to theirs" in said
    # Given the clients' local_rounds, it trains on as it did.
    caplog.clear()
    resumed = _simulate(run, kind(local_rounds=2, **_options()), 3, True, client_rounds=2)
    per_round = 2 * (2 if kind is XGBoostBagging else 1)
    assert num_trees(from_weights(resumed.weights)) == per_round * 2 + per_round // 2
    assert not resumed.history.failures()
    assert any("recorded no local_rounds" in r.getMessage() for r in caplog.records)


def test_a_run_that_recorded_its_local_rounds_resumes_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="covey")
    run = tmp_path / "run"
    _simulate(run, XGBoostCyclic(**_options()), 1, False)
    with pytest.raises(ValueError, match=r"local_rounds 1 \(the run's\) is 2 now"):
        _simulate(run, XGBoostCyclic(local_rounds=2, **_options()), 2, True)
    with pytest.raises(ValueError, match=r"max_trees None \(the run's\) is 10 now"):
        _simulate(run, XGBoostCyclic(max_trees=10, **_options()), 2, True)
    _simulate(run, XGBoostCyclic(**_options()), 2, True)
    assert not _said(caplog, "recorded no")


def _older_deployed(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """XGBoostBagging(local_rounds=2) as an older covey recorded it; warnings caught."""
    caplog.set_level(logging.WARNING, logger="covey")
    older = XGBoostBagging(local_rounds=2).describe()
    older["hyperparameters"] = {}  # as an older covey recorded XGBoostBagging()
    older["aggregator"] = "bagging.<locals>.update"
    return older


def test_a_deployed_run_that_recorded_neither_resumes_warning_of_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from covey.server._resume import same_settings
    from covey.server._store import RunStore

    older = _older_deployed(caplog)
    with RunStore.create(tmp_path / "run", config={"strategy": older}) as store:
        same_settings(store, XGBoostBagging(weighted=False, local_rounds=2))
        with pytest.raises(ValueError, match=r"max_trees None \(the run's\) is 5 now"):
            same_settings(store, XGBoostBagging(max_trees=5))
    said = _said(caplog, "recorded no")
    assert len(said) == 2
    assert "recorded no local_rounds" in said[0]
    assert "with local_rounds=2" in said[0]
    assert "recorded no weighted" in said[1]
    assert "with weighted=False" in said[1]


def test_a_run_that_recorded_no_weighted_warns_at_its_first_resume_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run, _ = _older_run(tmp_path, caplog, XGBoostBagging(**_options()))
    _simulate(run, XGBoostBagging(**_options()), 2, True)
    assert len(_said(caplog, "recorded no weighted")) == 1
    # Resumed again with the same value: said already, so nothing is said.
    caplog.clear()
    resumed = _simulate(run, XGBoostBagging(**_options()), 3, True)
    assert not _said(caplog, "recorded no")
    assert [r.aggregated for r in resumed.history.rounds[1:]] == [True] * 3
    # The run's own record is left as it was: its value is still not known, and a
    # resume with the other (as the warning advises) goes on, warning of it.
    with sqlite3.connect(run / "run.sqlite") as conn:
        [(text,)] = conn.execute("SELECT config FROM run WHERE id = 1").fetchall()
    conn.close()
    config = json.loads(text)
    assert "weighted" not in config["strategy"]["hyperparameters"]
    assert config["resumed_unrecorded"] == {"weighted": True}
    _simulate(run, XGBoostBagging(weighted=False, **_options()), 4, True)
    assert "with weighted=False" in _said_once(caplog, "recorded no weighted")


def test_a_deployed_run_that_recorded_neither_warns_of_them_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from covey.server._resume import same_settings
    from covey.server._store import RunStore

    older = _older_deployed(caplog)
    with RunStore.create(tmp_path / "run", config={"strategy": older}) as store:
        same_settings(store, XGBoostBagging(local_rounds=2))
    with RunStore.open(tmp_path / "run", exclusive=True) as store:
        same_settings(store, XGBoostBagging(local_rounds=2))
        assert store.config["strategy"] == older
    assert len(_said(caplog, "recorded no")) == 2  # the first resume's two warnings


def test_the_aggregator_is_recorded_by_its_call_and_an_older_runs_name_resumes(
    tmp_path: Path,
) -> None:
    from covey.server._resume import strategy_changes

    numpys: dict[str, Any] = {"max_trees": np.int64(40), "weighted": np.bool_(False)}
    bagged = XGBoostBagging(**numpys).describe()
    assert bagged["aggregator"] == "bagging(weighted=False, max_trees=40, local_rounds=1)"
    cyclic = XGBoostCyclic(local_rounds=3).describe()["aggregator"]
    assert cyclic == "cyclic(max_trees=None, local_rounds=3)"
    run = tmp_path / "run"
    _simulate(run, XGBoostBagging(**_options()), 1, False)
    kept = json.loads((run / "history.json").read_text())["config"]["strategy"]
    assert kept["aggregator"] == "bagging(weighted=True, max_trees=None, local_rounds=1)"
    # A run of an older covey recorded the step's function name: it resumes.
    with sqlite3.connect(run / "run.sqlite") as conn:
        [(text,)] = conn.execute("SELECT config FROM run WHERE id = 1").fetchall()
        config = json.loads(text)
        config["strategy"]["aggregator"] = "bagging.<locals>.update"
        conn.execute("UPDATE run SET config = ? WHERE id = 1", (json.dumps(config),))
    conn.close()
    resumed = _simulate(run, XGBoostBagging(**_options()), 2, True)
    assert [r.aggregated for r in resumed.history.rounds[1:]] == [True, True]
    # Another step is still refused; and the cyclic step's old name is not the bagging one's.
    other = dataclasses.replace(covey.FedAvg(), name="XGBoostBagging")
    changes = strategy_changes(config["strategy"], other, ("aggregator",))
    assert changes == ["aggregator 'bagging.<locals>.update' (the run's) is 'weighted_mean()' now"]
    config["strategy"]["name"] = "XGBoostCyclic"
    assert strategy_changes(config["strategy"], XGBoostCyclic(), ("aggregator",))
