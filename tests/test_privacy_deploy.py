"""A DP run over the real gRPC transport gives the same model as the same run simulated."""

from __future__ import annotations

import logging
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import privacy
from covey.deploy import connect, serve

sys.path.insert(0, str(Path(__file__).parent / "apps"))
import digits_app

pytestmark = pytest.mark.slow

CLIENTS = 6
ROUNDS = 3


def _strategy() -> covey.Strategy:
    return privacy.central(
        covey.FedAvg(
            fraction_fit=0.5,
            min_fit_clients=0,
            fraction_evaluate=0.0,
            min_available_clients=CLIENTS,
        ),
        noise_multiplier=0.8,
        clip=0.5,
        delta=1e-4,
        adaptive=privacy.AdaptiveClipping(count_stddev=1.0),
        noise_seed=7,
    )


class _Joins(logging.Handler):
    """Counts clients joining the in-process server, so they join one at a time, in order."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("client ") and " joined as " in record.getMessage():
            with self.changed:
                self.count += 1
                self.changed.notify_all()


def _joined(joins: _Joins, k: int) -> bool:
    return joins.count > k


def _deployed(
    rounds: int = ROUNDS, run_dir: Path | None = None, resume: bool = False
) -> covey.deploy.ServeResult:
    port: list[int] = []
    listening = threading.Event()
    result: list[Any] = []
    joins = _Joins()
    log = logging.getLogger("covey")
    old_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(joins)

    def on_listen(p: int) -> None:
        port.append(p)
        listening.set()

    def server() -> None:
        result.append(
            serve(
                _strategy(),
                rounds,
                digits_app.initial(),
                "127.0.0.1:0",
                insecure=True,
                run_dir=run_dir,
                resume=resume,
                wait_timeout=60,
                round_timeout=60,
                on_listen=on_listen,
            )
        )

    threads = [threading.Thread(target=server)]
    try:
        threads[0].start()
        assert listening.wait(30)
        for k in range(CLIENTS):
            t = threading.Thread(
                target=connect,
                args=(digits_app.DigitsClient(k, CLIENTS), f"127.0.0.1:{port[0]}"),
                kwargs={"insecure": True, "name": f"site-{k}"},
            )
            t.start()
            threads.append(t)
            with joins.changed:  # client k is given id k
                assert joins.changed.wait_for(partial(_joined, joins, k), timeout=30)
        for t in threads:
            t.join(120)
            assert not t.is_alive()
    finally:
        log.removeHandler(joins)
        log.setLevel(old_level)
    served: covey.deploy.ServeResult = result[0]
    return served


def test_dp_over_grpc_with_a_seed_equals_the_simulation() -> None:
    deployed = _deployed()
    simulated = covey.simulate(
        lambda cid: digits_app.DigitsClient(cid, CLIENTS),
        CLIENTS,
        ROUNDS,
        _strategy(),
        digits_app.initial(),
        seed=123,  # the explicit noise seed, not the run's seed, drives noise and sampling
    )
    for rnd in range(1, ROUNDS + 1):
        assert deployed.history[rnd].fit_participants == simulated.history[rnd].fit_participants
        assert deployed.history[rnd].privacy == simulated.history[rnd].privacy
        assert deployed.history[rnd].privacy is not None
    assert sum(len(r.fit_participants) for r in deployed.history.rounds) >= 3
    for name in simulated.weights:
        np.testing.assert_allclose(deployed.weights[name], simulated.weights[name], atol=1e-12)
    noise_free = covey.simulate(
        lambda cid: digits_app.DigitsClient(cid, CLIENTS),
        CLIENTS,
        ROUNDS,
        covey.FedAvg(fraction_evaluate=0.0),
        digits_app.initial(),
    )
    assert not np.allclose(noise_free.weights["W"], simulated.weights["W"])


def test_a_resumed_dp_run_continues_its_ledger(tmp_path: Path) -> None:
    first = _deployed(rounds=2, run_dir=tmp_path / "run")
    assert first.history[2].privacy is not None
    resumed = _deployed(rounds=4, run_dir=tmp_path / "run", resume=True)
    simulated = covey.simulate(
        lambda cid: digits_app.DigitsClient(cid, CLIENTS),
        CLIENTS,
        4,
        _strategy(),
        digits_app.initial(),
    )
    assert resumed.history[4].aggregate_info["dp"]["rounds"] == 4
    for rnd in (3, 4):
        spent = resumed.history[rnd].privacy
        before = first.history[2].privacy
        assert spent == simulated.history[rnd].privacy
        assert spent is not None
        assert before is not None
        assert spent["epsilon"] > before["epsilon"]
    for name in simulated.weights:
        np.testing.assert_allclose(resumed.weights[name], simulated.weights[name], atol=1e-12)
