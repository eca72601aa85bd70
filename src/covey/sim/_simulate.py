"""``covey.simulate``: run a federation of simulated clients on one machine."""

from __future__ import annotations

import datetime as _dt
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from covey.clients._client import ClientFn
from covey.compress import CompressedTransport, Scheme, check_applies, scheme_named, scheme_spec
from covey.compress._plain import check_scheme
from covey.core._files import a_folder
from covey.core._history import History, RoundRecord
from covey.core._historyfile import HistoryFile
from covey.core._messages import Count, Real, plain_count, plain_real
from covey.core._recordvalues import written
from covey.core._weights import Array, Weights, WeightsError, copy, made, native
from covey.server._base import EvaluateFn, RoundCallback, checked_callbacks
from covey.server._factory import Loop, open_loop, run_config
from covey.server._kept import SIMULATION_KEEPS
from covey.server._lasteval import add_counts
from covey.server._saver import written_beside
from covey.sim import _frozen
from covey.sim._checkpoint import SimCheckpoint, check_resumable, open_checkpoint
from covey.sim._clock import Availability, ClientClock, ClockedTransport, clients_setup
from covey.sim._inline import inline_transport
from covey.sim._options import (
    _check_availability,
    _check_backend_options,
    _check_durations,
    _check_flags,
    _check_keep_last,
    _check_options,
    _check_ray_options,
    _checked,
    flower_keywords,
    ray_settings,
)
from covey.sim._progress import progress_callback
from covey.sim._rundir import (
    end_run_meta,
    kept_history,
    note_resume,
    run_folder,
    stop_reason,
    write_run_meta,
)
from covey.sim._start import check_start_method
from covey.strategies._strategy import Strategy
from covey.transport._async import Durations, SimulatedAsyncTransport
from covey.transport._base import Transport

Backend = Literal["inline", "process", "ray"]
StartMethod = Literal["fork", "forkserver", "spawn"]


@dataclass
class SimulationResult:
    """The outcome of :func:`simulate`.

    Attributes:
        weights: The final global weights (writable copies).
        history: What happened, round by round.
        seconds: Wall time of the whole simulation.
    """

    weights: dict[str, Array]
    history: History
    seconds: float


def _backend(
    backend: str,
    client_fn: ClientFn,
    num_clients: int,
    *,
    num_workers: int | None,
    client_cache: int | None,
    client_resources: Mapping[str, Any] | None,
    client_group: Callable[[int], str] | None,
    ray_address: str | None,
    ray_start_timeout: float | None = None,
    start_method: str | None = None,
) -> Transport:
    ray_options = (client_resources, client_group, ray_address, ray_start_timeout)
    _check_backend_options(backend, start_method, client_cache, ray_options)
    if backend == "inline":
        return inline_transport(client_fn, num_clients, client_cache)
    if backend == "process":
        from covey.sim._process import ProcessTransport  # loaded when asked for, as Ray's

        return ProcessTransport(
            client_fn, num_clients, num_workers=num_workers, start_method=start_method
        )
    if backend == "ray":
        from covey.sim._ray import RayTransport

        _check_ray_options(*ray_options)

        return RayTransport(
            client_fn,
            num_clients,
            client_resources=client_resources,
            client_group=client_group,
            address=ray_address,
            num_actors=num_workers,
            client_cache=client_cache,
            start_timeout=ray_start_timeout,
        )
    raise ValueError(f"unknown backend {backend!r}; choose 'inline', 'process' or 'ray'")


def _callbacks(
    rounds: int, progress: bool, on_round: RoundCallback | None, step: str = "round"
) -> tuple[list[RoundCallback], Callable[[], None] | None]:
    """The per-round callbacks (a progress bar, the user's), and how to stop the bar."""
    callbacks: list[RoundCallback] = []
    stop_progress: Callable[[], None] | None = None
    if progress:
        cb, stop_progress = progress_callback(rounds, step)
        callbacks.append(cb)
    if on_round is not None:
        callbacks.append(on_round)
    return callbacks, stop_progress


