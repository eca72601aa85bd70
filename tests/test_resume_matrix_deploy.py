"""SIGKILL a real `covey server` at a chosen moment, resume it: the bits of a run never killed.

Each test starts a server process and four client processes (``resume_app``,
without TLS, on 127.0.0.1), kills the server with SIGKILL at one moment of the
run (inside a round, inside the central evaluation, at a seeded random
time), resumes it with ``covey server --resume`` while the clients reconnect
by themselves, and compares the final model bit for bit, and every round's
record (participants, metrics, losses, epsilon), with the same federation
simulated in this process, which gives the bits of a deployed run never
interrupted. The wider matrix of strategies and moments runs from
``tests/_killmatrix.py``.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import covey
from _killmatrix import APPS, Federation, federations_in, outcome, same, saved_round, wait_for

sys.path.insert(0, str(APPS))
import resume_app

pytestmark = pytest.mark.slow
ROUNDS = 5


@pytest.fixture
def federations(tmp_path: Path) -> Iterator[Any]:
    yield from federations_in(tmp_path, ROUNDS)


def _never_killed(strategy: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[Any]]:
    """The simulated run: the final weights and history of the run never interrupted."""
    monkeypatch.setenv("COVEY_RM_STRATEGY", strategy)
    monkeypatch.delenv("COVEY_RM_MARKERS", raising=False)
    result = covey.simulate(
        resume_app.client_fn,
        resume_app.num_clients(),
        ROUNDS,
        resume_app.strategy(strategy),
        resume_app.initial(),
        resume_app.evaluate_fn,
        seed=3,
        compression=resume_app.compression(strategy),
    )
    return dict(result.weights), result.history.to_dict()["rounds"]


def _resumed(fed: Federation) -> None:
    fed.kill_server()
    fed.start_server(resume=True)
    fed.finish()


def _assert_same_run(fed: Federation, expected: tuple[Any, list[Any]]) -> None:
    weights, rounds = outcome(fed.run_dir)
    want_weights, want_rounds = expected
    assert same(weights, want_weights), fed.log("server.log")[-3000:]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    for got, want in zip(rounds, want_rounds, strict=True):
        for key in ("fit_participants", "fit_metrics", "central_loss", "privacy"):
            assert got[key] == want[key], (got["round"], key)
        assert got["failures"] == 0, got


def test_scaffold_killed_inside_a_round_resumes_to_the_same_bits(
    federations: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clients have updated their control variates in round 3 when the server dies.
    fed = federations("scaffold", COVEY_RM_FIT_DELAY="0.3")
    fed.start_server()
    fed.start_clients()
    wait_for(lambda: all(fed.marker(f"fit-r3-k{k}") for k in range(fed.n)), 60, "round 3")
    _resumed(fed)
    _assert_same_run(fed, _never_killed("scaffold", monkeypatch))


def test_top_k_killed_inside_the_central_evaluation_resumes_to_the_same_bits(
    federations: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Round 3 is aggregated, and its checkpoint not yet written, when the server dies.
    fed = federations("topk", COVEY_RM_EVAL_DELAY="0.5")
    fed.start_server()
    fed.start_clients()
    wait_for(lambda: fed.marker("central-r3"), 60, "round 3's evaluation")
    _resumed(fed)
    _assert_same_run(fed, _never_killed("topk", monkeypatch))


def test_central_dp_killed_at_a_random_moment_spends_the_same_epsilon(
    federations: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FedAdam's moments and the privacy ledger both continue; epsilon is never reset
    # nor charged twice for a round run again.
    fed = federations("dpadam", COVEY_RM_FIT_DELAY="0.1")
    fed.start_server()
    fed.start_clients()
    wait_for(lambda: saved_round(fed.run_dir) >= 1, 60, "round 1")
    rnd = random.Random(11).randint(2, ROUNDS)  # seeded: the same moment on every run
    wait_for(lambda: any(fed.markers.glob(f"fit-r{rnd}-k*")), 60, f"round {rnd}")
    _resumed(fed)
    expected = _never_killed("dpadam", monkeypatch)
    _assert_same_run(fed, expected)
    epsilons = [r["privacy"]["epsilon"] for r in outcome(fed.run_dir)[1][1:]]
    assert epsilons == sorted(epsilons)
    assert len(set(epsilons)) == ROUNDS


def test_sampling_resumes_the_same_even_with_clients_killed_during_the_resume(
    federations: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fraction_fit=0.5: the resumed server must sample the clients the first run
    # sampled, while two client processes die and are started again (as a
    # supervisor does) just as it comes back.
    fed = federations("sampled", COVEY_RM_FIT_DELAY="0.2")
    fed.start_server()
    fed.start_clients()
    wait_for(lambda: any(fed.markers.glob("fit-r3-k*")), 60, "round 3")
    fed.kill_server()
    fed.start_server(resume=True)
    for k in (1, 2):
        fed.clients[k].kill()
        fed.clients[k].wait(10)
        fed.start_client(k)
    fed.finish()
    _assert_same_run(fed, _never_killed("sampled", monkeypatch))
