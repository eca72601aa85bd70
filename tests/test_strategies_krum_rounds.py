"""Krum-family rounds with fewer clients than the rule needs: said once, or sampled up to it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey

ROUNDS = 2


class Tagged(covey.Client):
    """Adds its own small step; reports whether it passes ``where={"big": True}``."""

    def __init__(self, cid: int, fits: list[tuple[int, int]]) -> None:
        self.cid, self.fits = cid, fits

    def properties(self) -> dict[str, Any]:
        return {"big": self.cid % 3 != 0}

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        self.fits.append((int(config["round"]), self.cid))
        return covey.FitResult(delta={"w": np.full(2, 1.0 + 0.01 * self.cid)}, num_examples=1)


def run(
    strategy: covey.Strategy, num_clients: int, **options: Any
) -> tuple[covey.sim.SimulationResult, list[tuple[int, int]]]:
    fits: list[tuple[int, int]] = []
    result = covey.simulate(
        lambda cid: Tagged(cid, fits),
        num_clients,
        ROUNDS,
        strategy,
        {"w": np.zeros(2)},
        **options,
    )
    return result, fits


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda **kw: covey.Krum(f=2, **kw), "Krum with f=2 needs at least 2f+3 = 7"),
        (lambda **kw: covey.MultiKrum(f=2, **kw), "Multi-Krum with f=2 needs at least 2f+3 = 7"),
        (lambda **kw: covey.Bulyan(f=1, **kw), "Bulyan with f=1 needs at least 4f+3 = 7"),
    ],
)
@pytest.mark.parametrize("saved", [False, True])
def test_a_round_with_too_few_eligible_clients_says_so_once_and_trains_none(
    make: Any, said: str, saved: bool, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # where= leaves 6 of 9 clients; the rule needs 7. Each round used to train the 6
    # and log an aggregation failure; with a run folder it still did (the checkpoint's
    # wrapper of the rule hid its need).
    strategy = make(where={"big": True}, fraction_evaluate=0.0)
    options = {"run_dir": tmp_path / "run"} if saved else {}
    with caplog.at_level(logging.WARNING, logger="covey"):
        result, fits = run(strategy, 9, **options)
    assert fits == []
    expected = f"{said} clients per round, but only 6 clients pass where="
    for rnd in range(1, ROUNDS + 1):
        record = result.history.rounds[rnd]
        assert not record.aggregated
        assert record.fit_participants == []
        assert expected in record.aggregate_info["error"]
        logged = [r for r in caplog.records if f"round {rnd}:" in r.getMessage()]
        assert len(logged) == 1, caplog.text
        assert expected in logged[0].getMessage()
        assert "the global model is unchanged" in logged[0].getMessage()
    assert "aggregation failed" not in caplog.text
    assert result.weights["w"].tolist() == [0.0, 0.0]


def test_a_fraction_that_picks_too_few_eligible_clients_samples_the_rules_need() -> None:
    # 8 of 12 clients pass where=; fraction_fit=0.5 picks 4 but Krum(f=1) needs 5: there
    # are enough, so the round samples 5 and aggregates.
    strategy = covey.Krum(f=1, where={"big": True}, fraction_fit=0.5, fraction_evaluate=0.0)
    result, fits = run(strategy, 12)
    for rnd in range(1, ROUNDS + 1):
        record = result.history.rounds[rnd]
        assert record.aggregated, record.aggregate_info
        assert len(record.fit_participants) == 5
        assert all(cid % 3 != 0 for cid in record.fit_participants)
        assert sorted(c for r, c in fits if r == rnd) == record.fit_participants
    assert result.weights["w"].tolist() != [0.0, 0.0]


def test_a_round_with_too_few_replies_names_the_rule_and_the_replies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Simulated availability: client 0 is offline in round 1, so 4 of the 5 sampled
    # clients reply and Krum(f=1) (5) cannot run; round 2 has all 5.
    trace = np.ones((5, 2), dtype=bool)
    trace[0, 0] = False
    strategy = covey.Krum(f=1, fraction_evaluate=0.0)
    with caplog.at_level(logging.WARNING, logger="covey"):
        result, _ = run(strategy, 5, availability=trace)
    first, second = result.history.rounds[1], result.history.rounds[2]
    expected = (
        "Krum with f=1 needs at least 2f+3 = 5 updates per round, but only 4 of the 5 "
        "sampled clients replied"
    )
    assert not first.aggregated
    assert expected in first.aggregate_info["error"]
    assert second.aggregated
    said = [r.getMessage() for r in caplog.records if expected in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert "aggregation failed" not in caplog.text


def test_a_fraction_below_the_rules_need_is_no_longer_refused_at_start() -> None:
    # fraction_fit=0.1 of 10 picks 2 (min_fit_clients); Krum(f=1) needs 5 and 10 are
    # there: every round trains 5, where simulate() used to refuse the run.
    strategy = covey.Krum(f=1, fraction_fit=0.1, fraction_evaluate=0.0)
    result, _ = run(strategy, 10)
    assert [len(r.fit_participants) for r in result.history.rounds[1:]] == [5] * ROUNDS
    assert all(r.aggregated for r in result.history.rounds[1:])


def test_a_served_round_with_fewer_clients_than_krum_needs_trains_none(tmp_path: Path) -> None:
    # Served with a run folder, Krum(f=1) and 4 clients: the server warned that such a
    # round trains none, yet each round trained all 4 and then failed to aggregate.
    from _live import Joined, Served

    fits: list[tuple[int, int]] = []
    strategy = covey.Krum(f=1, min_available_clients=4, fraction_evaluate=0.0)
    served = Served(strategy, ROUNDS, run_dir=tmp_path / "run", initial_weights={"w": np.zeros(2)})
    clients = [Joined(served.port, Tagged(k, fits), name=f"site-{k}") for k in range(4)]
    result = served.join(90)
    for client in clients:
        client.join()
    assert fits == []
    for rnd in range(1, ROUNDS + 1):
        record = result.history.rounds[rnd]
        assert record.fit_participants == []
        assert (
            "Krum with f=1 needs at least 2f+3 = 5 clients per round, but only 4"
            in (record.aggregate_info["error"])
        )
    assert result.weights["w"].tolist() == [0.0, 0.0]
