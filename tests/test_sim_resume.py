"""A simulation killed (SIGKILL) after a round and resumed is the uninterrupted run, bit for bit.

``simulate(run_dir=...)`` checkpoints each round as a deployed server does;
``resume=True`` continues after the last complete round. A subprocess runs the
simulation and kills itself with SIGKILL as a round finishes (its checkpoint
may then be in flight); the resumed run must give the final weights and every
round's record of a run never stopped. What cannot be continued is refused,
naming what differs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.aggregate import Aggregate, Begin, Step, chain, server_adam, server_sgd, weighted_mean
from covey.cli import app
from covey.dashboard._runs import read_run, summary
from covey.server._store import RunStore

pytestmark = pytest.mark.timeout(120)

SCRIPT = '''
import json, os, signal, sys
import numpy as np
import covey


class Noisy(covey.Client):
    """Trains to a seeded point: its update depends on (cid, round) only."""

    def __init__(self, cid):
        self.cid = cid

    def fit(self, weights, config):
        rng = np.random.default_rng([self.cid, config["round"]])
        new = {k: v * 0.9 + rng.normal(size=v.shape).astype(v.dtype) for k, v in weights.items()}
        return covey.FitResult(
            weights=new, num_examples=1 + self.cid, metrics={"train_loss": float(rng.random())}
        )

    def evaluate(self, weights, config):
        loss = float(np.sum(weights["w"].astype(np.float64) ** 2)) + self.cid
        return covey.EvaluateResult(loss=loss, num_examples=2, metrics={"accuracy": 1 / loss})


def central(rnd, weights):
    return float(np.sum(weights["w"] ** 2)), {"mean": float(np.mean(weights["b"]))}


def main(spec):
    def on_round(record):
        if record.round == spec.get("kill_after"):
            if __name__ != "__main__":
                raise RuntimeError("killed")  # in the test's own process
            os.kill(os.getpid(), signal.SIGKILL)

    process = spec["backend"] == "process"
    result = covey.simulate(
        Noisy,
        6,
        spec["rounds"],
        covey.FedAdam(eta=0.05, fraction_fit=0.5, fraction_evaluate=0.5),
        {"w": np.ones(5, np.float32), "b": np.zeros(3)},
        central,
        backend=spec["backend"],
        num_workers=2 if process else None,
        seed=7,
        availability=0.8,
        client_durations=[1.0, 2.0, 3.0, 1.5, 2.5, 0.5],
        compression=spec.get("compression"),
        run_dir=spec.get("run_dir"),
        resume=spec.get("resume", False),
        on_round=on_round,
    )
    np.savez(spec["out"] + ".npz", **result.weights)
    with open(spec["out"] + ".json", "w") as f:
        json.dump(result.history.to_dict(), f)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
'''


def _script(tmp: Path) -> Path:
    script = tmp / "sim_script.py"
    if not script.exists():
        script.write_text(SCRIPT)
    return script


def _here(tmp: Path, **spec: Any) -> None:
    """Run the script's simulation in this process."""
    loaded = importlib.util.spec_from_file_location(f"sim_script_{id(spec)}", _script(tmp))
    assert loaded is not None
    assert loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    module.main(spec)


