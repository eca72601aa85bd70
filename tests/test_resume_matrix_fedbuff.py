"""SIGKILL a real `covey server` running FedBuff in the middle of an update, resume it.

The deployed kill-and-resume matrix of ``tests/test_resume_matrix_deploy.py`` for the
asynchronous loop: a server process and four client processes (``resume_app``,
without TLS, on 127.0.0.1), the server killed with SIGKILL while an update's
clients train, resumed with ``covey server --resume`` while the clients
reconnect by themselves. The resumed run must go on from its last saved update:
every update recorded once, in order, its clock going on from the last saved
one. With a buffer of every client (``fedbuff-full``) each update is a FedAvg
round, so the final model and every update's record are those of FedAvg
simulated in this process (to rounding: replies are folded in arrival order).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _killmatrix import APPS, Federation, federations_in, outcome, saved_round, wait_for

sys.path.insert(0, str(APPS))
import resume_app

pytestmark = pytest.mark.slow
UPDATES = 6


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Any]:
    yield from federations_in(tmp_path, UPDATES)


def _killed_in_update(fed: Federation, update: int) -> None:
    """Start the run, SIGKILL its server while update ``update``'s clients train, resume it."""
    fed.start_server()
    fed.start_clients()
    wait_for(lambda: saved_round(fed.run_dir) >= update - 2, 60, f"update {update - 2} saved")
    wait_for(lambda: any(fed.markers.glob(f"fit-r{update}-k*")), 60, f"update {update}")
    fed.kill_server()
    assert saved_round(fed.run_dir) < UPDATES
    fed.start_server(resume=True)
    fed.finish()


def _assert_one_clock(rounds: list[dict[str, Any]], buffer_size: int) -> None:
    """Every update recorded once and in order, with a full buffer and a clock never going back."""
    assert [r["round"] for r in rounds] == list(range(UPDATES + 1))
    for record in rounds[1:]:
        assert len(record["fit_participants"]) == buffer_size, record
        assert len(set(record["fit_participants"])) == buffer_size, record
        assert record["failures"] == 0, record
        staleness = record["aggregate_info"]["staleness"]
        assert len(staleness) == buffer_size
        assert all(0 <= tau < record["round"] for tau in staleness), record
    clocks = [r["aggregate_info"]["clock"] for r in rounds[1:]]
    assert clocks == sorted(clocks)
    assert clocks[0] > 0


def test_fedbuff_with_a_full_buffer_killed_inside_an_update_resumes_to_fedavg(
    federation: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = federation("fedbuff-full", COVEY_RM_FIT_DELAY="0.3")
    _killed_in_update(fed, 4)
    weights, rounds = outcome(fed.run_dir)
    _assert_one_clock(rounds, fed.n)
    assert all(r["aggregate_info"]["staleness"] == [0] * fed.n for r in rounds[1:])
    assert "update 4: fit by " in fed.log("server.log")
    monkeypatch.setenv("COVEY_RM_STRATEGY", "fedavg")
    monkeypatch.delenv("COVEY_RM_MARKERS", raising=False)
    never_killed = covey.simulate(
        resume_app.client_fn,
        resume_app.num_clients(),
        UPDATES,
        resume_app.strategy("fedavg"),
        resume_app.initial(),
        resume_app.evaluate_fn,
        seed=3,
    )
    assert weights.keys() == never_killed.weights.keys()
    for name, want in never_killed.weights.items():
        np.testing.assert_allclose(weights[name], want, rtol=1e-12, atol=1e-12)
    for got, record in zip(rounds, never_killed.history.rounds, strict=True):
        assert sorted(got["fit_participants"]) == record.fit_participants, got["round"]
        assert got["fit_examples"] == record.fit_examples, got["round"]
        assert got["central_loss"] == pytest.approx(record.central_loss, rel=1e-12)


def test_fedbuff_killed_inside_an_update_keeps_one_clock(federation: Any) -> None:
    # Two of four clients train at once and two replies make an update: stale updates
    # come in across the resume, and the run is not deterministic, but the updates
    # and the clock go on from the last saved update, none recorded twice or lost.
    fed = federation("fedbuff", COVEY_RM_FIT_DELAY="0.2")
    _killed_in_update(fed, 4)
    _, rounds = outcome(fed.run_dir)
    _assert_one_clock(rounds, 2)
    log = fed.log("server.log")
    assert "Traceback" not in log, log[-3000:]
    # Both servers' lines count updates: "round 4: fit by ..." read as another clock.
    assert "update 4: fit by " in log
    assert "run finished after update 6" in log
    assert re.search(r"\bround \d", log) is None, log[-3000:]
