"""A deployed federation of many small clients: limits that must agree before a run starts."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.core import Task
from covey.deploy import serve
from covey.transport.grpc._capacity import full_message
from covey.transport.grpc._server import GrpcServerTransport

sys.path.insert(0, str(Path(__file__).parent))
from _live import Events, Joined

pytestmark = pytest.mark.timeout(120)


def _until(condition: Any, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _weights() -> dict[str, np.ndarray]:
    return {"w": np.zeros(4)}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"min_available_clients": 5}, "min_available_clients=5"),
        ({"min_fit_clients": 4, "min_available_clients": 2}, "min_fit_clients=4"),
    ],
)
def test_a_strategy_needing_more_clients_than_the_server_takes_is_refused_at_once(
    options: dict[str, Any], named: str
) -> None:
    # It used to wait out wait_timeout (forever with None) while the clients it needed
    # were turned away as "the server is full", then blame the clients for not coming.
    strategy = covey.FedAvg(fraction_evaluate=0.0, **options)
    with pytest.raises(ValueError, match="max_clients=3") as caught:
        serve(strategy, 1, _weights(), "127.0.0.1:0", insecure=True, max_clients=3, wait_timeout=1)
    assert named in str(caught.value)


def test_a_robust_rule_no_round_can_satisfy_is_refused_and_one_few_may_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # With at most 4 clients connected, Krum(f=1) (5 per round) could never run: the
    # server used to wait for clients and then leave the model unchanged every round.
    strategy = covey.Krum(f=1, fraction_evaluate=0.0, min_fit_clients=2, min_available_clients=2)
    with pytest.raises(ValueError, match="Krum with f=1 needs at least 2f") as caught:
        serve(strategy, 1, _weights(), "127.0.0.1:0", insecure=True, max_clients=4, wait_timeout=1)
    assert "samples at most 4 (max_clients=4" in str(caught.value)
    # More clients joining may meet it: a warning at start, then the run goes on.
    with caplog.at_level(logging.WARNING, logger="covey"), pytest.raises(covey.FederationError):
        serve(strategy, 1, _weights(), "127.0.0.1:0", insecure=True, wait_timeout=0.5)
    warned = [r.getMessage() for r in caplog.records if "Krum with f=1" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "may start with the 2 clients it waits for" in warned[0]
    assert "leaves the model unchanged; raise min_available_clients to 5" in warned[0]


@pytest.mark.parametrize(
    ("make", "need"),
    [
        (lambda **kw: covey.Krum(f=1, **kw), 5),
        (lambda **kw: covey.MultiKrum(f=2, m=3, **kw), 7),
        (lambda **kw: covey.Bulyan(f=1, **kw), 7),
    ],
)
def test_a_robust_preset_waits_for_the_clients_its_rule_needs_and_warns_of_nothing(
    make: Any, need: int, caplog: pytest.LogCaptureFixture
) -> None:
    # With the strategy's default minimums (2), every deployed Krum(f=1) used to warn at
    # start that its rounds might sample too few clients, and a round that started with
    # 2 to 4 clients connected left the model unchanged.
    strategy = make(fraction_evaluate=0.0)
    assert strategy.min_available_clients == need
    assert strategy.min_fit_clients == 2  # a round short of replies keeps the model, as before
    with caplog.at_level(logging.WARNING, logger="covey"), pytest.raises(covey.FederationError):
        serve(strategy, 1, _weights(), "127.0.0.1:0", insecure=True, wait_timeout=0.3)
    assert "needs at least" not in caplog.text
    # A fraction that picks fewer is no matter: a round samples the need when it can.
    caplog.clear()
    few = make(fraction_evaluate=0.0, fraction_fit=0.5)
    with caplog.at_level(logging.WARNING, logger="covey"), pytest.raises(covey.FederationError):
        serve(few, 1, _weights(), "127.0.0.1:0", insecure=True, wait_timeout=0.3)
    assert "needs at least" not in caplog.text
    # What the user sets is kept, and warned of when short of the need.
    short = make(fraction_evaluate=0.0, min_available_clients=2)
    with caplog.at_level(logging.WARNING, logger="covey"), pytest.raises(covey.FederationError):
        serve(short, 1, _weights(), "127.0.0.1:0", insecure=True, wait_timeout=0.3)
    assert f"leaves the model unchanged; raise min_available_clients to {need}" in caplog.text
    assert make(min_available_clients=3).min_available_clients == 3
    # Too few clients allowed for the need: the rule is named, not min_available_clients.
    with pytest.raises(ValueError, match=f"needs at least .* = {need} clients per round"):
        serve(strategy, 1, _weights(), "127.0.0.1:0", insecure=True, max_clients=need - 1)


def test_an_asynchronous_robust_rule_whose_buffer_is_short_of_its_need_is_refused_at_once(
    tmp_path: Path,
) -> None:
    # Every update aggregates buffer_size replies, however many clients join: with
    # fewer than Krum needs, the server used to run every update as a logged no-op.
    strategy = covey.Strategy(
        aggregator=covey.aggregate.krum(1), buffer_size=4, fraction_evaluate=0.0, name="Async"
    )
    said = _refused_before_listening(strategy, tmp_path)
    assert "Krum with f=1 needs at least 2f" in said
    assert "buffer_size=4" in said


def test_a_buffer_above_max_clients_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    # An update needs buffer_size distinct clients' replies: with no more than
    # max_clients connected it fills only if clients leave and others take their places.
    strategy = covey.FedBuff(buffer_size=5, min_available_clients=1, fraction_evaluate=0.0)
    with caplog.at_level(logging.WARNING, logger="covey"), pytest.raises(covey.FederationError):
        serve(strategy, 1, _weights(), "127.0.0.1:0", insecure=True, max_clients=4, wait_timeout=1)
    warned = [r.getMessage() for r in caplog.records if "max_clients=4" in r.getMessage()]
    assert warned == [
        "FedBuff's buffer_size=5 exceeds max_clients=4: an update needs that many distinct "
        "clients' replies, more than the server takes at once, so it fills only if clients "
        "whose replies wait in the buffer leave and others take their places; raise "
        "max_clients (covey server --max-clients) or lower buffer_size"
    ]


def _refused_before_listening(strategy: covey.Strategy, tmp_path: Path) -> str:
    """Why ``serve`` refused ``strategy``; it neither listened nor made its run folder."""
    listened: list[int] = []
    with pytest.raises(ValueError) as caught:  # noqa: PT011 - the callers read the message
        serve(
            strategy,
            1,
            _weights(),
            "127.0.0.1:0",
            insecure=True,
            run_dir=tmp_path / "run",
            on_listen=listened.append,
            wait_timeout=1,
        )
    assert listened == []
    assert not (tmp_path / "run").exists()
    return str(caught.value)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_max_clients_that_is_no_count_of_clients_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="max_clients"):
        serve(
            covey.FedAvg(min_available_clients=1, min_fit_clients=1),
            1,
            _weights(),
            "127.0.0.1:0",
            insecure=True,
            max_clients=bad,  # type: ignore[arg-type]
            wait_timeout=1.0,
        )


def test_a_served_run_that_waits_for_no_client_is_refused_before_listening(
    tmp_path: Path,
) -> None:
    # It ran every round with no client connected ("fit by none") and ended "finished".
    said = _refused_before_listening(
        covey.FedAvg(min_available_clients=0, min_fit_clients=0), tmp_path
    )
    assert said.startswith(
        "min_available_clients=0 and min_fit_clients=0: each round would start with no client"
    )


def test_covey_server_takes_max_clients_and_refuses_one_below_the_apps_minimum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("COVEY_TINY_CLIENTS", "3")
    args = ["server", "--app", "tiny_app:server_app", "--insecure", "--address", "127.0.0.1:0"]
    result = CliRunner().invoke(app, [*args, "--max-clients", "2", "--wait-timeout", "1"])
    assert result.exit_code == 2, result.output  # a mistake no restart mends
    assert "min_available_clients=3" in result.output
    assert "max_clients=2" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert "covey server --max-clients" in full_message(2)  # what a full server tells
    result = CliRunner().invoke(app, [*args, "--max-clients", "0"])
    assert result.exit_code == 2, result.output
    assert "--max-clients must be a whole number above 0" in result.output


class _Gated(covey.Client):
    """Adds one to every weight once ``gate`` is set (a straggler until then)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        self.started.set()
        assert self.gate.wait(60), "the test never let the straggler go"
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def test_a_straggler_reply_that_starts_after_its_round_is_reported_as_late_not_cut_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # With hundreds of clients a round closes on many stragglers; each late reply was
    # logged as a WARNING that its round "closed with its reply 0 of N bytes in" (as if
    # cut mid-reply), on top of the round's own "no reply in time" line for the client.
    events = Events()
    transport = GrpcServerTransport("127.0.0.1:0", heartbeat=1.0, on_event=events)
    slow = _Gated()
    joined = Joined(transport.port, slow, name="slow")
    try:
        assert transport.wait_for_clients(1, 30)
        (cid,) = transport.clients()
        task = Task("fit", 1, {}, {"w": np.zeros(64)})
        with caplog.at_level(logging.INFO, logger="covey"):
            first = list(transport.exchange({cid: task}, timeout=0.5))
            assert [r.ok for r in first] == []  # the round closed without its reply
            assert slow.started.wait(30)  # its fit began (however late the round closed)
            slow.gate.set()
            assert _until(lambda: events.of("late-reply"))
            # The client is free again: the next round gets its reply.
            (second,) = transport.exchange({cid: Task("fit", 2, {}, {"w": np.zeros(64)})})
        assert second.ok, second.error
        (late,) = events.of("late-reply")
        assert late[0] == "slow"
        assert "after its round closed" in late[1], late
        assert "0 of" not in late[1], late
        said = [r for r in caplog.records if "late" in r.getMessage() or "closed" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert said[0].levelno == logging.INFO  # the round already warned: no reply in time
    finally:
        slow.gate.set()
        transport.close()
        joined.join(30)


class _Ok(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


class _Failing(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        raise RuntimeError("disk on fire")


def test_a_round_where_many_clients_fail_logs_a_few_by_name_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A line per failed client per round: 300 lines a round for a fleet that drops
    # out, and covey server's console (which names 10 and counts the rest) showed them too.
    def client_fn(cid: int) -> covey.Client:
        return _Failing() if cid >= 2 else _Ok()

    strategy = covey.FedAvg(min_fit_clients=2, fraction_evaluate=0.0)
    with caplog.at_level(logging.WARNING, logger="covey"):
        result = covey.simulate(client_fn, 40, 2, strategy, _weights(), backend="inline")
    assert all(len(r.fit_failures) == 38 for r in result.history.rounds[1:])
    lines = [r.getMessage() for r in caplog.records]
    named = [m for m in lines if "failed in fit: RuntimeError: disk on fire" in m]
    assert 1 <= len(named) <= 2 * 10, len(named)
    counted = [m for m in lines if "more clients failed in fit" in m]
    assert len(counted) == 2, lines
    assert all("28 more clients failed in fit" in m for m in counted), counted


def test_the_printed_resume_command_keeps_max_clients(served_flags: dict[str, Any]) -> None:
    # Resumed without it, a fleet of 1,500 went back to 1,000 slots: 500 turned away as full.
    base = ["server", "--app", "tiny_app:server_app", "--insecure", "--run-dir", "run"]
    result = CliRunner().invoke(app, [*base, "--max-clients", "1500"])
    assert result.exit_code == 0, result.output
    assert served_flags["max_clients"] == 1500
    assert "--max-clients 1500" in served_flags["resume_hint"]
    served_flags.clear()
    result = CliRunner().invoke(app, base)  # the default is not repeated
    assert result.exit_code == 0, result.output
    assert "--max-clients" not in served_flags["resume_hint"]
