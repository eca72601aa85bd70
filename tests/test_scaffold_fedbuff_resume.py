"""SCAFFOLD under FedBuff, its server killed before an update's checkpoint committed.

An update's checkpoint is written while the next update's clients train, so a
client whose reply update ``u`` took may be told so (``scaffold_applied_round``,
the round of its task) and keep its change of ``c_i`` before the server dies
with ``u`` unsaved. The resumed server's ``c`` never took that change. A
synchronous round sent again rewinds the client (its task names a round it
trained in), but a stale reply's task was sent in an update before ``u``, one
the resumed run does not send again: the client kept the change, and ``c`` was
off by it, ``Delta c_i / N``, for the rest of the run. The resumed server tells
the client the last round its saved history applied, and the client drops what
it kept of any later one.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

import covey
from covey import clients
from covey.aggregate import chain, scaffold, staleness_weight, weighted_mean
from covey.core import Reply
from covey.core._history import History, RoundRecord
from covey.server import AsyncLoop
from covey.sim import inline_transport
from covey.transport import SimulatedAsyncTransport

N = 4
UPDATES = 10
MODEL = {"w": np.zeros(3), "b": np.zeros(2)}
DURATIONS = [1.0, 2.5, 1.5, 4.0]


class Drifting(covey.Client):
    """Steps towards its own target with SCAFFOLD's correction."""

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.control = clients.ControlVariate()

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        correction = self.control.correction(weights, config)
        w = {k: np.array(v) for k, v in weights.items()}
        for _ in range(3):
            for k in w:
                w[k] -= 0.1 * ((w[k] - (self.cid + 1.0)) + correction[k])
        return self.control.fit_result(w, num_examples=1, steps=3, lr=0.1)


class Killed(Exception):
    """The server process dying."""


class Dying(SimulatedAsyncTransport):
    """Dies, once ``armed``, as the loop waits for a reply: every task sent is computed then.

    A deployed client trains as soon as its task comes, the server's death aside.
    """

    armed = False

    def next_reply(self, timeout: float | None = None) -> Reply | None:
        if not self.armed:
            return super().next_reply(timeout)
        for cid, pending in list(self._pending.items()):
            if pending.reply is None and not pending.timed_out:
                self._compute(cid)
        raise Killed


def _strategy() -> covey.Strategy:
    return covey.Strategy(
        aggregator=chain(scaffold(N), staleness_weight(), weighted_mean()),
        buffer_size=2,
        fraction_fit=0.0,
        min_fit_clients=N,
        fraction_evaluate=0.0,
    )


def _loop(built: dict[int, Drifting], transport_type: type[SimulatedAsyncTransport]) -> Any:
    def client_fn(cid: int) -> Drifting:
        return built.setdefault(cid, Drifting(cid))

    transport = transport_type(inline_transport(client_fn, N), durations=DURATIONS)
    return AsyncLoop(_strategy(), transport, MODEL, seed=5)


def _last_applied(history: History) -> dict[int, int]:
    """For each client, the round of the task whose reply the last applied update took."""
    last: dict[int, int] = {}
    for record in history.rounds:
        if record.aggregated and "scaffold_overflow" not in record.aggregate_info:
            sent = record.aggregate_info.get("scaffold_sent", [])
            for cid, rnd in zip(record.fit_participants, sent, strict=True):
                last[cid] = max(rnd, last.get(cid, 0))
    return last


def _assert_c_is_the_mean_of_the_c_i(loop: Any, built: dict[int, Drifting]) -> None:
    """``c`` is the clients' ``c_i`` over N, a change still pending counted if ``c`` took it."""
    applied = _last_applied(loop.history)
    c = loop.agg_state[0].c
    total = {k: np.zeros_like(v) for k, v in MODEL.items()}
    for cid, client in built.items():
        control = client.control
        pending = control._pending
        value = pending[1] if pending is not None and pending[0] == applied.get(cid) else None
        value = control.value if value is None else value
        assert value is not None
        for k in total:
            total[k] += value[k]
    for k in total:
        np.testing.assert_allclose(c[k], total[k] / N, rtol=0, atol=1e-12, err_msg=k)


def _stale_update(history: History) -> int:
    """An update that took a reply to a task sent in an earlier update."""
    for record in history.rounds[1:]:
        if any(rnd < record.round for rnd in record.aggregate_info["scaffold_sent"]):
            return record.round
    raise AssertionError("no update took a stale reply")


def test_c_stays_the_mean_of_the_c_i_when_fedbuff_resumes_before_a_stale_update_was_saved() -> None:
    built: dict[int, Drifting] = {}
    whole = _loop(built, SimulatedAsyncTransport)
    whole.run(UPDATES)
    _assert_c_is_the_mean_of_the_c_i(whole, built)
    lost = _stale_update(whole.history)
    assert 1 < lost < UPDATES - 1

    built = {}
    saved: list[tuple[History, Any, Any]] = []

    def on_round(record: RoundRecord) -> None:
        # The checkpoint of update u: the loop's history, model and state once it ends.
        saved.append((copy.deepcopy(dying.history), dying.weights, dying.agg_state))
        if record.round == lost:  # its save in flight: the server dies before it commits
            transport.armed = True

    dying = _loop(built, Dying)
    dying.on_round = on_round
    transport = dying.transport
    try:
        dying.run(UPDATES)
    except Killed:
        pass
    else:
        raise AssertionError("the server did not die")
    history, weights, state = saved[lost - 1]  # update lost - 1: the last checkpoint committed
    assert history.rounds[-1].round == lost - 1

    resumed = _loop(built, SimulatedAsyncTransport)
    resumed.weights, resumed.history, resumed.agg_state = weights, history, state
    resumed.run(UPDATES, start=lost)
    assert [r.round for r in resumed.history.rounds] == list(range(UPDATES + 1))
    _assert_c_is_the_mean_of_the_c_i(resumed, built)