def _run(tmp: Path, **spec: Any) -> subprocess.CompletedProcess[str]:
    """Run the script's simulation in a process of its own."""
    script = _script(tmp)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, str(script), json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def _outcome(out: Path) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The final weights and every round's record, wall-clock durations aside."""
    with np.load(f"{out}.npz") as data:
        weights = {k: data[k] for k in data.files}
    rounds = json.loads(Path(f"{out}.json").read_text())["rounds"]
    for record in rounds:
        record.pop("durations", None)
    return weights, rounds


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_simulation_killed_after_a_round_resumes_to_the_uninterrupted_run(
    tmp_path: Path, backend: str
) -> None:
    _here(tmp_path, backend=backend, rounds=5, out=str(tmp_path / "whole"))
    run = tmp_path / "run"
    killed = _run(tmp_path, backend=backend, rounds=5, run_dir=str(run), kill_after=3, out="-")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    with RunStore.open(run) as store:
        assert store.last_round() in (2, 3)  # round 3's save was in flight, or done
    shown = CliRunner().invoke(app, ["runs", "show", str(run)], env={"COLUMNS": "300"})
    said = " ".join(shown.output.split())
    assert f"{run}: stopped" in said
    assert f"`covey.simulate(..., run_dir={str(run)!r}, resume=True)` and the client_fn" in said
    _here(
        tmp_path, backend=backend, rounds=5, run_dir=str(run), resume=True, out=str(tmp_path / "r")
    )
    weights, rounds = _outcome(tmp_path / "r")
    expected_weights, expected_rounds = _outcome(tmp_path / "whole")
    assert weights.keys() == expected_weights.keys()
    for name, array in expected_weights.items():
        assert weights[name].dtype == array.dtype
        assert weights[name].tobytes() == array.tobytes()
    assert [r["round"] for r in rounds] == list(range(6))
    assert rounds == expected_rounds  # losses, metrics, participants, simulated clock
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_a_simulation_killed_before_round_0_was_saved_starts_again_from_step_0(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        _here(tmp_path, backend="inline", rounds=2, run_dir=str(run), kill_after=0, out="-")
    with RunStore.open(run) as store:  # as a process killed before round 0's save committed
        store.discard_after(None)
        store.set_status("running")
    _here(
        tmp_path, backend="inline", rounds=2, run_dir=str(run), resume=True, out=str(tmp_path / "r")
    )
    _here(tmp_path, backend="inline", rounds=2, out=str(tmp_path / "whole"))
    assert _outcome(tmp_path / "r")[1] == _outcome(tmp_path / "whole")[1]


# -- in this process: what is refused ---------------------------------------------------


class Half(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(weights={k: v / 2 for k, v in weights.items()}, num_examples=1)


def _sim(run: Path | None, rounds: int = 2, **options: Any) -> covey.sim.SimulationResult:
    options.setdefault("strategy", covey.FedAvg(fraction_evaluate=0.0))
    options.setdefault("initial_weights", {"w": np.ones(3)})
    options.setdefault("num_clients", 4)
    return covey.simulate(lambda cid: Half(), rounds=rounds, run_dir=run, **options)


def _stopped(run: Path, rounds: int = 3, **options: Any) -> None:
    """A run of ``rounds`` rounds stopped by an error in its second round."""

    def stop(record: covey.core.RoundRecord) -> None:
        if record.round == 1:
            raise RuntimeError("stopped here")

    with pytest.raises(RuntimeError, match="stopped here"):
        _sim(run, rounds, on_round=stop, **options)


def test_a_stopped_simulation_resumes_with_the_same_settings(tmp_path: Path) -> None:
    _stopped(tmp_path / "run")
    result = _sim(tmp_path / "run", 3, resume=True)
    assert [r.round for r in result.history.rounds] == [0, 1, 2, 3]
    assert result.weights["w"].tolist() == [0.125] * 3
    assert covey.History.load(tmp_path / "run").rounds[-1].round == 3


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ({"strategy": covey.FedAdam(fraction_evaluate=0.0)}, "started with FedAvg"),
        ({"strategy": covey.FedAvg(fraction_evaluate=0.0, fraction_fit=0.5)}, "fraction_fit"),
        ({"num_clients": 5}, "num_clients was 4, is 5 now"),
        ({"seed": 1}, "seed was 0, is 1 now"),
        ({"compression": "q8"}, "compression was None, is 'q8' now"),
        ({"initial_weights": {"w": np.ones(4)}}, "'w' is float64\\[3\\] in the run's model"),
        ({"availability": 0.5}, "availability was None, is 0.5 now"),
        ({"round_deadline": 2.0}, "round_deadline was None, is 2.0 now"),
        ({"client_durations": [1.0] * 4}, "client_durations was None, is 'float64\\[4\\] sha"),
    ],
    ids=[
        "strategy",
        "hyperparameter",
        "num_clients",
        "seed",
        "compression",
        "model",
        "availability",
        "deadline",
        "durations",
    ],
)
def test_a_resume_with_other_settings_is_refused_naming_what_differs(
    tmp_path: Path, changed: dict[str, Any], named: str
) -> None:
    _stopped(tmp_path / "run")
    with pytest.raises(ValueError, match=named):
        _sim(tmp_path / "run", 3, resume=True, **changed)
    assert _sim(tmp_path / "run", 3, resume=True).history.rounds[-1].round == 3  # still resumable


