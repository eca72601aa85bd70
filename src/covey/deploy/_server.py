"""``covey.serve``: run the server of a real federation over gRPC, resumable after a crash."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covey.compress import CompressedTransport, Scheme, scheme_spec
from covey.compress._counted import CountedAsyncTransport
from covey.core._history import History, RoundRecord
from covey.core._interrupt import interrupts_as_such
from covey.core._log import ON_CONSOLE
from covey.core._messages import Count, Real, plain_count, plain_real
from covey.core._recordvalues import written
from covey.core._weights import Weights, WeightsSpec, made, native
from covey.deploy._app import ServeResult
from covey.deploy._goodbye import describe, goodbye_of, reason_of
from covey.deploy._names import ClientNames, LateStore
from covey.deploy._over import tell_returning_clients
from covey.deploy._servechecks import (
    check_capacity,
    check_resumable,
    check_retries,
    check_settings,
    check_writable,
    kept_last,
    record_keep_last,
    record_tls,
    reopened,
    served_scheme,
    stored_address,
)
from covey.deploy._tls import server_tls
from covey.server._base import (
    EvaluateFn,
    RoundCallback,
    checked_callbacks,
)
from covey.server._factory import Loop, open_loop, run_config
from covey.server._lasteval import add_counts
from covey.server._outputs import RunOutputs, write_outputs
from covey.server._resume import resume_point, resumed_seed, same_settings, same_strategy
from covey.server._retry import RoundRetries, retry_hint
from covey.server._roundfiles import check_storable
from covey.server._saver import BackgroundSaver, call_pending, flushing, rewritten, written_beside
from covey.server._state import load_state, state_types
from covey.server._store import RunStore
from covey.server._sync import RoundLoop
from covey.strategies._names import FLOWER_SERVE, a_strategy, flower_keywords
from covey.strategies._strategy import Strategy
from covey.transport._base import ServerDiskError
from covey.transport.grpc._checks import check_address
from covey.transport.grpc._listen import ListenError
from covey.transport.grpc._registry import lost_connection
from covey.transport.grpc._server import GrpcServerTransport, ServerTLS

logger = logging.getLogger("covey")


@flower_keywords(FLOWER_SERVE)
def serve(
    strategy: Strategy,
    rounds: Count,
    initial_weights: Weights | Callable[[], Weights] | None,
    address: str | None = None,
    *,
    evaluate_fn: EvaluateFn | None = None,
    tls: ServerTLS | None = None,
    certs: str | Path | None = None,
    insecure: bool = False,
    run_dir: str | Path | None = None,
    resume: bool = False,
    seed: Count = 0,
    round_timeout: Real | None = None,
    wait_timeout: Real | None = 300.0,
    heartbeat: Real = 5.0,
    max_clients: Count = 1000,
    on_round: RoundCallback | Sequence[RoundCallback] | None = None,
    on_listen: Callable[[int], None] | None = None,
    on_event: Callable[[str, str, str], None] | None = None,
    client_names: dict[int, str] | None = None,
    plot: bool = True,
    compression: Scheme | str | None = None,
    keep_last: Count | None = None,
    data_port: Count | None = None,
    round_retries: Count = 0,
) -> ServeResult:
    """Serve a federation: wait for clients, run ``rounds`` rounds, say goodbye.

    Args:
        strategy: What to do each round.
        rounds: The last round to run.
        initial_weights: The global model at step 0, or a function returning it, called
            once the server listens; given a function, the server holds the only
            reference and frees the step-0 model from round 2 on. When resuming, a
            run killed before round 0 was saved starts again from it; any other run
            goes on from its saved model, and initial weights of another layout
            (names, shapes, dtypes) are refused before the server listens (None
            skips that check).
        address: ``host:port`` to listen on; port 0 picks a free port (see ``on_listen``).
            Default: the address stored in the run when resuming, else ``127.0.0.1:9092``.
        evaluate_fn: ``(round, weights) -> (loss, metrics)`` on the server.
        tls: TLS material; or give ``certs``, a folder made by ``covey certs init``.
        certs: The federation folder holding ``ca.pem``, ``server.pem``, ``server.key``.
        insecure: Serve without TLS (local experiments only; a warning is logged).
        run_dir: Where the run's state lives (SQLite + safetensors per round);
            None keeps nothing on disk.
        resume: Continue the run in ``run_dir`` from its last completed round, up
            to ``rounds`` (recorded as the run's round count). A finished run is
            continued only with more ``rounds`` than it ran, a stopped one only
            with no fewer (else ValueError).
        seed: Seeds client sampling.
        round_timeout: Seconds clients have to reply in a round; late replies are discarded.
        round_retries: How many times a round is run again, once enough clients are
            back (within ``wait_timeout``), when it fell short only because clients
            lost their connections (an outage, the server's process paused); 0: such
            a round stops the run, as any round that falls short. Synchronous runs
            only: an asynchronous strategy (FedBuff) refuses it (ValueError).
        wait_timeout: Seconds to wait for enough clients before a round.
        heartbeat: Seconds between heartbeats; silent clients are dropped after six.
        max_clients: Most clients connected at once; at least the strategy's
            ``min_available_clients`` and ``min_fit_clients``.
        on_round: Called with each finished round's record (or a list of such functions);
            with ``run_dir``, a resume first calls it with the saved round whose
            callbacks had not all returned (one raised, or the server was killed).
        on_listen: Called with the bound port once the server listens.
        data_port: Also listen on this TCP port (0: a free one) for data connections:
            clients move the arrays of tasks and replies there as raw bytes, beside
            their gRPC streams (under TLS too with ``certs``); faster for large models.
            None: the arrays go on the streams. Clients use it on their own.
        on_event: Called with ``(client name, event, detail)`` for fleet events
            (``"join"``, ``"leave"``, ``"refused"``, ...).
        client_names: A dict this function keeps filled with each client id's
            name as clients join (e.g. for a console); the history of the run
            holds the same map in ``History.clients``.
        plot: Also draw ``plot.png`` in ``run_dir``: at most every 10 s during
            the run and once at its end (``history.json`` is written there
            after every round).
        compression: Clients compress their updates with this scheme (a spec such
            as ``"q8"`` or ``"topk:0.01"``, see :mod:`covey.compress`); kept in the
            run's config, so resuming uses it again. The history records each
            round's (or global update's) array bytes both ways
            (``bytes_sent``/``_received``).
        keep_last: Keep the weights files of the newest ``keep_last`` rounds only (1 or
            more); older ones are deleted as rounds are saved, their records stay.
            None keeps every round's file; resuming, None keeps what the run kept
            (its settings record it).

    Returns:
        The final weights and history.

    Raises:
        covey.FederationError: if a round cannot complete (e.g. too few clients).
        ValueError: a setting out of range, e.g. ``max_clients`` below the strategy's minimums.
    """
    rounds, seed, max_clients = plain_count(rounds), plain_count(seed), plain_count(max_clients)
    round_retries, keep_last = plain_count(round_retries), plain_count(keep_last)
    data_port = plain_count(data_port)
    round_timeout, wait_timeout = plain_real(round_timeout), plain_real(wait_timeout)
    heartbeat = plain_real(heartbeat)
    check_settings(rounds, round_timeout, wait_timeout, heartbeat, round_retries)
    # Before clients join a run that would stop at round 0; a list of callbacks: one calling each.
    on_round = checked_callbacks(evaluate_fn, on_round)
    strategy = a_strategy(strategy)
    check_capacity(strategy, max_clients)
    check_retries(strategy, round_retries)
    opened = reopened(run_dir, resume)
    try:  # a refusal from here on lets go of the reopened run (and its lock)
        same_strategy(opened, strategy)
        same_settings(opened, strategy)
        seed = resumed_seed(opened, seed)
        scheme = served_scheme(compression, opened, strategy)
        keep_last = kept_last(keep_last, opened)  # a resumed run's own unless given one
        if opened is not None:  # a different strategy or compression is named first
            check_resumable(opened, rounds)
            check_writable(opened)
        if address is None:
            address = "127.0.0.1:9092" if opened is None else stored_address(opened)
        check_address(address, listen=True)
        tls = server_tls(tls, certs, insecure, address)
        late = LateStore(opened)
        names = ClientNames(late if run_dir is not None else None, client_names, on_event)
        if opened is not None:  # a resumed run knows its clients already
            names.names.update({cid: name for name, cid in opened.clients().items()})
        # Listen first: an address that cannot be bound leaves no run folder behind.
        transport = _listen(address, tls, late, names, heartbeat, max_clients, data_port)
        try:
            bound = f"{address.rpartition(':')[0]}:{transport.port}"  # port 0: the one got
            run = _open_run(strategy, rounds, initial_weights, bound, run_dir, opened, seed, scheme)
            record_keep_last(run.store, run.config, keep_last)
            record_tls(opened, run, tls)
            transport.spill_to(run.folder)  # large replies wait there, not in TMPDIR
        except BaseException:
            transport.close()
            raise
    except BaseException:
        if opened is not None:
            opened.close()
        raise
    late.ready(run.store)
    goodbye = "the run is over"
    try:  # from here on, the run ends marked (Ctrl-C during on_listen included)
        run.take_over()
        if on_listen is not None:
            on_listen(transport.port)
        logger.info("covey server listening on port %d", transport.port, extra=ON_CONSOLE)
        start_weights = run.take_weights()  # the loop owns the model now: keep no copy here
        sync = not strategy.asynchronous
        # The run's start time names it, the same after a resume: a client process that
        # outlives its server keeps its top-k residuals for this run, not for another.
        token = str(run.config.get("started", "")) or None
        counter: CompressedTransport | CountedAsyncTransport = (
            CompressedTransport(transport, scheme, seed=seed, run=token)
            if sync
            else CountedAsyncTransport(transport, scheme, seed=seed, run=token)
        )
        # Nothing stored without a run folder; else the named tuples a resume rebuilds.
        template = None if run.store is None else strategy.aggregator.init(start_weights)
        run.types = None if template is None else state_types(template)
        loop = open_loop(
            run.flushing(strategy),
            counter,
            start_weights,
            evaluate_fn=evaluate_fn,
            seed=seed,
            round_timeout=round_timeout,
            wait_timeout=wait_timeout,
            on_round=run.saver(on_round, names, plot, counter, keep_last),
            history=run.history,
            agg_state=None if run.state is None else load_state(run.state, template),
        )
        run.loop = loop
        loop.client_names = names.names  # failures are logged and reported by name
        if isinstance(loop, RoundLoop):
            loop.retries = RoundRetries(round_retries, lambda f: lost_connection(f.error))
        del initial_weights, start_weights, template
        if run.history is None:
            loop.history.config = run.config
        run.call_pending(on_round)  # the stopped run's last round, first
        _run_loop(loop, rounds, run.start)
        run.end(None, names)
        if_over = run.resumed_with_no_round_left(rounds)  # killed after its last round's save
        step = "update" if strategy.asynchronous else "round"
        tell_returning_clients(
            if_over, transport, names.names, max_clients, wait_timeout, rounds, step
        )
    except BaseException as exc:
        goodbye = goodbye_of(exc)  # told to the clients even if the end cannot be recorded
        retry_hint(exc, run.loop)
        run.end(exc, names)
        raise
    finally:
        run.loop = None  # the loop's round callback holds the run: no cycle outlives it
        transport.close(goodbye)
        if run.store is not None:
            run.store.close()
    return ServeResult(dict(loop.weights), loop.history, Path(run_dir) if run_dir else None)


def _run_loop(loop: Loop, rounds: int, start: int) -> None:
    """Run ``loop``; a failure of the server's own disk stops it naming the round, no client."""
    with interrupts_as_such():  # Ctrl-C as a plot imports matplotlib: an ImportError
        try:
            loop.run(rounds, start=start)
        except ServerDiskError as exc:
            raise loop.server_failed(exc) from exc


def _listen(
    address: str,
    tls: ServerTLS | None,
    late: LateStore,
    names: ClientNames,
    heartbeat: float,
    max_clients: int,
    data_port: int | None,
) -> GrpcServerTransport:
    """The transport listening on ``address``; ListenError naming the address if it cannot."""
    try:
        return GrpcServerTransport(
            address,
            tls=tls,
            client_id=names.client_id,
            on_event=names.event,
            heartbeat=heartbeat,
            max_clients=max_clients,
            data_port=data_port,
        )
    except RuntimeError as exc:  # gRPC's way of saying the port cannot be bound
        late.close()
        raise ListenError(f"cannot listen on {address}: {exc}") from None
    except BaseException:
        late.close()
        raise


@dataclass
class _Run:
    """A served run as opened: its store (if any) and where its loop starts."""

    store: RunStore | None
    weights: Weights | None
    config: dict[str, Any]
    start: int = 1
    history: History | None = None
    state: bytes | None = None
    uncounted: int | None = None  # resumed: servers that died since its last saved round
    loop: Loop | None = None
    types: dict[str, type] | None = None
    background: BackgroundSaver | None = None
    outputs: RunOutputs | None = None
    new_rounds: int | None = None
    """A resumed run's new round count, recorded once it trains (or ends) at it."""
    returned: int | None = None
    """The last round whose ``on_round`` callbacks returned."""
    rewrite: dict[str, Any] | None = None
    """A saved round's record as its callbacks left it, saved with the next round or at the end."""

    def record_rounds(self) -> bool:
        """Record a resumed run's new round count in ``run.sqlite`` and its history.

        Done as its first round is saved (or as it ends with none to run), not as
        it is reopened: a run that stops before then keeps, in ``run.sqlite`` as in
        ``history.json``, the count it had, and a ``--resume`` without ``--rounds``
        reads the same count from either. Returns whether there was one to record.
        """
        if self.new_rounds is None:
            return False
        rounds, self.new_rounds = self.new_rounds, None
        history = self.loop.history if self.loop is not None else self.history
        if history is not None:
            history.config = self.config
        if self.store is not None:
            self.store.set_rounds(rounds)
        return True

    def saver(
        self,
        on_round: RoundCallback | None,
        names: ClientNames,
        plot: bool,
        counter: Any,
        keep_last: int | None = None,
    ) -> RoundCallback:
        """The loop's round callback: save the round and its outputs, then ``on_round``.

        Saved are the model, the record (with the bytes ``counter`` counted) and
        the state in the store, and ``history.json`` and ``plot.png`` next to
        them, each written atomically.
        """

        def round_done(record: RoundRecord) -> None:
            self.record_rounds()  # before the round's history.json says it
            if counter is not None:
                add_counts(record, counter.take_counts())
            if self.loop is not None:  # the record is the history's last
                names.name_history(self.loop.history)
            if self.store is not None and self.loop is not None:
                # Round r is written while round r + 1 trains (one save in flight at most).
                if self.background is None:
                    self.background = BackgroundSaver(self.store, keep_last=keep_last)
                loop, rewrite, self.rewrite = self.loop, self.rewrite, None
                self.background.submit_round(
                    record,
                    loop.weights,
                    loop.agg_state,
                    self.types,
                    pending_callbacks=on_round is not None,  # a resume calls them if left
                    returned=rewrite,  # what the last round's callbacks wrote into it
                )
                if self.outputs is None:
                    self.outputs = RunOutputs(self.store.run_dir, plot=plot)
                written_beside(self.background, self.outputs.round_done, loop.history)
            if on_round is not None:
                before = written(record)
                on_round(record)
                if self.store is not None:  # saved with the next round, or as the run ends
                    self.rewrite = rewritten(record, before)
            self.returned = record.round

        return round_done

    def call_pending(self, on_round: RoundCallback | None) -> None:
        """Call ``on_round`` with the saved round a stopped run left its callbacks pending in."""
        if self.store is not None:
            called = call_pending(self.store, self.history, self.start, on_round)
            if called is not None:
                self.returned, self.rewrite = called

    def flushing(self, strategy: Strategy) -> Strategy:
        """``strategy`` whose aggregation first waits for the save in flight, if any."""
        return flushing(strategy, lambda: self.background)

    def end(self, exc: BaseException | None, names: ClientNames) -> None:
        """Mark the run finished, or failed with the reason it stopped (its last round named)."""
        # A resumed run stopped before its loop exists still has the history it resumed.
        history = self.loop.history if self.loop is not None else self.history
        if self.loop is not None:  # a round that stopped the run had no saver to name it
            names.name_history(self.loop.history)
        if exc is not None and history is not None and history.stopped_reason is None:
            history.stopped_reason = reason_of(exc)  # history.json too
        if self.store is None:
            return
        try:
            # Ended with no round left to run: it ran to the new count, recorded now.
            recorded = exc is None and self.record_rounds()
            if self.outputs is not None and self.loop is not None:
                self.outputs.finish(self.loop.history)
            elif (exc is not None or recorded) and history is not None:  # resumed, no round
                write_outputs(self.store.run_dir, history, plot=False)
        except Exception as err:  # noqa: BLE001 - the run's own outcome is recorded below
            logger.warning("could not write the run's outputs: %s", err)
        if self.background is not None:  # a failed run keeps the last round whose save started
            with contextlib.suppress(*(() if exc is None else (Exception,))):
                self.background.flush()
        if exc is None:
            self.callbacks_returned()
            self.store.set_status("finished")
            return
        try:  # on a full disk this fails too: the error that stopped the run is raised
            self.callbacks_returned()
            if self.loop is not None and self.loop.applied > (self.store.last_round() or 0):
                self.store.owe_release()  # a model it changed and did not save may have left
            self.store.set_status("failed")
            self.store.log_event("server", "stopped", describe(exc))
        except OSError as err:
            logger.error("could not record in %s why the run stopped: %s", self.store.run_dir, err)

    def callbacks_returned(self) -> None:
        """Record in the store that the callbacks of the rounds run so far returned."""
        if self.store is not None and self.returned is not None:
            self.store.callbacks_returned(self.returned, self.rewrite)

    @property
    def folder(self) -> Path | None:
        """The run folder, if the run has one."""
        return None if self.store is None else self.store.run_dir

    def resumed_with_no_round_left(self, rounds: int) -> bool:
        """Whether this is a resumed run whose last round was saved before (none to run)."""
        return self.uncounted is not None and self.start > rounds

    def take_over(self) -> None:
        """A resumed run is running again: a kill from now on leaves it marked as died."""
        if self.store is not None and self.uncounted is not None:
            self.store.take_over(self.uncounted)

    def take_weights(self) -> Weights:
        """The starting weights, forgotten here so only the loop holds them."""
        weights, self.weights = self.weights, None
        if weights is None:  # an invariant of this module, not an input check
            raise RuntimeError("internal error: weights is unset")
        return weights


def _open_run(
    strategy: Strategy,
    rounds: int,
    initial_weights: Weights | Callable[[], Weights] | None,
    address: str,
    run_dir: str | Path | None,
    opened: RunStore | None,
    seed: int,
    scheme: Scheme | None,
) -> _Run:
    """Create the run's store, or take the reopened one to resume after its last round."""
    if opened is not None:
        point = resume_point(opened, initial_weights, rounds)
        config = {**point.config, "rounds": rounds}  # a resumed run may go on for more rounds
        run = _Run(
            opened, point.weights, config, point.start, point.history, point.state, point.uncounted
        )
        if point.config.get("rounds") != rounds:  # recorded once a round is saved
            run.new_rounds = rounds
        return run
    initial_weights = made(initial_weights)  # a function making them is called
    if initial_weights is None:
        raise ValueError("serve() needs initial_weights (unless resuming)")
    initial_weights = native(initial_weights)  # NumPy scalars as 0-d arrays, native order
    spec = WeightsSpec.of(initial_weights)
    if run_dir is not None:
        check_storable(spec)
    config = run_config(
        strategy,
        rounds=rounds,
        seed=seed,
        backend="grpc",
        model=spec.describe(),
        address=address,
        started=_dt.datetime.now(_dt.UTC).isoformat(),
    )
    if scheme is not None:
        config["compression"] = scheme_spec(scheme)
    store = None if run_dir is None else RunStore.create(run_dir, config=config, exclusive=True)
    return _Run(store, initial_weights, config)
