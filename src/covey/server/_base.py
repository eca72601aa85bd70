"""What the synchronous and the asynchronous loop share.

Both :class:`~covey.server.RoundLoop` and :class:`~covey.server.AsyncLoop` keep a global model,
its :class:`~covey.History` and the aggregation chain's state; both turn a client's
fit reply into a :class:`~covey.aggregate.Contribution` or a recorded failure,
apply the chain's :class:`~covey.aggregate.Aggregate` at ``End``, run the central
evaluation and remember the properties clients report. :class:`_LoopBase` does
these once; the loops differ only in how they reach clients and when they aggregate.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from covey.aggregate import AggregationError, Contribution, End
from covey.core._history import Failure, History, RoundRecord, lacks_evaluate
from covey.core._messages import FitResult, Reply
from covey.core._metricnames import renamed_metrics
from covey.core._recordvalues import recorded_info
from covey.core._text import printable
from covey.core._weights import Array, Weights, WeightsError, WeightsSpec, freeze, native
from covey.server._callbacks import EvaluateFn as EvaluateFn
from covey.server._callbacks import RoundCallback as RoundCallback
from covey.server._callbacks import check_evaluate_fn as check_evaluate_fn
from covey.server._callbacks import checked_callbacks as checked_callbacks
from covey.server._callbacks import round_callback as round_callback
from covey.server._central import central_evaluation
from covey.server._firstline import first_line as _first_line
from covey.server._said import MOST_LOGGED as MOST_LOGGED
from covey.server._said import PROPERTIES as PROPERTIES
from covey.server._said import note_unreported, said_at_end
from covey.server._saver import SaveError
from covey.server._told import tell_refused, unnamed
from covey.strategies._fold import contribution, dropped_why, find_aggregate
from covey.strategies._strategy import Strategy

logger = logging.getLogger("covey")


class FederationError(RuntimeError):
    """The run cannot go on: e.g. too few clients replied in a round.

    Attributes:
        history: What happened up to the error.
        weights: The global weights of the last completed round.
        step: The round (or FedBuff update) the run stopped in, which did not
            finish; None if it stopped outside one.
    """

    def __init__(
        self, message: str, history: History, weights: Weights, step: int | None = None
    ) -> None:
        super().__init__(message)
        self.history = history
        self.weights = weights
        self.step = step


DEPARTED_KEPT = 256
"""Clients gone from a deployed run whose properties are kept before they are forgotten.