@pytest.mark.parametrize(
    ("started", "now", "named"),
    [
        (
            server_adam(eta=0.1),
            server_adam(eta=0.5),
            "server_adam\\(eta=0.1, .*server_adam\\(eta=0.5",
        ),
        (server_adam(eta=0.1), server_sgd(0.5, momentum=0.9), "server_sgd\\(lr=0.5, momentum=0.9"),
    ],
    ids=["hyperparameter", "step"],
)
def test_a_resume_with_another_aggregator_of_ones_own_is_refused_naming_it(
    tmp_path: Path, started: Step, now: Step, named: str
) -> None:
    # A Strategy(aggregator=chain(...)) recorded nothing of its chain: a resume with
    # another server learning rate, or server SGD taking up Adam's moments as its
    # velocity, trained on without a word.
    def strategy(step: Step) -> covey.Strategy:
        return covey.Strategy(aggregator=chain(weighted_mean(), step), fraction_evaluate=0.0)

    _stopped(tmp_path / "run", strategy=strategy(started))
    with pytest.raises(ValueError, match=f"strategy aggregator .*{named}"):
        _sim(tmp_path / "run", 3, resume=True, strategy=strategy(now))
    resumed = _sim(tmp_path / "run", 3, resume=True, strategy=strategy(started))
    assert resumed.history.rounds[-1].round == 3


def _adam(eta: Any, beta1: Any) -> covey.Strategy:
    return covey.FedAdam(eta=eta, beta1=beta1, fraction_evaluate=0.0)


@pytest.mark.parametrize(
    ("started", "now"),
    [
        (_adam(np.float64(0.1), np.float32(0.9)), _adam(0.1, 0.9)),
        (_adam(0.1, 0.9), _adam(np.float64(0.1), np.float32(0.9))),
    ],
    ids=["numpy-then-python", "python-then-numpy"],
)
def test_a_resume_with_numpy_or_python_numbers_of_the_same_value_goes_on(
    tmp_path: Path, started: covey.Strategy, now: covey.Strategy
) -> None:
    # The aggregator was recorded with NumPy's repr, server_adam(eta=np.float64(0.1), ...),
    # so the same rates given as Python floats were refused as another aggregator.
    assert "np." not in started.describe()["aggregator"]
    _stopped(tmp_path / "run", strategy=started)
    with pytest.raises(ValueError, match=r"strategy aggregator .*server_adam\(eta=0.5, beta1=0.9"):
        _sim(tmp_path / "run", 3, resume=True, strategy=_adam(np.float64(0.5), 0.9))
    assert _sim(tmp_path / "run", 3, resume=True, strategy=now).history.rounds[-1].round == 3


def test_a_run_whose_aggregator_was_recorded_with_numpy_reprs_resumes_with_the_same_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.aggregate import _order

    with monkeypatch.context() as older:  # an older covey wrote NumPy's repr
        older.setattr(_order, "_python", lambda value: value, raising=False)
        started = _adam(np.float64(0.1), np.float32(0.9))
        assert "eta=np.float64(0.1), beta1=np.float32(0.9)" in started.describe()["aggregator"]
        _stopped(tmp_path / "run", strategy=started)
    with pytest.raises(ValueError, match=r"strategy aggregator .*np.float64\(0.1\).*eta=0.5"):
        _sim(tmp_path / "run", 3, resume=True, strategy=_adam(0.5, 0.9))
    assert (
        _sim(tmp_path / "run", 3, resume=True, strategy=_adam(0.1, 0.9)).history.rounds[-1].round
        == 3
    )


def test_a_resumed_simulation_is_marked_running_while_it_runs(tmp_path: Path) -> None:
    import sqlite3

    _stopped(tmp_path / "run")
    seen: list[str] = []

    def status(record: Any) -> None:
        with sqlite3.connect(tmp_path / "run" / "run.sqlite") as conn:
            seen.append(conn.execute("SELECT status FROM run").fetchone()[0])

    _sim(tmp_path / "run", 3, resume=True, on_round=status)
    # round 1 again (its callback raised: it is given it first), rounds 2 and 3; it said failed
    assert seen == ["running", "running", "running"]
    with RunStore.open(tmp_path / "run") as store:
        assert store.status == "finished"


def test_a_run_resumed_on_another_backend_says_which_backend_serves_it(tmp_path: Path) -> None:
    # run.json kept the backend the run started on, though another one trained it on.
    _stopped(tmp_path / "run", backend="process", num_workers=1)
    started = json.loads((tmp_path / "run" / "run.json").read_text())
    assert started["backend"] == "process"
    _sim(tmp_path / "run", 3, resume=True, backend="inline")
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (meta["backend"], meta["status"], len(meta["resumed"])) == ("inline", "finished", 1)
    # history.json and run.sqlite (which `covey runs` read) said "process" still.
    assert covey.History.load(tmp_path / "run").config["backend"] == "inline"
    with RunStore.open(tmp_path / "run") as store:
        assert store.config["backend"] == "inline"