def _clock(
    strategy: Strategy,
    durations: Durations | None,
    availability: Availability | None,
    deadline: float | None,
    seed: int,
) -> ClientClock | None:
    """The client model of a run with simulated availability or stragglers, else None."""
    if deadline is not None and strategy.asynchronous:
        raise ValueError(
            f"round_deadline applies to synchronous rounds; {strategy.name} is asynchronous "
            "(bound each task with round_timeout, or slow clients with client_durations)"
        )
    unclocked = strategy.asynchronous or (deadline is None and durations is None)
    if availability is None and unclocked:
        return None
    return ClientClock(durations, availability, seed=seed)


def _scheme(compression: Scheme | str | None, strategy: Strategy, backend: str) -> Scheme | None:
    """The scheme clients compress their updates with, if asked and if it applies.

    A scheme of one's own has no spec to send to clients in other processes: it
    is refused on the process and Ray backends before the run starts (every
    client would fail every round).
    """
    if compression is None:
        return None
    check_scheme(compression)
    check_applies(compression, strategy)
    scheme = scheme_named(compression) if isinstance(compression, str) else compression
    if backend != "inline" and scheme_spec(scheme) is None:
        raise ValueError(
            f"compression {type(scheme).__name__} is a scheme of your own: it runs on "
            f"backend='inline' only, since the {backend} backend names the scheme to its "
            "clients by a spec, which only covey's schemes have (none, float16, bfloat16, "
            "q8, q4, topk:FRACTION)"
        )
    return scheme


def _compression(scheme: Scheme | None) -> dict[str, str]:
    """The run's compression as its history records it: the spec, as a served run keeps it."""
    return {} if scheme is None else {"compression": scheme_spec(scheme) or scheme.name}


def _count_bytes(counter: CompressedTransport, record: RoundRecord) -> None:
    """Move the bytes counted since the last round into ``record``."""
    add_counts(record, counter.take_counts())


def _loop(
    strategy: Strategy,
    transport: Transport | SimulatedAsyncTransport,
    checkpoint: SimCheckpoint,
    options: dict[str, Any],
    on_round: RoundCallback,
) -> Loop:
    """The run's loop: from step 0, or from the checkpoint's last complete round."""
    weights = checkpoint.take_weights()  # the loop holds the model, until round 1 replaces it
    if checkpoint.store is None:
        return open_loop(strategy, transport, weights, on_round=on_round, simulated=True, **options)
    return open_loop(
        checkpoint.flushing(strategy),
        transport,
        weights,
        on_round=on_round,
        history=checkpoint.history,
        agg_state=checkpoint.agg_state(strategy, weights),
        simulated=True,
        **options,
    )


