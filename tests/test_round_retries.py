"""``serve(round_retries=N)``: a round cut short by lost connections alone is run again.

A network outage, or the server's process paused past the heartbeat limit,
drops every client of a round at once; they reconnect seconds later. Before,
that round stopped the run (resumable only by hand). With ``round_retries``
the round is run again from the same model once enough clients are back;
any other failure still stops the run, and so does a round lost more often
than allowed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.core._history import Failure
from covey.deploy import tls_from_certs
from covey.deploy.certs import init_federation, issue_client, revoke
from covey.server._retry import RETRY_HINT
from covey.transport.grpc._registry import lost_connection

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Raw, Served

pytestmark = pytest.mark.timeout(120)


def _strategy() -> covey.Strategy:
    return covey.FedAvg(
        fraction_fit=1.0, min_fit_clients=1, min_available_clients=1, fraction_evaluate=0.0
    )


# A Raw client sends no heartbeats: a server missing three of them drops it, which on
# a loaded machine could happen before round 1 sends it a task.
RAW_HEARTBEAT = 10.0


def _drop_a_raw_client_in_round_1(port: int) -> None:
    """A client that takes round 1's task and loses its connection (the call cancelled)."""
    raw = Raw(port)
    task = raw.next_task()
    assert (task.kind, task.round) == ("fit", 1)
    raw.call.cancel()


def test_a_round_whose_clients_all_lost_their_connections_is_run_again(tmp_path: Path) -> None:
    served = Served(
        _strategy(), 2, round_retries=1, run_dir=tmp_path / "run", heartbeat=RAW_HEARTBEAT
    )
    _drop_a_raw_client_in_round_1(served.port)
    site = Joined(served.port, name="site")  # back, as a client reconnecting would be
    result = served.join()
    site.join()
    assert [r.round for r in result.history.rounds] == [0, 1, 2]
    assert result.history.stopped_reason is None
    first = result.history.rounds[1]
    assert first.aggregate_info["retried"] == [
        "round 1: 0 of 1 sampled clients replied, fewer than min_fit_clients=1; failures: "
        "raw: client disconnected"
    ]
    assert not first.fit_failures  # the attempt that counted lost no client
    np.testing.assert_array_equal(result.weights["w"], np.full(8, 2.0))
    # the run folder keeps the same history: resumable and shown as it ran
    kept = covey.History.load(tmp_path / "run")
    assert kept.rounds[1].aggregate_info["retried"] == first.aggregate_info["retried"]
    shown = CliRunner().invoke(app, ["runs", "show", str(tmp_path / "run")], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[-1] == (
        "round 1 was run again: round 1: 0 of 1 sampled clients replied, fewer than "
        "min_fit_clients=1; failures: raw: client disconnected"
    )


def test_without_retries_such_a_round_stops_the_run_as_before() -> None:
    served = Served(_strategy(), 2, heartbeat=RAW_HEARTBEAT)
    _drop_a_raw_client_in_round_1(served.port)
    with pytest.raises(covey.FederationError, match="raw: client disconnected") as caught:
        served.join()
    assert RETRY_HINT in caught.value.__notes__  # which `covey server` prints as a hint


class Broken(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        raise RuntimeError("no data today")


def test_a_round_that_fell_short_for_a_clients_error_is_not_run_again() -> None:
    served = Served(_strategy(), 2, round_retries=3)
    site = Joined(served.port, Broken(), name="site")
    with pytest.raises(covey.FederationError, match="no data today") as caught:
        served.join()
    site.join()
    history = caught.value.history
    assert [r.round for r in history.rounds] == [0, 1]
    assert "retried" not in history.rounds[1].aggregate_info
    assert RETRY_HINT not in getattr(caught.value, "__notes__", ())


def test_a_round_lost_more_often_than_allowed_stops_the_run() -> None:
    served = Served(_strategy(), 2, round_retries=1, heartbeat=RAW_HEARTBEAT)
    _drop_a_raw_client_in_round_1(served.port)
    _drop_a_raw_client_in_round_1(served.port)  # the retry is lost too
    with pytest.raises(covey.FederationError, match="raw: client disconnected") as caught:
        served.join()
    history = caught.value.history
    assert [r.round for r in history.rounds] == [0, 1]
    assert len(history.rounds[1].aggregate_info["retried"]) == 1
    assert history.stopped_reason is not None
    assert history.stopped_reason.startswith("round 1: 0 of 1 sampled clients replied")


class RevokedInFit(covey.Client):
    """Has its own certificate revoked in its first fit, and never replies to it."""

    def __init__(self, fed: Path, name: str, done: threading.Event) -> None:
        self.fed, self.name, self.done = fed, name, done
        self.fitting = threading.Event()

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        self.fitting.set()
        revoke(self.fed, self.name)  # the operator shuts the site out mid-round
        self.done.wait(60)  # the server drops it at its next heartbeat
        raise RuntimeError("the server should have dropped this client")


def test_a_round_cut_short_by_a_revoked_client_is_run_again_without_it(tmp_path: Path) -> None:
    # Revoking a site is how an operator shuts it out of a running federation; a
    # round that sampled it fell short and stopped the run, even with retries.
    fed = init_federation(tmp_path / "fed").directory
    names = ["a", "b", "c"]
    for name in names:
        issue_client(fed, name)
    strategy = covey.FedAvg(
        fraction_fit=1.0, min_fit_clients=2, min_available_clients=2, fraction_evaluate=0.0
    )
    served = Served(strategy, 2, certs=fed, round_retries=1)
    done = threading.Event()
    revoked = RevokedInFit(fed, "a", done)
    sites: list[Joined] = []
    try:
        for name in names:
            if name == "c":  # only once round 1 runs on "a" and "b": it falls short
                assert revoked.fitting.wait(30), "round 1 did not start"
            client = revoked if name == "a" else None
            tls = tls_from_certs(fed, name)
            # "a", shut out, gives up soon after the run is over
            sites.append(Joined(served.port, client, tls=tls, retry_for=1.0))
        result = served.join()
    finally:
        done.set()
        for site in sites:
            site.join()
    assert [r.round for r in result.history.rounds] == [0, 1, 2]
    retried = result.history.rounds[1].aggregate_info["retried"]
    assert len(retried) == 1
    assert "a: client certificate revoked" in retried[0]
    assert sorted(result.history.clients.values()) == names


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        ("client disconnected", True),
        ("client disconnected in the middle of its reply (5 of 9 bytes received)", True),
        ("client timed out (no heartbeat)", True),
        ("client replaced by a new connection", True),
        ("client lost its data connection (closed)", True),
        ("client certificate revoked", True),
        ("client certificate expired at 2026-01-02 03:04:05 UTC; issue the client a new one", True),
        ("client disconnected: it broke the protocol (a frame too large)", False),
        ("no reply in time", False),
        ("RuntimeError: disconnected", False),
    ],
)
def test_which_failures_are_lost_connections(error: str, lost: bool) -> None:
    assert lost_connection(Failure(0, "fit", error).error) is lost


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_round_retries_must_be_a_whole_number(bad: Any) -> None:
    with pytest.raises(ValueError, match="round_retries must be an int from 0 to 1,000,000,000"):
        covey.deploy.serve(_strategy(), 1, {"w": np.zeros(2)}, "127.0.0.1:0", round_retries=bad)