def test_a_finished_simulation_says_it_is_finished(tmp_path: Path) -> None:
    _sim(tmp_path / "run")
    with pytest.raises(
        ValueError, match=r"is finished \(round 2 was its last\).*more rounds than 2"
    ):
        _sim(tmp_path / "run", 2, resume=True)


def test_a_finished_simulation_trains_on_when_asked_for_more_rounds(tmp_path: Path) -> None:
    def adam() -> covey.Strategy:
        return covey.FedAdam(fraction_fit=0.5, fraction_evaluate=0.0, eta=0.1)

    _sim(tmp_path / "run", 2, strategy=adam())
    on = _sim(tmp_path / "run", 4, strategy=adam(), resume=True)
    straight = _sim(tmp_path / "straight", 4, strategy=adam())
    assert [r.round for r in on.history.rounds] == [0, 1, 2, 3, 4]
    assert on.weights["w"].tobytes() == straight.weights["w"].tobytes()
    assert covey.History.load(tmp_path / "run").rounds[-1].round == 4
    with RunStore.open(tmp_path / "run") as store:  # it kept the first count: 2
        assert store.config["rounds"] == 4
    assert summary(read_run("run", tmp_path / "run"))["rounds_planned"] == 4


def test_a_folder_without_a_simulation_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is no folder: there is no simulation in it"):
        _sim(tmp_path / "missing", resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no simulation checkpoint to resume"):
        _sim(tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="resume=True needs run_dir"):
        _sim(None, resume=True)
    assert not (tmp_path / "missing").exists()


def test_a_run_whose_run_sqlite_was_deleted_is_refused_naming_the_missing_file(
    tmp_path: Path,
) -> None:
    # It was refused with guessed reasons (an asynchronous strategy's, top-k...).
    run = tmp_path / "run"
    _stopped(run)
    (run / "run.sqlite").unlink()
    with pytest.raises(ValueError, match="cannot be resumed") as refused:
        _sim(run, 3, resume=True)
    said = str(refused.value)
    assert "its run.sqlite is missing (deleted or moved)" in said
    assert "weights/ is still there (2 round files)" in said
    assert "Put the run's run.sqlite back" in said
    assert "covey.simulate(..., run_dir=<a new folder>)" in said
    assert "asynchronous" not in said
    shutil.rmtree(run / "weights")  # both gone: said so, beside the runs that keep none
    with pytest.raises(ValueError, match=r"it has no run.sqlite and no weights/") as refused:
        _sim(run, 3, resume=True)
    assert "deleted or moved" in str(refused.value)


@pytest.mark.parametrize("made_weights", [False, True])
def test_a_run_killed_before_its_first_checkpoint_resumes_from_round_1(
    tmp_path: Path, made_weights: bool
) -> None:
    from covey.server._rundb import hold_run

    run = tmp_path / "run"
    run.mkdir()
    lock = hold_run(run)  # what a run killed as its clients start leaves: its lock only
    if lock is not None:
        os.close(lock)
    if made_weights:  # killed as it made its store
        (run / "weights").mkdir()
    resumed = _sim(run, 3, strategy=covey.FedAdam(fraction_evaluate=0.0), resume=True)
    whole = _sim(None, 3, strategy=covey.FedAdam(fraction_evaluate=0.0))
    assert [r.round for r in resumed.history.rounds] == [0, 1, 2, 3]
    assert resumed.weights["w"].tobytes() == whole.weights["w"].tobytes()
    assert covey.History.load(run).rounds[-1].round == 3


def test_a_deployed_run_folder_is_not_resumed_as_a_simulation(tmp_path: Path) -> None:
    with RunStore.create(tmp_path / "run", config={"backend": "grpc", "rounds": 2}):
        pass
    with pytest.raises(ValueError, match=r"holds a deployed run.*covey server --resume"):
        _sim(tmp_path / "run", resume=True)


def test_a_new_simulation_in_a_checkpointed_folder_points_at_resume(tmp_path: Path) -> None:
    _stopped(tmp_path / "run")
    with pytest.raises(ValueError, match=r"already holds a run.*resume=True to continue it"):
        _sim(tmp_path / "run", 3)


def test_top_k_keeps_no_checkpoint_and_its_resume_is_refused_naming_the_residuals(
    tmp_path: Path,
) -> None:
    _sim(tmp_path / "run", compression="topk:0.5")
    assert not (tmp_path / "run" / "run.sqlite").exists()
    with pytest.raises(ValueError, match=r"top-k .*error-feedback residuals"):
        _sim(tmp_path / "run", 3, resume=True, compression="topk:0.5")
    with pytest.raises(ValueError, match=r"holds no simulation checkpoint.*top-k"):
        _sim(tmp_path / "run", 3, resume=True)


def test_an_asynchronous_simulation_cannot_resume(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FedBuff is asynchronous"):
        _sim(tmp_path / "run", strategy=covey.FedBuff(buffer_size=2), resume=True)


def test_a_resume_warns_that_clients_are_built_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _stopped(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="covey"):
        _sim(tmp_path / "run", 3, resume=True)
    warned = [r.getMessage() for r in caplog.records if "built again" in r.getMessage()]
    assert len(warned) == 1
    assert "client_cache" in warned[0]
    # and how to keep what a client must carry on (before, it named no way)
    assert "keep such state on disk" in warned[0]
    assert "state_path=" in warned[0]
    _stopped(tmp_path / "other")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="covey"):
        _sim(tmp_path / "other", 3, resume=True, client_cache=0)
    assert not [r for r in caplog.records if "built again" in r.getMessage()]


def test_a_dp_simulation_resumes_with_its_accountant_and_its_noise(tmp_path: Path) -> None:
    from covey import privacy

    def dp() -> covey.Strategy:
        return privacy.central(
            covey.FedAvg(fraction_evaluate=0.0),
            noise_multiplier=1.0,
            clip=1.0,
            delta=1e-5,
            expected_clients=2,
        )

    whole = _sim(None, 4, strategy=dp(), num_clients=6)
    _stopped(tmp_path / "run", 4, strategy=dp(), num_clients=6)
    resumed = _sim(tmp_path / "run", 4, strategy=dp(), num_clients=6, resume=True)
    assert resumed.weights["w"].tobytes() == whole.weights["w"].tobytes()
    spent = [(r.round, r.privacy, r.fit_participants) for r in resumed.history.rounds]
    assert spent == [(r.round, r.privacy, r.fit_participants) for r in whole.history.rounds]
    assert resumed.history.rounds[-1].aggregate_info["dp"]["rounds"] == 4


class _Counter:
    """A step's state a run folder cannot store (a plain object)."""

    def __init__(self, rounds: int = 0) -> None:
        self.rounds = rounds


def test_a_state_the_folder_cannot_store_leaves_the_run_without_checkpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from covey.aggregate import Begin, Step, chain, weighted_mean

    def update(state: _Counter, event: Any) -> Any:
        if isinstance(event, Begin):
            return _Counter(state.rounds + 1), (event,)
        return state, (event,)

    counting = Step(lambda params: _Counter(), update)
    strategy = covey.Strategy(aggregator=chain(counting, weighted_mean()), fraction_evaluate=0.0)
    with caplog.at_level(logging.WARNING, logger="covey"):
        result = _sim(tmp_path / "run", 2, strategy=strategy)
    assert [r.round for r in result.history.rounds] == [0, 1, 2]
    assert not (tmp_path / "run" / "run.sqlite").exists()
    warned = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert len(warned) == 1
    assert "cannot store a _Counter" in warned[0]


def test_a_simulation_keeps_the_weights_files_of_its_newest_two_rounds(tmp_path: Path) -> None:
    _sim(tmp_path / "run", 5)
    kept = sorted(p.name for p in (tmp_path / "run" / "weights").iterdir())
    assert kept == ["round-00004.safetensors", "round-00005.safetensors"]
    with RunStore.open(tmp_path / "run") as store:
        assert store.rounds() == [0, 1, 2, 3, 4, 5]  # every round's record


def test_a_stopped_simulation_resumed_with_fewer_rounds_than_it_ran_is_refused(
    tmp_path: Path,
) -> None:
    # It used to mark the run finished with rounds=0 recorded and rounds 0-1 kept.
    _stopped(tmp_path / "run", 4)
    with pytest.raises(
        ValueError, match=r"stopped after round 1: it cannot be resumed with rounds=0"
    ) as refused:
        _sim(tmp_path / "run", 0, resume=True)
    assert "resume it with rounds=1 or more" in str(refused.value)
    with RunStore.open(tmp_path / "run") as store:
        assert store.status == "failed"
    assert _sim(tmp_path / "run", 4, resume=True).history.rounds[-1].round == 4


def test_a_simulation_stopped_with_ctrl_c_says_so_as_a_deployed_run_does(tmp_path: Path) -> None:
    # A simulation said "interrupted (KeyboardInterrupt)", a server "interrupted (SIGINT)".
    def ctrl_c(record: covey.core.RoundRecord) -> None:
        if record.round == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _sim(tmp_path / "run", 3, on_round=ctrl_c)
    assert covey.History.load(tmp_path / "run").stopped_reason == "interrupted (SIGINT)"
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (meta["status"], meta["stopped_reason"]) == ("failed", "interrupted (SIGINT)")


def test_a_simulation_refused_before_it_starts_leaves_no_run_behind(tmp_path: Path) -> None:
    # a list of arrays, not a mapping: refused before anything of the run is written,
    # it used to leave runs/a holding a run.lock, shown as a run killed as it started
    with pytest.raises(covey.core.WeightsError, match="mapping of names"):
        _sim(tmp_path / "runs" / "a", initial_weights=[np.ones(3)])
    assert not (tmp_path / "runs" / "a").exists()
    mine = tmp_path / "mine"  # a folder the user made: only the lock goes
    mine.mkdir()
    (mine / "notes.txt").write_text("kept\n")
    with pytest.raises(covey.core.WeightsError):
        _sim(mine, initial_weights=[np.ones(3)])
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert _sim(tmp_path / "runs" / "a").history.rounds[-1].round == 2  # the folder is free


class _Scaled(NamedTuple):
    scale: Any
    params: Any


def _decaying() -> Step:
    """A server step scaling the mean update by a NumPy scalar it keeps, 0.9 less each round."""

    def update(state: _Scaled, event: Any) -> Any:
        if isinstance(event, Begin):
            return state._replace(params=event.params), (event,)
        if isinstance(event, Aggregate):
            delta = {k: v * state.scale for k, v in event.as_delta(state.params).items()}
            out = Aggregate(event.round, event.num_clients, event.num_examples, delta=delta)
            return _Scaled(state.scale * 0.9, None), (out,)
        return state, (event,)

    return Step(lambda params: _Scaled(np.float64(1.0), None), update)


class _Seeded(covey.Client):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        new = {k: (v + rng.normal(size=v.shape)).astype(v.dtype) for k, v in weights.items()}
        return covey.FitResult(weights=new, num_examples=1 + self.cid)


def test_a_step_keeping_a_numpy_scalar_resumes_to_the_same_bits(tmp_path: Path) -> None:
    """np.float64 times a float32 array is float64, a float's is float32: the scalar stays one."""

    def simulate(run: Path | None, **options: Any) -> covey.sim.SimulationResult:
        strategy = covey.Strategy(
            aggregator=chain(weighted_mean(), _decaying()), fraction_evaluate=0.0
        )
        model = {"w": np.ones(1000, np.float32)}
        return covey.simulate(_Seeded, 4, 4, strategy, model, run_dir=run, **options)

    def stop(record: covey.core.RoundRecord) -> None:
        if record.round == 2:
            raise RuntimeError("stopped here")

    with pytest.raises(RuntimeError, match="stopped here"):
        simulate(tmp_path / "run", on_round=stop)
    resumed = simulate(tmp_path / "run", resume=True)
    whole = simulate(None)
    assert resumed.weights["w"].tobytes() == whole.weights["w"].tobytes()


def test_runs_list_dates_a_resumed_run_by_its_last_write(tmp_path: Path) -> None:
    # A resumed run was listed as modified when its history.json was last written, before
    # the resume: the run.json, lock and store it had written since were not read.
    _stopped(tmp_path / "run")
    for path in (tmp_path / "run").rglob("*"):
        os.utime(path, (1e9, 1e9))  # 2001, long before the resume
    listed: list[str] = []

    def client(cid: int) -> Half:
        if not listed:  # the resume's first client: `covey runs list` lists the run meanwhile
            shown = CliRunner().invoke(app, ["runs", "list", str(tmp_path)], env={"COLUMNS": "200"})
            listed.append(shown.output)
        return Half()

    strategy = covey.FedAvg(fraction_evaluate=0.0)
    covey.simulate(client, 4, 3, strategy, {"w": np.ones(3)}, run_dir=tmp_path / "run", resume=True)
    row = next(line for line in listed[0].splitlines() if "simulated" in line)
    assert "running" in row, listed[0]
    assert "2001-" not in row, listed[0]  # run.json, run.lock and run.sqlite were written now
