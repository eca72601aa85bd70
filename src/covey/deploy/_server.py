"""``covey.serve``: run the server of a real federation over gRPC, resumable after a crash."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from covey.compress import CompressedTransport, Scheme
from covey.compress._counted import CountedAsyncTransport
from covey.core._interrupt import interrupts_as_such
from covey.core._log import ON_CONSOLE
from covey.core._messages import Count, Real, plain_count, plain_real
from covey.core._weights import Weights
from covey.deploy._app import ServeResult
from covey.deploy._goodbye import goodbye_of
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
from covey.deploy._servedrun import ServedRun, open_run
from covey.deploy._tls import server_tls
from covey.server._base import (
    EvaluateFn,
    RoundCallback,
    checked_callbacks,
)
from covey.server._factory import Loop, open_loop
from covey.server._resume import resumed_seed, same_settings, same_strategy
from covey.server._retry import RoundRetries, retry_hint
from covey.server._state import state_types
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
        # A resume whose model or aggregation state does not load is refused before it
        # listens: no client joins, nor is told it waits for, a run that cannot go on.
        resumed = _resumed(strategy, rounds, initial_weights, opened)
        late = LateStore(opened)
        names = ClientNames(late if run_dir is not None else None, client_names, on_event)
        if opened is not None:  # a resumed run knows its clients already
            names.names.update({cid: name for name, cid in opened.clients().items()})
        # Listen first: an address that cannot be bound leaves no run folder behind.
        transport = _listen(address, tls, late, names, heartbeat, max_clients, data_port)
        try:
            bound = f"{address.rpartition(':')[0]}:{transport.port}"  # port 0: the one got
            run = resumed or open_run(
                strategy, rounds, initial_weights, bound, run_dir, None, seed, scheme
            )
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
        template, agg_state = run.take_state(strategy)  # a resumed run's, loaded as it opened
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
            agg_state=agg_state,
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


def _resumed(
    strategy: Strategy,
    rounds: int,
    initial_weights: Weights | Callable[[], Weights] | None,
    opened: RunStore | None,
) -> ServedRun | None:
    """The reopened run (None: a new one), its model and aggregation state loaded."""
    if opened is None:
        return None
    # The address is only a new run's to record: a resumed run keeps the one it has.
    return open_run(strategy, rounds, initial_weights, "", None, opened)


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
