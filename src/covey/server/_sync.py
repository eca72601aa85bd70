"""The round loop: steps 0-5 of federated learning, over any transport.

step 0 the initial global weights; step 1 sample clients and send them the
model; step 2-3 clients train and reply; step 4 aggregate; step 5 repeat.
Evaluation runs centrally (``evaluate_fn`` on the server) and federated
(evaluate tasks on a sample of clients). The loop never imports a network
library: it talks to clients only through a :class:`~covey.transport.Transport`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from covey.aggregate import Begin
from covey.aggregate._base import broadcast_extras, min_contributions, run_hooks
from covey.core._history import Failure, History, RoundRecord, lacks_evaluate
from covey.core._messages import Reply, Task
from covey.core._recordvalues import settle, written
from covey.core._weights import Weights
from covey.server._applied import AppliedRounds
from covey.server._base import EvaluateFn, FederationError, RoundCallback, _LoopBase
from covey.server._cidorder import in_cid_order as in_cid_order
from covey.server._configs import client_configs, evaluate_config, fit_config
from covey.server._direct import fit_directly
from covey.server._evalreplies import take_evaluations
from covey.server._lasteval import evaluate_saved_last
from covey.server._means import weighted_loss
from covey.server._passing import KeptWhere, wait_for_eligible
from covey.server._refusednote import refusal_mark
from covey.server._retry import (
    RoundRetries,
    deadline_hint,
    failures_said,
    refused_note,
    run_retried,
    shortfall,
)
from covey.server._roundmetrics import RoundMetrics
from covey.server._waitenough import wait_enough
from covey.strategies._checks import clients, clients_there, poisson_note, stop_reason
from covey.strategies._clients import client_info
from covey.strategies._filters import eligibility, too_few_to_fit, trains_none
from covey.strategies._fitround import FitOutcome, outcome_info, outcome_metrics
from covey.strategies._fold import refuse_dropped_at_begin
from covey.strategies._strategy import Strategy
from covey.transport._base import Transport

__all__ = ["EvaluateFn", "FederationError", "RoundCallback", "RoundLoop", "in_cid_order"]

logger = logging.getLogger("covey")


class RoundLoop(_LoopBase):
    """Runs rounds of a strategy over a transport and keeps the global model and history.

    Args:
        strategy: What to do each round.
        transport: How to reach the clients.
        initial_weights: The global model before round 1 (step 0).
        evaluate_fn: ``(round, weights) -> (loss, metrics)`` run on the server at
            round 0 and after rounds as ``strategy.evaluate_every`` says, or None.
        seed: Seeds client sampling; the same seed samples the same clients.
        round_timeout: Seconds a round's clients have to reply (None: no limit).
        wait_timeout: Seconds to wait for ``min_available_clients`` to connect
            before a round, on transports where clients come and go.
        on_round: Called with each finished :class:`RoundRecord` (progress, logging).
        simulated: Whether the clients are simulated: the strategy's run hooks then
            get ``seed`` as the run's seed (None when deployed).
    """

    def __init__(
        self,
        strategy: Strategy,
        transport: Transport,
        initial_weights: Weights,
        *,
        evaluate_fn: EvaluateFn | None = None,
        seed: int = 0,
        round_timeout: float | None = None,
        wait_timeout: float | None = None,
        on_round: RoundCallback | None = None,
        simulated: bool = False,
    ) -> None:
        super().__init__(
            strategy, initial_weights, evaluate_fn=evaluate_fn, seed=seed, on_round=on_round
        )
        self.transport = transport
        self.round_timeout = round_timeout
        self.wait_timeout = wait_timeout
        self.simulated = simulated
        self.retries: RoundRetries | None = None  # serve(round_retries=...) sets it
        self._applied = AppliedRounds()  # under SCAFFOLD, told to each client with its task
        self._where_kept = KeptWhere()

    # -- the whole run ---------------------------------------------------------------

    def run(self, rounds: int, *, start: int = 1) -> History:
        """Run rounds ``start..rounds`` (round 0's central evaluation first if start is 1).

        A run hook of the strategy may stop the run before a round: the rounds done
        are kept and ``history.stopped_reason`` says why.

        Args:
            rounds: The last round to run.
            start: The first round to run (a resumed run: the one after its last saved).
        """
        hooks = run_hooks(self.strategy.hooks, self.strategy.aggregator)
        self.last_round = rounds
        for hook in hooks:
            self.agg_state = hook.start(
                self.agg_state, self.seed if self.simulated else None, self.history
            )
        if start == 1 and not self._round_zero_done():  # a resumed run may have it saved
            record = RoundRecord(round=0)
            self._central(record)
            self._finish(record)
        for rnd in range(start, rounds + 1):
            reason = stop_reason(hooks, rnd, self.agg_state)
            if reason is not None:
                logger.info("stopping before round %d: %s", rnd, reason)
                self.history.stopped_reason = reason
                break
            if self.retries is None or self.retries.times == 0:
                self.run_round(rnd)
            else:
                run_retried(self, rnd, self.retries)
        if start > rounds:  # resumed with no round left: its last one gets its evaluation
            evaluate_saved_last(self, rounds)
        for hook in hooks:
            hook.finish(self.history, self.agg_state)
        return self.history

    def run_round(self, rnd: int, *, retried: Sequence[str] = ()) -> RoundRecord:
        """Run one round: fit, aggregate, evaluate; return its record.

        ``retried`` says why earlier attempts at this round were given up (see
        :mod:`covey.server._retry`); the record keeps it in ``aggregate_info``.

        Args:
            rnd: The round number, from 1.
            retried: Why each earlier attempt at this round was given up (none: empty).
        """
        record = RoundRecord(round=rnd)
        if retried:
            record.aggregate_info["retried"] = list(retried)
        t0 = time.perf_counter()
        try:
            self._fit(rnd, record)
        except FederationError as exc:  # one that stopped before its replies: kept too
            self._keep_stopped(record, exc)
            raise
        finally:  # a round that stops the run keeps its timings too
            t1 = time.perf_counter()
            record.durations["fit"] = t1 - t0 - record.durations.get("wait", 0.0)
            record.durations.setdefault("total", t1 - t0)
        if self._federated_evaluate(rnd, record):  # stages that did not run take no time
            record.durations["evaluate"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        if self._central(record):
            record.durations["central"] = time.perf_counter() - t2
        record.durations["total"] = time.perf_counter() - t0  # replaces the fit's
        # what each writes, kept as history.json reads it
        for hook in run_hooks(self.strategy.hooks, self.strategy.aggregator):
            before = written(record)
            hook.after_round(record, self.agg_state)
            settle(record, before, f"run hook {type(hook).__name__}.after_round(record, state)")
        self._finish(record)
        return record

    # -- steps 1-4: fit and aggregate ---------------------------------------------------

    def _available(self, rnd: int, wanted: int) -> Sequence[int]:
        wait = getattr(self.transport, "wait_for_clients", None)
        mark = refusal_mark(self.transport)  # clients that flap: waited for in total
        if wait is not None and not wait_enough(self.transport, wait, wanted, self.wait_timeout):
            there = len(self.transport.clients())
            raise self._fail(
                f"round {rnd}: only {there} of the {clients(wanted)} "
                f"needed (min_available_clients, min_fit_clients) connected within "
                f"{self.wait_timeout} s{refused_note(self.transport, mark)}"
                + poisson_note(self.strategy, there),
                rnd,
            )
        available = self.transport.clients()
        if len(available) < wanted:
            raise self._fail(
                f"round {rnd}: {clients(len(available))} available, fewer than the {wanted} "
                "needed (min_available_clients, min_fit_clients)"
                + refused_note(self.transport, mark)  # clients that came, then left
                + poisson_note(self.strategy, len(available)),
                rnd,
            )
        return available

    def _eligible(self, rnd: int, available: Sequence[int]) -> Sequence[int]:
        """The available clients that pass ``strategy.where``, asking new ones for properties."""
        if eligibility(self.strategy) is None:
            return available  # not copied: a federation may have 100,000s of clients
        return self._where_kept.eligible(self, rnd, available)

    def _ask_properties(self, rnd: int, cids: Sequence[int]) -> None:
        """Ask the clients of ``cids`` whose properties are unknown for them, and keep them."""
        unknown = self._unasked(cids, rnd)
        if unknown:
            ask = dict.fromkeys(unknown, Task("properties", rnd))
            for reply in self.transport.exchange(ask, timeout=self.round_timeout):
                self._store_properties(reply, rnd)
                self._where_kept.reported(reply.cid, self.properties)

    def _tasks(self, task: Task, cids: Sequence[int]) -> tuple[dict[int, Task], Any]:
        """Each client's task: ``task`` itself, or a copy with the client's own config.

        Returns:
            The tasks, and each client's whole config (None: all share ``task``'s).
        """
        strategy = self.strategy
        if not strategy.sends_client_configs(task.kind):
            return dict.fromkeys(cids, task), None
        self._ask_properties(task.round, cids)
        clients = client_info(cids, self.properties, self.client_names)
        configs = client_configs(strategy, task.kind, task.round, dict(task.config), clients)
        if configs is None:  # pragma: no cover - sends_client_configs said it gives some
            return dict.fromkeys(cids, task), None
        tasks = {
            cid: Task(task.kind, task.round, configs[cid], task.weights, task.payload)
            for cid in cids
        }
        return tasks, configs

    def _fit(self, rnd: int, record: RoundRecord) -> None:
        strategy = self.strategy
        t0 = time.perf_counter()
        try:
            available = self._available(
                rnd, max(strategy.min_available_clients, strategy.min_fit_clients)
            )
        finally:  # kept by a round that waited in vain too
            if not self.simulated:  # a deployed round waits for its clients to connect
                record.durations["wait"] = time.perf_counter() - t0
        available = wait_for_eligible(self, rnd, self._eligible(rnd, available), t0, record)
        count = self._fit_count(rnd, record, len(available))
        if count is None:
            return
        cids = strategy.sample(available, count, rnd, self.seed, purpose=0)
        update = strategy.aggregator.feed
        state, out = update(self.agg_state, Begin(rnd, self.weights))
        try:  # a Dropped there would replace no contribution
            refuse_dropped_at_begin(out, rnd, self._step)
        except TypeError as exc:
            raise self._stop(rnd, record, "aggregation", exc) from exc
        task = Task("fit", rnd, fit_config(self, rnd), self.weights, broadcast_extras(out))
        tasks, configs = self._tasks(task, cids)
        tasks = self._applied.told(strategy.aggregator, tasks, self.history)
        if strategy.fit_round is not None:
            fit_round: Any = strategy.fit_round  # configs= only when clients have their own
            more = {} if configs is None else {"configs": configs}
            outcome = fit_round(self.transport, cids, task, self.round_timeout, **more)
            self._fit_outcome(rnd, record, state, outcome, len(cids))
            return
        metrics = RoundMetrics("fit")
        answered: set[int] = set()
        direct = fit_directly(self, tasks, cids, state, record, metrics)
        if direct is not None:  # inline clients into a mean: the short way, the same result
            state, answered = direct, set(cids)
        else:
            replies = self.transport.exchange(tasks, timeout=self.round_timeout)
            del tasks
            for reply in in_cid_order(replies, cids):
                answered.add(reply.cid)
                state = self._take_reply(state, reply, record, metrics)
                del reply  # its arrays let go before the next reply is awaited
        for cid in cids:
            if cid not in answered:
                self._record_failure(
                    record.fit_failures, Failure(cid, "fit", "no reply in time"), record
                )
        needed = strategy.min_fit_clients if strategy.accept_failures else len(cids)
        needed = min(needed, len(cids))
        ok = len(record.fit_participants)
        if ok < needed or (not strategy.accept_failures and record.fit_failures):
            self.history.rounds.append(record)
            why = (
                f"fewer than min_fit_clients={needed}"
                if strategy.accept_failures
                else "and accept_failures=False"
            )
            hint = deadline_hint(
                record.fit_failures,
                len(cids),
                strategy.min_fit_clients,
                self.round_timeout,
                self.timeout_setting,
            )
            why += f"; {hint}" if hint and strategy.accept_failures else ""  # before the names
            raise shortfall(
                self._fail(
                    f"round {rnd}: {ok} of {len(cids)} sampled clients replied, {why}; "
                    "failures: " + failures_said(record.fit_failures, self.who),
                    rnd,
                )
            )
        record.fit_metrics = strategy.combined_metrics("fit", metrics, rnd) if metrics else {}
        self._apply_if_enough(state, rnd, record, len(cids))

    def _take_reply(
        self, state: Any, reply: Reply, record: RoundRecord, metrics: RoundMetrics
    ) -> Any:
        """Fold one fit reply into the aggregation ``state`` and record it; the new state.

        A failed or refused reply is recorded as the client's failure (one whose
        metrics take the round past its distinct names too, :class:`RoundMetrics`).
        A step that fails on the update stops the run (:class:`FederationError`).
        """
        contribution = self._contribution(reply, record)
        contribution = metrics.admit(contribution, self._refuser(record), record.fit_failures)
        if contribution is None:
            reply.release()
            return state
        state, folded = self._fold_or_stop(state, contribution, record)
        if folded:
            record.fit_participants.append(reply.cid)
            record.fit_examples += contribution.num_examples
            metrics.append((contribution.num_examples, contribution.metrics))
        # A reply kept outside memory (a spilled file) is unmapped now, its arrays
        # let go first.
        del contribution
        reply.release()
        return state

    def _fit_count(self, rnd: int, record: RoundRecord, eligible: int) -> int | None:
        """How many of the ``eligible`` clients train in round ``rnd``; None: none can.

        The strategy's ``num_fit``, but at least what its rule needs (Krum's ``2f + 3``)
        when that many are eligible (a ``selector`` chooses for itself); with fewer,
        no client trains, the model is kept and the round says why.

        Raises:
            FederationError: the strategy wants more clients than are eligible.
        """
        strategy = self.strategy
        count = strategy.client_count("fit", eligible)
        if count > eligible:
            raise self._fail(
                too_few_to_fit(strategy, rnd, count, eligible, self.property_error), rnd
            )
        if (why := trains_none(strategy, count, eligible)) is not None:
            self._keep_model(rnd, record, why)
            return None
        need = min_contributions(strategy.aggregator)
        if need is None:
            return count
        if eligible < need[0]:
            there = clients_there(eligible, eligibility(strategy))
            self._keep_model(
                rnd, record, f"{need[1]} clients per round, but only {there}: no client trains"
            )
            return None
        return count if strategy.selector is not None else max(count, need[0])

    def _apply_if_enough(self, state: Any, rnd: int, record: RoundRecord, sampled: int) -> None:
        """Aggregate round ``rnd``, unless fewer clients replied than the rule needs.

        Then the round keeps the model and says why once, naming the rule and the
        replies, rather than the rule's own refusal at the end of the round.
        """
        need = min_contributions(self.strategy.aggregator)
        replied = len(record.fit_participants)
        if need is None or replied >= need[0]:
            self._apply(state, rnd, record)
            return
        failed = len(record.fit_failures)
        self._keep_model(
            rnd,
            record,
            f"{need[1]} updates per round, but only {replied} of the {sampled} sampled "
            f"clients replied ({failed} failed)",
        )

    def _keep_model(self, rnd: int, record: RoundRecord, why: str) -> None:
        """Say once why round ``rnd`` cannot aggregate; the global model stays as it is."""
        logger.warning("round %d: %s; the global model is unchanged", rnd, why)
        record.aggregate_info["error"] = why

    def _fit_outcome(
        self, rnd: int, record: RoundRecord, state: Any, outcome: FitOutcome, sampled: int
    ) -> None:
        """Aggregate what a custom fit exchange (``strategy.fit_round``) returned."""
        record.aggregate_info.update(outcome_info(self.strategy.fit_round, outcome.info, rnd))
        for cid, what in outcome.warnings:
            logger.warning("round %d: %s %s", rnd, self.who(cid), what)
        told = dict(outcome.refused)  # a reply the exchange refused: its client is told why
        for cid, why in outcome.failures:
            if cid in told:
                self._refuse(record.fit_failures, Failure(cid, "fit", why), record, told[cid])
            else:
                self._record_failure(record.fit_failures, Failure(cid, "fit", why), record)
        # With accept_failures off every sampled client must take part (a dropout the exchange
        # recovered from included); one that failed with its update in the sum took part.
        strict = not self.strategy.accept_failures
        needed = min(sampled if strict else self.strategy.min_fit_clients, sampled)
        ok, took = len(outcome.participants), set(outcome.participants)
        error, out = outcome.error, [f for f in record.fit_failures if f.cid not in took]
        if error is None and (ok < needed or (strict and out)):
            error = f"{ok} of {sampled} sampled clients took part, " + (
                "and accept_failures=False" if strict else f"fewer than min_fit_clients={needed}"
            )
        if error is not None:
            record.aggregate_info.setdefault("error", error)
            self.history.rounds.append(record)
            if record.fit_failures:
                error += "; failures: " + failures_said(record.fit_failures, self.who)
            raise shortfall(self._fail(error, rnd))
        update = self.strategy.aggregator.feed
        for contribution in outcome.contributions:
            state, _ = update(state, contribution)
        record.fit_participants.extend(outcome.participants)
        record.fit_examples += outcome.num_examples
        record.fit_metrics = outcome_metrics(self.strategy.fit_round, outcome.metrics, rnd)
        self._apply(state, rnd, record)

    # -- evaluation ---------------------------------------------------------------------

    def _evaluators(self, rnd: int, waited: str = "") -> list[int] | None:
        """The clients sampled to evaluate in round ``rnd``; None (said why) if none can.

        ``waited``: how a wait for them ran out, said after why none can.
        """
        strategy = self.strategy
        available = self._eligible(rnd, self.transport.clients())
        count = strategy.client_count("evaluate", len(available))
        if count == 0:
            if strategy.fraction_evaluate > 0.0 and not strategy.source("num_evaluate", ""):
                logger.warning(
                    "round %d: skipping federated evaluation: fraction_evaluate=%s of %d "
                    "available clients rounds down to 0 (min_evaluate_clients=0)%s",
                    *(rnd, strategy.fraction_evaluate, len(available), waited),
                )
            return None
        if count > len(available):
            logger.warning(
                "round %d: skipping federated evaluation: %d clients wanted, only %s%s",
                *(rnd, count, clients_there(len(available), eligibility(strategy)), waited),
            )
            return None
        return strategy.sample(available, count, rnd, self.seed, purpose=1)

    def _federated_evaluate(self, rnd: int, record: RoundRecord, waited: str = "") -> bool:
        """Evaluate the model on sampled clients; False if no client was asked (none ran).

        ``waited``: how a wait for the clients ran out, said in the line that says too few.
        """
        strategy = self.strategy
        cids = self._evaluators(rnd, waited) if self._evaluates(rnd) else None
        if cids is None:
            return False
        task = Task("evaluate", rnd, evaluate_config(self, rnd), self.weights)
        tasks, _ = self._tasks(task, cids)
        results = RoundMetrics("evaluate")
        losses: list[tuple[int, float]] = []
        replies = self.transport.exchange(tasks, timeout=self.round_timeout)
        del tasks
        take_evaluations(self, replies, cids, record, results, losses)
        got, least = len(record.evaluate_participants), strategy.min_evaluate_clients
        if got < min(least, len(cids)):
            if got or not all(map(lacks_evaluate, record.evaluate_failures)):  # said once
                logger.warning(
                    "round %d: only %d client(s) evaluated, fewer than min_evaluate_clients=%d%s",
                    *(rnd, got, least, waited),
                )
            return True
        if record.evaluate_examples > 0:  # else the weighted loss is 0 / 0: none
            record.evaluate_loss = weighted_loss(losses, record.evaluate_examples)
        if results:  # evaluate_metrics may weigh them otherwise (or count the clients)
            record.evaluate_metrics = strategy.combined_metrics("evaluate", results, rnd)
        return True
