"""Asynchronous federated learning (FedBuff): never wait for the slowest client.

The server keeps ``num_fit`` clients training at all times. Each reply's update
is folded into the aggregation chain as it arrives, tagged with its staleness
(how many new models global updates produced since the client's model was sent:
an update whose aggregation failed, the model unchanged, does not count); every
``buffer_size`` replies the chain's ``End`` produces a global update, and the
clients whose reply was used become free for new tasks. Nothing waits for a round.

The loop talks to clients through an :class:`~covey.transport.AsyncTransport`: ``submit``
a task to one client, then take replies one at a time with ``next_reply`` (see
:mod:`covey.transport._async` for the simulated and threaded implementations).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from covey.aggregate import Begin
from covey.aggregate._base import broadcast_extras
from covey.aggregate._scaffold import tracks_control
from covey.core._history import History, RoundRecord
from covey.core._messages import Config, Reply, Task
from covey.core._text import clients
from covey.core._weights import Weights
from covey.server._applied import SENT, AppliedRounds
from covey.server._base import EvaluateFn, FederationError, RoundCallback, _LoopBase
from covey.server._configs import client_configs, fit_config
from covey.server._idviews import Union, without
from covey.server._lasteval import evaluate_saved_last
from covey.server._passing import KeptWhere
from covey.server._refusednote import refusal_mark
from covey.server._retry import refused_note, timeout_hint
from covey.server._roundmetrics import RoundMetrics
from covey.server._waitenough import wait_enough
from covey.strategies._checks import chose_none, name_of, not_among, picked_ids, selected
from covey.strategies._clients import client_info
from covey.strategies._filters import eligibility
from covey.strategies._fold import refuse_dropped_at_begin
from covey.strategies._strategy import Strategy
from covey.transport._async import AsyncTransport

logger = logging.getLogger("covey")


@dataclass
class _Flight:
    kind: str
    version: int  # the model's: how many new models the run had produced when it was sent
    weights: Weights
    then_fit: bool = False  # a properties task of a client picked to train once it replies
    round: int = 0  # the update a fit task was sent in (its config's "round")


class AsyncLoop(_LoopBase):
    """Runs a FedBuff-style asynchronous strategy over an :class:`AsyncTransport`.

    Concurrency is ``strategy.num_fit(eligible)``: whenever fewer fit tasks are in
    flight, idle eligible clients are sampled (seeded) and sent the current model.
    A client whose update waits in the buffer gets no new task until the buffer is
    applied, so a buffer never holds two updates of one client (and with
    ``buffer_size`` equal to the number of clients the run is FedAvg's). A client
    whose task failed is given another in the same update only when no other
    client is training (an offline client would fail again at once). One
    :class:`~covey.core.RoundRecord` is written per global update, its round being the
    update's number; ``aggregate_info`` holds the updates' ``staleness`` and the
    ``clock``: seconds since training started, on the transport's clock (virtual in
    simulation), a resumed run going on from its last update's.

    Args:
        strategy: An asynchronous strategy (``buffer_size`` set), e.g. :func:`covey.FedBuff`.
        transport: How to reach the clients.
        initial_weights: The global model before the first update.
        evaluate_fn: ``(update, weights) -> (loss, metrics)``, run at 0 and after updates
            as the strategy's ``evaluate_every`` says (each, by default).
        seed: Seeds the choice of clients.
        task_timeout: Seconds (on the transport's clock) a client has for one task.
        idle_timeout: Seconds to wait for any reply before giving up (None: no limit).
        on_round: Called with each update's record.
    """

    _step = "update"
    _model = "the model"

    def __init__(
        self,
        strategy: Strategy,
        transport: AsyncTransport,
        initial_weights: Weights,
        *,
        evaluate_fn: EvaluateFn | None = None,
        seed: int = 0,
        task_timeout: float | None = None,
        idle_timeout: float | None = None,
        on_round: RoundCallback | None = None,
    ) -> None:
        if strategy.buffer_size is None:
            raise ValueError(
                "AsyncLoop needs an asynchronous strategy (buffer_size set), e.g. covey.FedBuff()"
            )
        super().__init__(
            strategy, initial_weights, evaluate_fn=evaluate_fn, seed=seed, on_round=on_round
        )
        self.buffer_size: int = strategy.buffer_size
        self.transport = transport
        self.task_timeout = task_timeout
        self.idle_timeout = idle_timeout
        self._flights: dict[int, _Flight] = {}
        self._buffered: set[int] = set()
        self._failed: set[int] = set()  # failed in this update: asked again only as a last resort
        self._owed: list[int] = []  # picked to train, their properties now in: a task is due
        self._training: set[int] = set()  # fit tasks in flight, and properties owed one
        # Simulated clients under where=: who passes, as reports come in, and the
        # (clients, update) whose new clients were last asked for their properties.
        self._where_kept = KeptWhere()
        self._scanned: tuple[Sequence[int], int] | None = None
        self._rng = np.random.default_rng([seed, 2])
        self._payload: dict[str, Weights] | None = None
        self._config: tuple[int, Config] | None = None
        self._eligible = 0
        self._declined = 0  # idle clients the selector chose none of, at its last call
        self._clock0 = 0.0
        # New models produced (updates whose aggregate was applied): the clock of staleness.
        self._models = 0
        self._applied = AppliedRounds()  # under SCAFFOLD, told to each client with its task

    # -- the run ------------------------------------------------------------------------

    def run(self, updates: int, *, start: int = 1) -> History:
        """Run until ``updates`` global updates have been applied; return the history.

        ``start`` is the first update to run: a resumed run passes the one after
        its last saved update (and has its model, history and state restored).

        Args:
            updates: The global updates the run makes in all (its ``rounds``).
            start: The first update to run, from 1.
        """
        self.last_round = updates
        if start <= 1 and not self._round_zero_done():  # a resumed run may have it saved
            record = RoundRecord(round=0)
            self._central(record)
            self._finish(record)
        if start > updates:  # resumed with no update left: its last one gets its evaluation
            evaluate_saved_last(self, updates, federated=False)
        version = max(0, start - 1)
        record = RoundRecord(round=version + 1)  # an update stopped before its end is kept
        try:
            self._wait_for_clients(version + 1)
            # The clock of the records counts seconds of the run: a transport's clock may
            # start anywhere (deployed, the host's monotonic clock); a resumed run goes on
            # from its last update's.
            clocks = [r.aggregate_info.get("clock") for r in self.history.rounds]
            last = [c for c in clocks if isinstance(c, (int, float))]
            self._clock0 = self.transport.now() - (float(last[-1]) if last else 0.0)
            while version < updates:
                version = self._one_update(version, record)
                record = RoundRecord(round=version + 1)
        except FederationError as exc:
            if version < updates:
                self._keep_stopped(record, exc)
            raise
        finally:
            for cid in list(self._flights):
                self.transport.cancel(cid)
            self._flights.clear()
            self._training.clear()
            self._buffered.clear()
            self._failed.clear()
            self._owed.clear()
        return self.history

    def _wait_for_clients(self, rnd: int) -> None:
        """Wait for enough clients before update ``rnd``, the run's first; else stop in it."""
        wanted = self.strategy.min_available_clients
        wait = getattr(self.transport, "wait_for_clients", None)
        mark = refusal_mark(self.transport)
        if wait is not None and not wait_enough(self.transport, wait, wanted, self.idle_timeout):
            raise self._fail(
                f"only {len(self.transport.clients())} of the {clients(wanted)} needed "
                f"(min_available_clients) connected within {self.idle_timeout} s"
                + refused_note(self.transport, mark),
                rnd,
            )
        if len(self.transport.clients()) < wanted:
            raise self._fail(
                f"{clients(len(self.transport.clients()))} available, fewer than "
                f"min_available_clients={wanted}" + refused_note(self.transport, mark),
                rnd,
            )

    def _wait_for_tasks(self, rnd: int) -> None:
        """No client can be given a task: wait for clients gone to come back, else stop.

        Clients gone (an outage, a pause of the server's process) leave fewer than
        ``min_available_clients`` connected: the run waits for them up to the idle
        time-out, as before its first update. With enough connected, every one is
        training or in the buffer already, and the run stops. Clients that come and
        leave again (phones) keep it waiting for the rest of the idle time-out in total.
        """
        wanted = self.strategy.min_available_clients
        wait = getattr(self.transport, "wait_for_clients", None)
        connected, note = len(self.transport.clients()), ""
        if wait is not None and connected < wanted:
            # A transport whose clients cannot come back (a simulation's) returns at once.
            mark = refusal_mark(self.transport)
            came = wait_enough(self.transport, wait, wanted, self.idle_timeout)
            if came and len(self.transport.clients()) >= wanted:
                logger.warning(
                    "update %d: %d of the %d clients needed were connected; went on once "
                    "enough were back",
                    rnd,
                    connected,
                    wanted,
                )
                return
            if not came:
                raise self._fail(
                    f"update {rnd}: {clients(len(self.transport.clients()))} connected, fewer "
                    f"than min_available_clients={wanted}, and no more came within "
                    f"{self.idle_timeout} s{refused_note(self.transport, mark)}",
                    rnd,
                )
            note = refused_note(self.transport, mark)  # they came, and too few were left
        if self._declined and self.strategy.selector is not None:
            selector = self.strategy.selector
            why = chose_none(selector, self._declined, rnd, self.buffer_size)
            raise self._fail(why + note, rnd)
        raise self._fail(
            f"update {rnd}: no client can be given a task: {self._eligible} eligible, "
            f"{len(self._buffered)} waiting in the buffer of buffer_size="
            f"{self.buffer_size} (the buffer needs that many distinct clients){note}",
            rnd,
        )

    def _begin(self, rnd: int, record: RoundRecord) -> tuple[Any, tuple[Any, ...]]:
        """Feed the chain update ``rnd``'s Begin: its new state and events.

        A Dropped among them stops the run: it would replace no contribution.
        """
        state, out = self.strategy.aggregator.feed(self.agg_state, Begin(rnd, self.weights))
        try:
            refuse_dropped_at_begin(out, rnd, self._step)
        except TypeError as exc:
            raise self._stop(rnd, record, "aggregation", exc) from exc
        return state, out

    def _one_update(self, version: int, record: RoundRecord) -> int:
        """Collect ``buffer_size`` updates on top of global update ``version``, apply them.

        ``record`` is the new update's (``version + 1``), kept in the history at its end.
        """
        strategy = self.strategy
        rnd = version + 1
        t0 = time.perf_counter()
        state, out = self._begin(rnd, record)
        self._payload = broadcast_extras(out)
        metrics = RoundMetrics("fit")
        staleness: list[int] = []
        sent: list[int] = []  # the round of each participant's task (SCAFFOLD's clients are told)
        dropped: list[int] = []
        failures_in_a_row = 0
        while len(self._buffered) < self.buffer_size:
            self._dispatch(version)
            if not self._flights:
                self._wait_for_tasks(rnd)  # or stop: no client can be given a task
                continue
            reply = self.transport.next_reply(self.idle_timeout)
            if reply is None:
                raise self._fail(f"no reply within {self.idle_timeout} s", rnd)
            flight = self._flights.pop(reply.cid, None)
            self._training.discard(reply.cid)
            if flight is None or flight.kind != reply.kind:
                logger.warning("dropping an unexpected reply from client %s", reply.cid)
                continue
            if reply.kind == "properties":
                self._took_properties(reply, flight, rnd)
                continue
            tau = self._models - flight.version  # an update that failed made no new model
            self._answering = (reply.cid, flight.round)  # a refusal names the task's update
            contribution = self._contribution(reply, record, staleness=tau, sent=flight.weights)
            contribution = metrics.admit(contribution, self._refuser(record), record.fit_failures)
            too_stale = strategy.max_staleness is not None and tau > strategy.max_staleness
            if contribution is not None and not too_stale:
                state, folded = self._fold_or_stop(state, contribution, record)
                contribution = contribution if folded else None
            if contribution is None:
                failures_in_a_row += 1
                self._failed.add(reply.cid)
                if not strategy.accept_failures:
                    self.history.rounds.append(record)
                    raise self._fail(
                        f"update {rnd}: client {reply.cid} failed and accept_failures=False: "
                        + record.fit_failures[-1].error,
                        rnd,
                    )
                if failures_in_a_row > 2 * max(self._eligible, 1) + 10:
                    self.history.rounds.append(record)
                    late = record.fit_failures[-failures_in_a_row:]
                    hint = timeout_hint(late, self.task_timeout, self.timeout_setting)
                    raise self._fail(
                        f"update {rnd}: {failures_in_a_row} replies in a row failed; last: "
                        + record.fit_failures[-1].error
                        + (f"; {hint}" if hint else ""),
                        rnd,
                    )
                continue
            if too_stale:
                dropped.append(reply.cid)
                reply.release()
                continue
            failures_in_a_row = 0
            self._buffered.add(reply.cid)
            record.fit_participants.append(reply.cid)
            record.fit_examples += contribution.num_examples
            metrics.append((contribution.num_examples, contribution.metrics))
            staleness.append(tau)
            sent.append(flight.round)
            contribution = None
            reply.release()  # folded: a reply kept in a file is unmapped now
        record.fit_metrics = strategy.combined_metrics("fit", metrics, rnd) if metrics else {}
        record.aggregate_info["staleness"] = staleness
        self._note_sent(record, sent)
        if dropped:
            record.aggregate_info["too_stale"] = dropped
        self._apply(state, rnd, record)
        self._buffered.clear()
        self._failed.clear()
        # A transport's own clock may count in NumPy numbers: kept as history.json reads it.
        record.aggregate_info["clock"] = float(self.transport.now() - self._clock0)
        record.durations["fit"] = time.perf_counter() - t0
        _central_timed(self, record)
        record.durations["total"] = time.perf_counter() - t0
        self._finish(record)
        return rnd

    def _note_sent(self, record: RoundRecord, sent: list[int]) -> None:
        """Under SCAFFOLD, list the round of each participant's task in the update's record.

        Its clients are told the round of the task whose reply an applied update
        took, read from the history (see :mod:`covey.server._applied`).
        """
        if tracks_control(self.strategy.aggregator):
            record.aggregate_info[SENT] = sent

    def _apply(self, state: Any, rnd: int, record: RoundRecord) -> None:
        """Apply the update's aggregate; count the new model if one was produced.

        An update whose aggregation failed (the model unchanged) makes no update
        after it staler: staleness counts the models clients trained from.
        """
        super()._apply(state, rnd, record)
        if record.aggregated:
            self._models += 1

    def _took_properties(self, reply: Reply, flight: _Flight, rnd: int) -> None:
        """Keep a client's properties; one picked to train is owed its task now."""
        self._store_properties(reply, rnd)
        self._where_kept.reported(reply.cid, self.properties)
        if flight.then_fit:
            self._owed.append(reply.cid)

    # -- who trains next ----------------------------------------------------------------

    def _dispatch(self, version: int) -> None:
        strategy = self.strategy
        rnd = version + 1
        available = self.transport.clients()
        eligible: Sequence[int] | None = None
        if eligibility(strategy) is None:
            eligible = available  # not copied: a federation may have 100,000s of clients
            count = len(available)
        elif isinstance(available, range) and self._joins() is None:
            count = self._where_simulated(available, rnd)
        else:  # deployed: clients come and go, each dispatch looks at them all
            self._ask_where(available, rnd)
            eligible = strategy.eligible(available, self.properties)
            count = len(eligible)
        self._eligible = count
        # Training, or picked to train and asked for its properties first (owed a task).
        busy = len(self._training) + len(self._owed)
        free = strategy.client_count("fit", count) - busy
        if free > 0 and eligible is None:
            eligible = self._where_kept.passing()  # not copied: picked from by a view
        self._declined = 0  # set again if the selector chooses none of the idle clients
        chosen = self._pick(eligible, free, busy, rnd) if free > 0 and eligible else []
        owed, self._owed = self._owed, []
        if not chosen and not owed:
            return
        if self._config is None or self._config[0] != rnd:
            self._config = (rnd, fit_config(self, rnd))
        task = Task("fit", rnd, self._config[1], self.weights, self._payload)
        configs = None
        if strategy.sends_client_configs("fit"):
            # Only the clients picked are asked for their properties: each trains once
            # they are in (or failed to come), as a round asks its sampled clients.
            unasked = set(self._unasked(chosen, rnd))
            for cid in sorted(unasked):
                self._flights[cid] = _Flight("properties", self._models, self.weights, True)
                self._training.add(cid)
                self.transport.submit(cid, Task("properties", rnd))
            chosen = sorted(owed + [cid for cid in chosen if cid not in unasked])
            clients = client_info(chosen, self.properties, self.client_names)
            configs = client_configs(strategy, "fit", rnd, dict(task.config), clients)
        tasks = {
            cid: task
            if configs is None
            else Task("fit", rnd, configs[cid], task.weights, task.payload)
            for cid in chosen
        }
        # Under SCAFFOLD, which of its replies an applied update took (see _applied).
        tasks = self._applied.told(strategy.aggregator, tasks, self.history)
        for cid in chosen:
            self._flights[cid] = _Flight("fit", self._models, self.weights, round=rnd)
            self._training.add(cid)
            self.transport.submit(cid, tasks[cid], timeout=self.task_timeout)

    def _ask_where(self, cids: Sequence[int], rnd: int) -> None:
        """Ask the clients of ``cids`` whose properties ``where`` needs and are not in yet."""
        for cid in self._unasked(cids, rnd):
            if cid not in self._flights:
                self._flights[cid] = _Flight("properties", self._models, self.weights)
                self.transport.submit(cid, Task("properties", rnd))

    def _where_simulated(self, available: range, rnd: int) -> int:
        """How many simulated clients pass ``where``, asking new ones for their properties.

        Simulated clients never connect again: each is judged once, when its
        properties come in, and those still to report are asked once per update,
        so an update costs what its clients cost, not a look at every client.
        ``where`` replaced, or a dict ``where`` changed, judges them all again.
        """
        kept = self._where_kept
        if self._scanned != (available, rnd):
            self._scanned = (available, rnd)
            if len(self.properties) < len(available):
                self._ask_where(kept.unreported(available, self.properties), rnd)
        kept.judge(self.strategy, available, self.properties)
        return kept.count

    def _pick(self, eligible: Sequence[int], free: int, busy: int, rnd: int) -> list[int]:
        """Up to ``free`` idle clients of ``eligible`` to give a task, sorted (seeded).

        O(free) for a range of clients: the idle ones are not listed.
        """
        strategy = self.strategy
        # Not copied into one set: under where= every client may have a task in flight.
        taken = Union(self._flights, self._buffered, self._owed)
        idle = without(eligible, taken)
        # A client that failed in this update (offline, say) is asked again only when
        # no other client is training: retrying it at once would fail at once.
        if self._failed:
            fresh = without(
                eligible, Union(self._flights, self._buffered, self._owed, self._failed)
            )
            idle = fresh if len(fresh) or busy else idle
        if not len(idle):
            return []
        if strategy.selector is not None:
            chosen = selected(strategy.selector, idle, rnd, self._rng, "update")
            picked = picked_ids(strategy.selector, chosen, rnd, "update")
            unknown = not_among(picked, idle)
            if unknown:
                raise ValueError(
                    f"selector {name_of(strategy.selector)} chose clients that are not idle: "
                    f"{sorted(unknown)}"
                )
            self._declined = 0 if picked else len(idle)
            return sorted(picked[:free])
        if free >= len(idle):
            return list(idle)
        return sorted(int(idle[i]) for i in self._rng.choice(len(idle), free, replace=False))


def _central_timed(loop: _LoopBase, record: RoundRecord) -> None:
    """Run ``loop``'s ``evaluate_fn`` on the update, timed only if it ran (not due: no entry)."""
    t0 = time.perf_counter()
    if loop._central(record):
        record.durations["central"] = time.perf_counter() - t0