def test_an_asynchronous_run_waits_for_clients_gone_to_come_back() -> None:
    """FedBuff: every client gone at once (an outage, a paused server) is waited for.

    Before: the run stopped at once, "no client can be given a task: 0 eligible".
    """
    strategy = covey.FedBuff(buffer_size=1, min_available_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 2, heartbeat=RAW_HEARTBEAT)
    _drop_a_raw_client_in_round_1(served.port)
    site = Joined(served.port, name="site")
    result = served.join()
    site.join()
    assert [r.round for r in result.history.rounds] == [0, 1, 2]
    assert [f.error for f in result.history.rounds[1].fit_failures] == ["client disconnected"]
    np.testing.assert_array_equal(result.weights["w"], np.full(8, 2.0))


def test_an_asynchronous_run_whose_clients_do_not_come_back_stops_saying_so() -> None:
    strategy = covey.FedBuff(buffer_size=1, min_available_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 2, wait_timeout=1.0, heartbeat=RAW_HEARTBEAT)
    _drop_a_raw_client_in_round_1(served.port)
    with pytest.raises(covey.FederationError) as caught:
        served.join()
    assert str(caught.value) == (
        "update 1: 0 clients connected, fewer than min_available_clients=1, and no more came "
        "within 1.0 s"
    )


@pytest.mark.parametrize(
    ("args", "config"),
    [(["--round-retries", "-1"], None), ([], "[server]\nround_retries = 1.5\n")],
)
def test_covey_server_refuses_a_round_retries_that_is_no_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], config: str | None
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    monkeypatch.setenv("COLUMNS", "250")
    if config is not None:
        (tmp_path / "server.toml").write_text(config)
        args = ["--config", "server.toml"]
    result = CliRunner().invoke(
        app, ["server", "--app", "digits_app:server_app", "--insecure", *args]
    )
    assert result.exit_code == 2, result.output
    # A value from the file is named by its key there, one typed by its flag.
    named, got = (
        ("--round-retries", "-1")
        if config is None
        else ("server.round_retries in server.toml", "1.5")
    )
    assert result.output.strip().splitlines()[-1] == (
        f"error: {named} must be a whole number 0 or more, got {got}"
    )


def test_an_asynchronous_run_refuses_round_retries_before_listening() -> None:
    # FedBuff has no round to run again: the option used to be taken and ignored.
    strategy = covey.FedBuff(buffer_size=1, min_available_clients=1)
    listened: list[int] = []
    with pytest.raises(ValueError, match="leave round_retries") as caught:
        covey.deploy.serve(
            strategy,
            1,
            {"w": np.zeros(2)},
            "127.0.0.1:0",
            insecure=True,
            round_retries=2,
            on_listen=listened.append,
            wait_timeout=1.0,
        )
    assert str(caught.value).startswith(
        "round_retries=2 runs a synchronous round again, but FedBuff is asynchronous "
        "(buffer_size=1)"
    )
    assert listened == []