@flower_keywords
def simulate(
    client_fn: ClientFn,
    num_clients: Count,
    rounds: Count,
    strategy: Strategy | None,
    initial_weights: Weights | Callable[[], Weights],
    evaluate_fn: EvaluateFn | None = None,
    *,
    backend: Backend = "inline",
    seed: Count = 0,
    num_workers: Count | None = None,
    round_timeout: Real | None = None,
    progress: bool = False,
    on_round: RoundCallback | Sequence[RoundCallback] | None = None,
    run_dir: str | Path | None = None,
    client_durations: Durations | None = None,
    availability: Availability | None = None,
    round_deadline: Real | None = None,
    client_cache: Count | None = None,
    client_resources: Mapping[str, Any] | None = None,
    client_group: Callable[[int], str] | None = None,
    ray_address: str | None = None,
    ray_start_timeout: Real | None = None,
    compression: Scheme | str | None = None,
    start_method: StartMethod | None = None,
    resume: bool = False,
    keep_last: Count | None = SIMULATION_KEEPS,
) -> SimulationResult:
    """Simulate a federation of ``num_clients`` clients for ``rounds`` rounds.

    Args:
        client_fn: ``cid -> Client`` for ``cid`` in ``0 .. num_clients - 1``;
            each client is built once and reused across rounds.
        num_clients: How many clients the federation has.
        rounds: How many rounds to run.
        strategy: What to do each round; None means :func:`covey.FedAvg` with its defaults.
        initial_weights: The global model before round 1 (step 0), or a function
            returning it, called once. Given a function, simulate() keeps no reference
            of its own, so the step-0 model is freed after round 1 unless the caller
            holds it.
        evaluate_fn: ``(round, weights) -> (loss, metrics)`` on the server, run at
            round 0 and after every round.
        backend: ``"inline"`` (sequential, in this process, arrays passed by
            reference), ``"process"`` (a pool of worker processes) or ``"ray"``
            (long-lived Ray actors, local or on a cluster); all give the same bits.
        seed: Seeds client sampling.
        num_workers: Worker processes for the process backend; most actors per
            client group for the Ray backend. The inline backend, which runs every
            client in this process one at a time, takes and ignores it, so that one
            call switches backends by ``backend`` alone.
        round_timeout: Seconds clients have to reply in a round. The inline backend
            runs clients one after another and cannot interrupt one: it bounds each
            client's own call, dropping a reply that took longer. ``None`` (the
            default) sets no limit: a client that never returns holds the run.
        progress: Draw a progress bar, updated once per round.
        on_round: Called with each round's record as it finishes (or a list of such
            functions, called in order). With ``run_dir``, at least once per round
            across a stop: a resume first calls it with the saved round whose
            callbacks had not all returned (one raised, or the process was killed).
        run_dir: If given, ``history.json`` is written there after every round (a
            file over 1 MiB as often as keeps that under 5% of the run's time),
            ``run.json`` (strategy, rounds, start time, status) at start and end, and
            each completed round is checkpointed (``run.sqlite``, ``weights/``: the
            global model and aggregation state, written while the next round trains),
            so that ``resume=True`` can continue the run if its process dies.
            Every round's record is kept; the weights files of the newest
            ``keep_last`` rounds only.
        client_durations: For an asynchronous strategy (:func:`covey.FedBuff`): the
            simulated seconds a fit task takes, ``(cid, rng) -> seconds`` or one value
            per client (default 1.0). Time is virtual: nothing sleeps. In that mode
            ``rounds`` counts global updates and ``round_timeout`` bounds each task.
            With a synchronous strategy each round records its simulated seconds
            (``aggregate_info["clock"]``, the time so far), and with ``round_deadline``
            the clients slower than the deadline are stragglers.
        availability: A client is online with this probability each round, or
            ``(cid, round) -> bool``, or a boolean trace ``trace[cid, t]``; offline
            clients that are sampled drop out (see :class:`covey.sim.ClientClock`).
        round_deadline: Simulated seconds a synchronous round's fit may take:
            clients whose ``client_durations`` exceed it are stragglers, not used.
        client_cache: Most clients kept built (per actor with Ray; not available
            with the process backend); None keeps every client built, 0 builds a
            client for each task. Bound it for federations of many clients: memory
            then does not grow with ``num_clients``.
        client_resources: Ray: what one client needs, e.g. ``{"num_cpus": 1,
            "num_gpus": 0.25}``, or one such mapping per group with ``client_group``.
        client_group: Ray: ``cid -> group name`` when resources differ per group.
        ray_address: Ray: a running cluster to join; None starts (and stops) a local Ray.
        ray_start_timeout: Ray: seconds a cluster at ``ray_address`` has to answer (or
            a local Ray's GCS to start) and the actors have to start (those that
            replace actors lost mid-run too); None waits 10 s for the cluster, 120 s
            for a local Ray and 120 s for the actors. Raise it for a slow or busy
            cluster or machine (nodes that take long to start, an autoscaler).
        compression: Clients send their updates compressed with this scheme (see
            :mod:`covey.compress`; a name such as ``"q8"`` or a scheme object). Each
            round's record (an asynchronous run's: each global update's) holds the
            bytes of its arrays both ways, compressed or not.
        start_method: How the process backend starts its workers: ``"fork"`` (fast;
            ``client_fn`` may be any callable), ``"forkserver"`` or ``"spawn"`` (safe
            when this process runs other threads; ``client_fn`` must pickle and be
            importable in the workers). None forks, warning once if this process
            runs other Python threads.
        resume: Continue the run in ``run_dir`` after its last complete round, with
            the strategy, ``num_clients``, ``seed``, compression and model it was
            started with (others are refused, naming what differs); ``rounds`` is
            the last round to run. Clients are built again with ``client_fn``. The
            resumed run gives the uninterrupted run's weights and history, bit for
            bit, if clients keep no state of their own between rounds. A run with
            top-k compression or an asynchronous strategy cannot resume.
        keep_last: With ``run_dir``: keep the weights files of the newest
            ``keep_last`` rounds (2 or more), or of every round with None, so that
            ``RunStore.load_round`` can read any round's model. Older files are
            deleted as rounds are saved; records stay, and results are the same
            whatever it is. At least two are kept: a resume starts after the
            newest complete round and falls back on the one before should the
            newest file be damaged, so 1 is refused. A resumed run prunes with
            the ``keep_last`` it is given now (and records it in its settings),
            not the one it was started with. Without ``run_dir`` nothing is
            saved, and a value other than 2 is refused.

    Returns:
        The final weights and the history.

    Raises:
        covey.FederationError: if a round cannot complete (too few clients replied);
            the error carries the history and weights so far.
        ValueError: an option out of range (before any client is built), or a run
            in ``run_dir`` that cannot be resumed with these settings.

    Example:
        >>> import numpy as np, covey
        >>> class Half(covey.Client):
        ...     def fit(self, weights, config):
        ...         return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)
        >>> result = covey.simulate(lambda cid: Half(), num_clients=4, rounds=2,
        ...                         strategy=covey.FedAvg(), initial_weights={"w": np.ones(3)})
        >>> result.weights["w"].tolist()
        [0.25, 0.25, 0.25]
    """
    start = time.perf_counter()
    num_clients, rounds = plain_count(num_clients), plain_count(rounds)
    seed, client_cache = plain_count(seed), plain_count(client_cache)
    num_workers, round_timeout = plain_count(num_workers), plain_real(round_timeout)
    keep_last, round_deadline = plain_count(keep_last), plain_real(round_deadline)
    ray_start_timeout = plain_real(ray_start_timeout)
    on_round = checked_callbacks(evaluate_fn, on_round)  # a list of callbacks: one calling each
    run_dir = None if run_dir is None else a_folder(run_dir)
    initial_weights = made(initial_weights)  # a function making them is called
    if initial_weights is None:
        raise WeightsError("simulate() needs initial_weights: the global model at step 0")
    initial_weights = native(initial_weights)  # NumPy scalars as 0-d arrays, native order
    strategy = _checked(strategy, num_clients, rounds)
    _check_options(seed, round_timeout, client_cache, num_workers)
    _check_flags(client_fn, progress, resume)
    check_start_method(start_method)
    _check_durations(client_durations, num_clients)
    _check_availability(availability, num_clients)
    _check_keep_last(keep_last, run_dir)
    clock = _clock(strategy, client_durations, availability, round_deadline, seed)
    scheme = _scheme(compression, strategy, backend)
    config = run_config(
        strategy, rounds=rounds, seed=seed, backend=backend, num_clients=num_clients
    )
    config.update(_compression(scheme))
    config.update(ray_settings(backend, client_resources, ray_address, ray_start_timeout))
    config["clients"] = clients_setup(client_durations, availability, round_deadline)
    check_resumable(resume, run_dir, strategy, scheme)
    meta: dict[str, Any] = {
        "kind": "simulated",
        "strategy": strategy.name,
        "rounds": rounds,
        "num_clients": num_clients,
        "backend": backend,
        "started": _dt.datetime.now(_dt.UTC).isoformat(),
        "status": "running",
    }
    with run_folder(run_dir, resume) as (history_path, meta_path, resume):
        checkpoint = open_checkpoint(
            meta_path,
            resume=resume,
            strategy=strategy,
            scheme=scheme,
            config=config,
            initial_weights=initial_weights,
            keeps_clients=backend == "process" or client_cache != 0,
            keep_last=keep_last,
        )
        del initial_weights  # the checkpoint holds the model to start from
        meta = checkpoint.run_meta(meta_path, meta)
        checkpoint.callbacks = on_round is not None  # a resume calls a round's left pending
        # Worker processes start here: if anything fails before the run starts, they stop.
        transport = _backend(
            backend,
            client_fn,
            num_clients,
            num_workers=num_workers,
            client_cache=client_cache,
            client_resources=client_resources,
            client_group=client_group,
            ray_address=ray_address,
            ray_start_timeout=ray_start_timeout,
            start_method=start_method,
        )
        try:
            clocked = None
            if clock is not None and not strategy.asynchronous:
                transport = clocked = ClockedTransport(transport, clock, deadline=round_deadline)
                clocked.now = checkpoint.clock()  # the simulated seconds of the saved rounds
            # A run token: client objects that outlive a run start the next without its
            # top-k residuals (a client_fn may hand out the same objects run after run).
            # Asynchronous: bytes count when the virtual clock delivers a reply; synchronous
            # rounds count them as each exchange goes, as a served run's do.
            token, held = secrets.token_hex(8), strategy.asynchronous
            counter = CompressedTransport(transport, scheme, seed=seed, run=token, by_client=held)
            transport = counter
            checkpoint.begin()
            write_run_meta(meta_path, meta)
        except BaseException:
            transport.close()
            checkpoint.end(None, close_only=True)
            raise

        loop: Loop
        history_file = None if history_path is None else HistoryFile(history_path)
        callbacks: list[RoundCallback] = []
        stop_progress: Callable[[], None] | None = None
        # The loop for round_done, emptied when the run ends: a loop whose callback held
        # the loop itself would keep the run's last model and sums (and a process pool's
        # handles) until the collector's next full pass, long after the run returned.
        running: list[Loop] = []

        def round_done(record: RoundRecord) -> None:
            loop = running[0]
            _count_bytes(counter, record)
            if clocked is not None and clocked.rounds and clocked.rounds[-1][0] == record.round:
                record.aggregate_info["clock"] = clocked.now  # simulated seconds, as FedBuff's
            checkpoint.save(record, loop.weights, loop.agg_state)  # while round r + 1 trains
            if history_file is not None:  # a full disk said as the round's files need room
                written_beside(checkpoint.background, history_file.write, loop.history)
            before = written(record)
            for callback in callbacks:
                callback(record)
            checkpoint.called(record, before)  # what they wrote is saved with the next round

        # Everything alive now (imported libraries, the user's data) outlives the run:
        # keep the collector from scanning it again and again while rounds allocate.
        _frozen.freeze()
        try:
            # The bar starts here, so that however the run ends, the finally below stops it.
            step = "update" if strategy.asynchronous else "round"
            callbacks, stop_progress = _callbacks(rounds, progress, on_round, step)
            loop_transport: Transport | SimulatedAsyncTransport = transport
            if strategy.asynchronous:
                workers = int(getattr(transport, "num_workers", 0))
                loop_transport = SimulatedAsyncTransport(
                    transport,
                    durations=clock if clock is not None else client_durations,
                    seed=seed,
                    prefetch=2 * workers,
                    wall_timeout=round_timeout,
                    on_deliver=counter.deliver,
                )
            options = {"evaluate_fn": evaluate_fn, "seed": seed, "round_timeout": round_timeout}
            loop = _loop(strategy, loop_transport, checkpoint, options, round_done)
            running.append(loop)
            loop.history.config = checkpoint.config
            checkpoint.call_pending(on_round)  # the stopped run's last round, first
            with kept_history(loop.history, history_path, history_file):  # however it ends
                loop.run(rounds, start=checkpoint.start)
            checkpoint.end(None)
            meta["status"] = "finished"
        except BaseException as exc:
            meta["status"] = "failed"
            meta["stopped_reason"] = stop_reason(exc)
            checkpoint.end(exc)
            note_resume(exc, run_dir)
            raise
        finally:
            running.clear()
            _frozen.thaw()
            meta["ended"] = _dt.datetime.now(_dt.UTC).isoformat()
            try:
                # A full disk fails this too: the workers stop all the same, and the
                # run's own error, if any, is the one raised.
                end_run_meta(meta_path, meta)
            finally:
                if stop_progress is not None:
                    stop_progress()
                transport.close()
        return SimulationResult(copy(loop.weights), loop.history, time.perf_counter() - start)