A client that connects again is asked again anyway: what is kept of one that left
only waits to be dropped, once there are more than twice the clients kept at the
last look plus this many (so the fleet is looked at no more often than that).
"""


class _LoopBase:
    """The state and the reply handling common to the round loop and the asynchronous loop.

    Args:
        strategy: What to do each round (or update).
        initial_weights: The global model before the first round.
        evaluate_fn: ``(round, weights) -> (loss, metrics)`` run on the server, or None.
        seed: Seeds the choice of clients.
        on_round: Called with each finished :class:`RoundRecord`.
    """

    #: What one step of the loop is called in its messages, and what its model is.
    _step = "round"
    _model = "the global model"
    #: What a timeout hint tells to raise: a deployed server's keyword and flag alike (it
    #: is not told which the user gave); a simulation's keyword alone (:func:`open_loop`).
    timeout_setting = "round_timeout / --round-timeout"  # _retry.DEPLOYED_TIMEOUT

    def __init__(
        self,
        strategy: Strategy,
        initial_weights: Weights,
        *,
        evaluate_fn: EvaluateFn | None,
        seed: int,
        on_round: RoundCallback | None,
    ) -> None:
        self.strategy = strategy
        initial_weights = native(initial_weights)  # clients compute in native byte order
        self.spec = WeightsSpec.of(initial_weights)
        self.spec.check(initial_weights, what="initial weights")
        self.weights: dict[str, Array] = freeze(initial_weights)
        check_evaluate_fn(evaluate_fn)
        self.evaluate_fn = evaluate_fn
        self.seed = seed
        self.on_round = on_round
        self.history = History()
        # The last round whose aggregate changed the model, which may then have left the
        # server (the next round's tasks, federated evaluation) before it was saved.
        self.applied = 0
        self.agg_state: Any = strategy.aggregator.init(self.weights)
        self.properties: dict[int, dict[str, Any]] = {}
        self._unreported: dict[int, int] = {}  # client -> the round it did not report in
        self._reported_in: dict[int, int] = {}  # client -> its session (join count) then
        self._prune_above = DEPARTED_KEPT  # clients kept past this: forget those that left
        self._said_no_evaluate = False
        self._said_renamed: set[tuple[str, str]] = set()  # (source, metric) said read otherwise
        self._logged: dict[str, int] = {}  # stage -> failures of this round logged, and more
        self._last_property_error = ""  # why the last client not named in the log failed
        self.property_error: str | None = None
        """Why the last client that failed to report its properties failed, for errors."""
        self.client_names: Mapping[int, str] = {}
        """Each client's chosen name by id, kept up to date by a deployed server."""
        self.last_round: int | None = None
        """The run's last round (or update), which is evaluated whatever ``evaluate_every``."""
        # (client, round) of the task whose reply is being taken, when that round is not
        # its record's (an asynchronous run's stale reply): its refusal names it.
        self._answering: tuple[int, int] | None = None

    def who(self, cid: int) -> str:
        """Client ``cid`` as people call it in logs and errors: its name, else ``client <cid>``."""
        return self.client_names.get(cid) or self.history.name_of(cid)

    def _round_zero_done(self) -> bool:
        """Whether the history holds round 0 already (a run resumed before round 1 ended)."""
        return any(r.round == 0 for r in self.history.rounds)

    def _fail(self, message: str, step: int | None = None) -> FederationError:
        """The error that stops the run; the history keeps ``message`` as the reason it stopped.

        ``step`` is the round (or update) it stops in: the message is given its
        ``round r: `` head if it has none (which is how a run's records say a step
        did not finish), and the error carries it.
        """
        if step is not None and not message.startswith(head := f"{self._step} {step}: "):
            message = head + message
        if self.history.stopped_reason is None:
            self.history.stopped_reason = message
        return FederationError(message, self.history, self.weights, step)

    def server_failed(self, exc: Exception) -> FederationError:
        """The error that stops the run on the server's own failure ``exc`` (its disk, say).

        It names the round under way (not in the history yet), and no client.
        """
        rounds = self.history.rounds
        step = rounds[-1].round + 1 if rounds else 0
        return self._fail(f"{self._step} {step}: {exc}", step)

    def _finish(self, record: RoundRecord) -> None:
        said_at_end(self._step, record, self._logged, self._last_property_error)
        self._logged.clear()
        self._say_renamed(record)
        self.history.rounds.append(record)
        if self.on_round is not None:
            self.on_round(record)

    def _keep_stopped(self, record: RoundRecord, exc: FederationError) -> None:
        """Keep in the history ``record`` of the step that ``exc`` stopped, if not kept yet.

        A round stopped before it sampled (too few clients connected, or passing
        ``where=``) is kept like one stopped by its replies: with why, in
        ``aggregate_info["error"]``, and its clients that did not report their properties.
        """
        rounds = self.history.rounds
        if (rounds and rounds[-1] is record) or exc.step != record.round:
            return  # kept already, or the run stopped outside the step
        note_unreported(record, self._logged)
        said, head = str(exc), f"{self._step} {record.round}: "  # as _fail heads it
        record.aggregate_info.setdefault("error", said.removeprefix(head))
        rounds.append(record)

    def _say_renamed(self, record: RoundRecord) -> None:
        """Log once per metric that one named like the round's loss is read by another name."""
        for source, name, read_as in renamed_metrics(record):
            if (source, name) in self._said_renamed:
                continue
            self._said_renamed.add((source, name))
            given = "evaluate_fn's metrics" if source == "central" else "the evaluate metrics"
            where = "" if source == "central" else ', source="evaluate"'
            group = "central" if source == "central" else "federated"
            logger.warning(
                '%s %d: %s hold one named %r, read as history.metric("%s"%s) (the '
                'trackers log it as %s/%s): history.metric("loss"%s) reads the round\'s loss',
                self._step,
                record.round,
                given,
                name,
                read_as,
                where,
                group,
                read_as,
                where,
            )

    def _evaluates(self, rnd: int) -> bool:
        """Whether round ``rnd`` is evaluated: 0, every ``evaluate_every``-th, and the last."""
        every = self.strategy.evaluate_every
        return every == 1 or rnd % every == 0 or rnd == self.last_round

    def _central(self, record: RoundRecord) -> bool:
        """Call ``evaluate_fn`` with the model if the round is evaluated; whether it was."""
        if self.evaluate_fn is None or not self._evaluates(record.round):
            return False
        out = central_evaluation(self.evaluate_fn, record.round, self.weights, step=self._step)
        if out is not None:
            record.central_loss, record.central_metrics = out
        return True

    # -- client properties ----------------------------------------------------------------

    def _joins(self) -> Callable[[int], int] | None:
        """A client's session (new with each connection), on transports with one (a network's)."""
        joins: Callable[[int], int] | None = getattr(
            getattr(self, "transport", None), "joins", None
        )
        return joins

    def _unasked(self, available: Sequence[int], rnd: int) -> list[int]:
        """The clients of ``available`` whose properties are unknown and still to ask in ``rnd``.

        A client that connected again since it reported (a restarted site) is asked again.
        """
        joins = self._joins()
        if joins is not None:
            self._forget_departed()
        if joins is not None and self.properties:
            for cid in available:
                if cid in self.properties and self._reported_in.get(cid) != joins(cid):
                    del self.properties[cid]
        return [
            cid
            for cid in available
            if cid not in self.properties and self._unreported.get(cid) != rnd
        ]

    def _forget_departed(self) -> None:
        """Forget what is kept of the clients no longer connected, once they are many.

        A deployed client that connects again is asked for its properties again, so
        nothing kept of one that left is used again: a fleet whose clients come and
        go (phones) would otherwise keep growing the server's memory for good.
        """
        kept = max(len(self.properties), len(self._reported_in), len(self._unreported))
        if kept <= self._prune_above:
            return
        connected = set(self.transport.clients())  # type: ignore[attr-defined]
        for by_client in (self.properties, self._reported_in, self._unreported):
            for cid in [cid for cid in by_client if cid not in connected]:
                del by_client[cid]
        self._forgot(connected)
        kept = max(len(self.properties), len(self._reported_in), len(self._unreported))
        self._prune_above = 2 * kept + DEPARTED_KEPT

    def _forgot(self, connected: set[int]) -> None:
        """What a loop keeps per client beside the properties, cut down to ``connected``."""

    def _store_properties(self, reply: Reply, rnd: int) -> None:
        if reply.ok and isinstance(reply.result, dict):
            self.properties[reply.cid] = reply.result
            joins = self._joins()
            if joins is not None:
                self._reported_in[reply.cid] = joins(reply.cid)
        else:  # asked again next round
            self._unreported[reply.cid] = rnd
            why = _first_line(reply.error or f"it sent {type(reply.result).__name__}")
            self.property_error = f"{self.who(reply.cid)} did not report its properties: {why}"
            count = self._logged[PROPERTIES] = self._logged.get(PROPERTIES, 0) + 1
            if count <= MOST_LOGGED:  # the rest are counted at the round's end
                logger.warning("%s", self.property_error)
            else:
                self._last_property_error = why

    # -- fit replies and the aggregate ------------------------------------------------------

    def _contribution(
        self,
        reply: Reply,
        record: RoundRecord,
        *,
        staleness: int = 0,
        sent: Weights | None = None,
    ) -> Contribution | None:
        """A fit reply as a contribution, or None with the failure recorded.

        ``staleness`` counts the global updates since the client was sent ``sent``,
        the model it trained from.
        """
        cid = reply.cid
        if reply.error is not None:
            self._record_failure(
                record.fit_failures,
                Failure(cid, "fit", _first_line(reply.error), reply.error),
                record,
            )
            return None
        result = reply.result
        if not isinstance(result, FitResult):
            self._refuse(
                record.fit_failures,
                Failure(cid, "fit", f"reply is {type(result).__name__}, expected FitResult"),
                record,
            )
            return None
        try:
            # The name alone (None when unnamed): ``client <cid>`` is made only for an error.
            who = self.client_names.get(cid) or self.history.clients.get(cid)
            return contribution(cid, result, self.spec, staleness=staleness, sent=sent, who=who)
        except WeightsError as exc:
            said = str(exc)  # the client is told it without its name
            told = unnamed(said, who or f"client {cid}")
            self._refuse(record.fit_failures, Failure(cid, "fit", said), record, told)
            return None

    def _fold_or_stop(
        self, state: Any, contribution: Contribution, record: RoundRecord
    ) -> tuple[Any, bool]:
        """:meth:`_fold`, where a step that fails on the update stops the run.

        The error raised is a :class:`FederationError` naming the client and what the
        step raised (a staleness function's error, say), ``record`` kept in the history.
        """
        try:
            return self._fold(state, contribution, record)
        except Exception as exc:
            self.history.rounds.append(record)
            rnd = f"{self._step} {record.round}"
            if isinstance(exc, SaveError):  # awaited while the first reply is folded
                raise self._fail(f"{rnd}: {exc}", record.round) from exc
            raise self._fail(
                f"{rnd}: the aggregation step failed on client {contribution.cid}'s "
                f"update: {type(exc).__name__}: {exc}",
                record.round,
            ) from exc

    def _fold(
        self, state: Any, contribution: Contribution, record: RoundRecord
    ) -> tuple[Any, bool]:
        """Fold ``contribution`` into the chain's ``state``; whether the chain took it.

        A step that raises :class:`~covey.aggregate.AggregationError` on a contribution
        refuses that client's update (say, q-FedAvg given a NaN loss): the client's fit
        is recorded as failed and the round goes on with ``state`` as it was.
        """
        t0 = time.perf_counter()
        try:
            state, out = self.strategy.aggregator.feed(state, contribution)
        except AggregationError as exc:
            why = f"refused by the aggregation step: {exc}"
            self._refuse(record.fit_failures, Failure(contribution.cid, "fit", why), record)
            return state, False
        finally:  # _add_seconds without its frame: this runs once per client
            durations = record.durations
            durations["aggregate"] = durations.get("aggregate", 0.0) + time.perf_counter() - t0
        left = dropped_why(out, contribution.cid) if out else None
        if left is not None:  # a step left it out (SCAFFOLD without its extra): no participant
            why = f"left out by the aggregation: {left}"
            self._refuse(record.fit_failures, Failure(contribution.cid, "fit", why), record)
            return state, False
        return state, True

    def _record_failure(
        self, failures: list[Failure], failure: Failure, record: RoundRecord
    ) -> None:
        """Add ``failure`` to ``failures`` of ``record``; log it, headed by its round (update)."""
        failures.append(failure)
        if lacks_evaluate(failure):
            # A common set-up, not an incident: say it once, not every round.
            if not self._said_no_evaluate:
                self._said_no_evaluate = True
                logger.warning(
                    "clients do not implement evaluate(); set fraction_evaluate=0 to turn "
                    "off federated evaluation"
                )
            return
        count = self._logged[failure.stage] = self._logged.get(failure.stage, 0) + 1
        if count <= MOST_LOGGED:
            logger.warning(  # a client's own words: their control characters escaped
                "%s %d: %s failed in %s: %s",
                self._step,
                record.round,
                printable(self.who(failure.cid)),
                failure.stage,
                printable(failure.error),
            )

    def _refuse(
        self,
        failures: list[Failure],
        failure: Failure,
        record: RoundRecord,
        told: str | None = None,
    ) -> None:
        """Record a reply this server refused as its client's failure, and tell the client.

        ``told`` is the reason as the client reads it (default: ``failure.error``).
        """
        self._record_failure(failures, failure, record)
        rnd = record.round
        if self._answering is not None and self._answering[0] == failure.cid:
            rnd = self._answering[1]
        tell_refused(getattr(self, "transport", None), failure, rnd, self._step, told)

    def _refuser(self, record: RoundRecord) -> Callable[[list[Failure], Failure], None]:
        """:meth:`_refuse` for the replies of ``record``'s round, for ``RoundMetrics.admit``."""
        return lambda failures, failure: self._refuse(failures, failure, record)

    def _apply(self, state: Any, rnd: int, record: RoundRecord) -> None:
        """End the aggregation chain for ``rnd`` and apply its aggregate; time it."""
        t0 = time.perf_counter()
        try:
            self._apply_aggregate(state, rnd, record)
        finally:
            _add_seconds(record, "aggregate", t0)

    def _apply_aggregate(self, state: Any, rnd: int, record: RoundRecord) -> None:
        """End the aggregation chain for ``rnd`` and apply its aggregate to the global model.

        An :class:`~covey.aggregate.AggregationError` (the step refusing this round's
        updates) or an aggregate that does not fit the model is recorded and the
        model stays unchanged; anything else is a defect and stops the run, its
        traceback kept in the history.
        """
        try:
            end = End(rnd, step=self._step)
            state, out = self.strategy.aggregator.feed(state, end)
            aggregate = find_aggregate(out, end)
            # As history.json gives it; refused here if changed since it was checked.
            info = {} if aggregate is None else recorded_info(aggregate.info, "Aggregate", rnd)
        except AggregationError as exc:
            logger.error(
                "%s %d: aggregation failed, %s is unchanged: %s", self._step, rnd, self._model, exc
            )
            record.aggregate_info["error"] = f"{type(exc).__name__}: {exc}"
            return
        except Exception as exc:
            raise self._stop(rnd, record, "aggregation", exc) from exc
        self.agg_state = state
        if aggregate is None:
            if record.fit_participants:  # a step of one's own that forgot to emit one, say
                why = f"the aggregation step emitted no Aggregate at the End of {self._step} {rnd}"
                logger.warning("%s %d: %s is unchanged: %s", self._step, rnd, self._model, why)
                record.aggregate_info.setdefault("error", why)
            return
        record.aggregate_info.update(info)
        try:
            # A sum past the dtype's range is an Inf the check below refuses, keeping
            # the model: not a warning (an error under -W error that would stop the run).
            with np.errstate(over="ignore", invalid="ignore"):
                new = aggregate.apply(self.weights, self._step)
            self.spec.check(new, what=f"{self._step} {rnd}'s aggregate")
        except WeightsError as exc:
            logger.error(
                "%s %d: refusing the aggregate, %s is unchanged: %s",
                self._step,
                rnd,
                self._model,
                exc,
            )
            record.aggregate_info["error"] = str(exc)
            return
        except Exception as exc:
            raise self._stop(rnd, record, "applying the aggregate", exc) from exc
        self.weights = freeze(new)
        self.applied = rnd
        record.aggregated = True

    def _stop(self, rnd: int, record: RoundRecord, what: str, exc: Exception) -> FederationError:
        """Record an unexpected error at the end of ``rnd`` in the history; the error to raise."""
        text = "".join(traceback.format_exception(exc))
        record.aggregate_info["error"] = f"{type(exc).__name__}: {exc}"
        record.aggregate_info["traceback"] = text
        self.history.rounds.append(record)
        self.history.stopped_reason = f"{self._step} {rnd}: {what} raised\n{text}"
        logger.error("%s %d: %s raised; stopping the run\n%s", self._step, rnd, what, text)
        return self._fail(f"{what} raised {type(exc).__name__}: {exc}", rnd)


def _add_seconds(record: RoundRecord, stage: str, since: float) -> None:
    """Add the seconds since ``since`` (``time.perf_counter``) to ``record.durations[stage]``."""
    record.durations[stage] = record.durations.get(stage, 0.0) + time.perf_counter() - since
