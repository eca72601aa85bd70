"""A DP run whose server died is charged once more for the round it may have released.

A deployed server sends round r's model before round r's checkpoint commits; one
killed there is resumed from round r - 1 and computes round r again with fresh
noise, a second release the ledger must count. A run that ended (finished, or
failed and saved) released nothing unsaved and is not charged again. A run whose
noise is seeded draws the same noise again, with a warning that this is safe only
if its clients send the same updates; a DP-FTRL run is not resumed after a crash.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import covey
from covey import privacy

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served

pytestmark = pytest.mark.timeout(120)


def _strategy(noise_seed: int | None, *, ftrl: bool = False) -> covey.Strategy:
    """Central DP (or DP-FTRL, over trees of 4 rounds) of FedAvg on 3 clients."""
    plain = covey.FedAvg(min_available_clients=3, min_fit_clients=3, fraction_evaluate=0.0)
    dp = {"noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5, "noise_seed": noise_seed}
    if ftrl:
        return privacy.dp_ftrl(plain, tree_rounds=4, **dp)  # type: ignore[arg-type]
    return privacy.central(plain, expected_clients=3, **dp)  # type: ignore[arg-type]


def _run(run: Path, rounds: int, noise_seed: int | None, resume: bool) -> covey.deploy.ServeResult:
    served = Served(_strategy(noise_seed), rounds, run_dir=run, resume=resume)
    clients = [Joined(served.port, name=f"c{k}") for k in range(3)]
    result = served.join()
    for client in clients:
        client.join()
    return result


def _as_if_killed(run: Path) -> None:
    """Leave the run's status as a SIGKILLed server leaves it."""
    with closing(sqlite3.connect(run / "run.sqlite")) as db, db:
        db.execute("UPDATE run SET status = 'running' WHERE id = 1")


@pytest.mark.parametrize(
    ("killed", "noise_seed", "charged"),
    [(True, None, 4), (False, None, 3), (True, 5, 3)],
    ids=["killed", "ended", "killed-seeded"],
)
def test_a_resume_after_a_crash_charges_the_round_that_may_have_left(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    killed: bool,
    noise_seed: int | None,
    charged: int,
) -> None:
    run = tmp_path / "run"
    first = _run(run, 2, noise_seed, resume=False)
    assert first.history[2].aggregate_info["dp"]["rounds"] == 2
    if killed:
        _as_if_killed(run)
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="covey"):
        resumed = _run(run, 3, noise_seed, resume=True)
    # the statement says the rounds trained and, where more, the releases charged
    printed = capsys.readouterr().out
    if charged == 3:
        assert "  rounds:      3\n" in printed, printed
        assert "charged:" not in printed
    else:
        assert "  rounds:      3 trained\n" in printed, printed
        assert f"  charged:     {charged} releases (a round done again" in printed
    dp = resumed.history[3].aggregate_info["dp"]
    assert dp["rounds"] == charged
    assert resumed.history[3].privacy is not None
    ledger = privacy.Ledger.from_json(dp["ledger"])
    assert resumed.history[3].privacy["epsilon"] == pytest.approx(ledger.epsilon(1e-5))
    warned = [r for r in caplog.records if "charged twice" in r.getMessage()]
    assert len(warned) == (charged - 3)
    for record in warned:  # a server killed, or stopped by SIGTERM: neither is known here
        said = record.getMessage()
        assert said.startswith(
            "privacy: a server of this run stopped without saving round 3 (killed, "
            "interrupted or failed), perhaps after sending its model: "
        ), said
        assert "died" not in said
    # a seeded run (reproducible, its clients deterministic) is told the condition
    repeats = [r for r in caplog.records if "adds the same noise" in r.getMessage()]
    assert len(repeats) == (killed and noise_seed is not None)


def test_a_dp_ftrl_run_whose_server_died_is_not_resumed(tmp_path: Path) -> None:
    # It was resumed without a charge, "the repeated round draws the same noise":
    # the same tree noise on updates the clients computed again (a GPU's, a
    # shuffle's bits) gave two models of one round differing by the clipped
    # updates alone.
    run = tmp_path / "run"
    first = Served(_strategy(None, ftrl=True), 2, run_dir=run)
    clients = [Joined(first.port, name=f"c{k}") for k in range(3)]
    first.join()
    for client in clients:
        client.join()
    _as_if_killed(run)
    again = Served(_strategy(None, ftrl=True), 3, run_dir=run, resume=True, wait_timeout=5)
    with pytest.raises(ValueError, match=r"with DP-FTRL's tree noise, adds the same noise"):
        again.join()


def _status(run: Path) -> str:
    with closing(sqlite3.connect(run / "run.sqlite")) as db, db:
        status: str = db.execute("SELECT status FROM run WHERE id = 1").fetchone()[0]
    return status


def test_a_resume_that_stops_before_a_round_keeps_the_charge_for_the_next(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    _run(run, 2, None, resume=False)
    _as_if_killed(run)
    # resumed, it finds no clients and stops (marked failed) before saving a round
    alone = Served(_strategy(None), 3, run_dir=run, resume=True, wait_timeout=0.2)
    with pytest.raises(covey.FederationError):
        alone.join()
    assert _status(run) == "failed"
    resumed = _run(run, 3, None, resume=True)
    assert resumed.history[3].aggregate_info["dp"]["rounds"] == 4  # the death still charged
    again = _run(run, 4, None, resume=True)  # the saved round 3 charged it: not again
    assert again.history[4].aggregate_info["dp"]["rounds"] == 5


def test_a_resumed_run_is_running_again_so_a_kill_is_charged(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run(run, 2, None, resume=False)
    with closing(sqlite3.connect(run / "run.sqlite")) as db, db:  # as Ctrl-C leaves it
        db.execute("UPDATE run SET status = 'failed' WHERE id = 1")
    served = Served(_strategy(None), 3, run_dir=run, resume=True)
    assert _status(run) == "running"  # a SIGKILL now leaves it so: the next resume charges
    clients = [Joined(served.port, name=f"c{k}") for k in range(3)]
    served.join()
    for client in clients:
        client.join()
    assert _status(run) == "finished"


class _FitEvaluate(covey.Client):
    """Adds one to every weight; evaluates to a loss of 0."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=0.0, num_examples=1)


def test_a_run_that_failed_after_sending_an_unsaved_model_is_charged_it_again(
    tmp_path: Path,
) -> None:
    # Round 2's noised model goes to the evaluating clients, then the server's own
    # evaluation raises: the run fails (not killed) before round 2 is saved. The
    # resumed run computes round 2 again with fresh noise, a second release.
    run = tmp_path / "run"
    strategy = privacy.central(
        covey.FedAvg(min_available_clients=3, min_fit_clients=3, fraction_evaluate=1.0),
        noise_multiplier=1.0,
        clip=1.0,
        delta=1e-5,
        expected_clients=3,
    )

    def evaluate(round: int, weights: Any) -> tuple[float, dict[str, float]]:
        if round == 2:
            raise RuntimeError("the evaluation data is gone")
        return 0.0, {}

    served = Served(strategy, 3, run_dir=run, evaluate_fn=evaluate)
    clients = [Joined(served.port, _FitEvaluate(), name=f"c{k}") for k in range(3)]
    with pytest.raises(Exception, match="evaluation data is gone"):
        served.join()
    for client in clients:
        client.join()
    resumed = _run(run, 2, None, resume=True)
    assert resumed.history[2].aggregate_info["dp"]["rounds"] == 3
