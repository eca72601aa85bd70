"""``covey.serve``: run the server of a real federation over gRPC, resumable after a crash."""

from __future__ import annotations

import datetime as _dt
import logging
import pickle
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from covey.core._history import History, RoundRecord
from covey.core._weights import Array, Weights, WeightsSpec
from covey.server._base import EvaluateFn, RoundCallback
from covey.server._factory import open_loop, run_config
from covey.server._outputs import write_outputs
from covey.server._store import RunStore
from covey.server._sync import RoundLoop
from covey.strategies._strategy import Strategy
from covey.transport.grpc._server import GrpcServerTransport, ServerTLS

logger = logging.getLogger("covey")


@dataclass
class ServerApp:
    """Everything the server side of a federation needs; what ``covey server --app`` loads.

    Args:
        strategy: What to do each round.
        initial_weights: The global model at step 0 (or a function returning it).
        rounds: How many rounds to run (the CLI's ``--rounds`` overrides it).
        evaluate_fn: ``(round, weights) -> (loss, metrics)`` on the server.
        seed: Seeds client sampling.
    """

    strategy: Strategy
    initial_weights: Weights | Callable[[], Weights]
    rounds: int = 3
    evaluate_fn: EvaluateFn | None = None
    seed: int = 0

    def weights(self) -> Weights:
        """The initial weights (calling ``initial_weights`` if it is a function)."""
        w = self.initial_weights
        return w() if callable(w) else w


@dataclass
class ServeResult:
    """How a served run ended: final weights (read-only arrays), history, where its state lives."""

    weights: dict[str, Array]
    history: History
    run_dir: Path | None


def tls_from_dir(directory: str | Path) -> ServerTLS:
    """Load the server's TLS material from a federation folder made by ``covey certs init``."""
    from covey.deploy.certs import is_revoked, load_revoked

    d = Path(directory)
    missing = [n for n in ("ca.pem", "server.pem", "server.key") if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{d} is not a federation folder (missing {', '.join(missing)}); "
            "create one with `covey certs init --dir DIR`"
        )

    def revoked(pem: bytes) -> bool:
        return is_revoked(pem, load_revoked(d))

    return ServerTLS(
        ca=(d / "ca.pem").read_bytes(),
        cert=(d / "server.pem").read_bytes(),
        key=(d / "server.key").read_bytes(),
        is_revoked=revoked,
    )


def serve(
    strategy: Strategy,
    rounds: int,
    initial_weights: Weights | None,
    address: str = "127.0.0.1:9092",
    *,
    evaluate_fn: EvaluateFn | None = None,
    tls: ServerTLS | None = None,
    certs: str | Path | None = None,
    insecure: bool = False,
    run_dir: str | Path | None = None,
    resume: bool = False,
    seed: int = 0,
    round_timeout: float | None = None,
    wait_timeout: float | None = 300.0,
    heartbeat: float = 5.0,
    max_clients: int = 1000,
    on_round: RoundCallback | None = None,
    on_listen: Callable[[int], None] | None = None,
    on_event: Callable[[str, str, str], None] | None = None,
    client_names: dict[int, str] | None = None,
    plot: bool = True,
) -> ServeResult:
    """Serve a federation: wait for clients, run ``rounds`` rounds, say goodbye.

    Args:
        strategy: What to do each round.
        rounds: The last round to run.
        initial_weights: The global model at step 0 (ignored when resuming).
        address: ``host:port`` to listen on; port 0 picks a free port (see ``on_listen``).
        evaluate_fn: ``(round, weights) -> (loss, metrics)`` on the server.
        tls: TLS material; or give ``certs``, a folder made by ``covey certs init``.
        certs: The federation folder holding ``ca.pem``, ``server.pem``, ``server.key``.
        insecure: Serve without TLS (local experiments only; a warning is logged).
        run_dir: Where the run's state lives (SQLite + safetensors per round);
            None keeps nothing on disk.
        resume: Continue the run in ``run_dir`` from its last completed round.
        seed: Seeds client sampling.
        round_timeout: Seconds clients have to reply in a round; late replies are discarded.
        wait_timeout: Seconds to wait for enough clients before a round.
        heartbeat: Seconds between heartbeats; silent clients are dropped after six.
        max_clients: Most clients connected at once.
        on_round: Called with each finished round's record.
        on_listen: Called with the bound port once the server listens.
        on_event: Called with ``(client name, event, detail)`` for fleet events
            (``"join"``, ``"leave"``, ``"refused"``, ...).
        client_names: A dict this function keeps filled with each client id's
            name as clients join (e.g. for a console); the history of the run
            holds the same map in ``History.clients``.
        plot: Also draw ``plot.png`` in ``run_dir`` after each round (next to
            ``history.json``, which is always written there).

    Returns:
        The final weights and history.

    Raises:
        covey.FederationError: if a round cannot complete (e.g. too few clients).
    """
    tls = _server_tls(tls, certs, insecure, address)
    run = _open_run(strategy, rounds, initial_weights, address, run_dir, resume, seed)
    names = _ClientNames(run.store, client_names, on_event)
    transport = GrpcServerTransport(
        address,
        tls=tls,
        client_id=names.client_id,
        on_event=names.event,
        heartbeat=heartbeat,
        max_clients=max_clients,
    )
    if on_listen is not None:
        on_listen(transport.port)
    logger.info("covey server listening on port %d", transport.port)

    def round_done(record: RoundRecord) -> None:
        names.name_failures(record)
        loop.history.clients = dict(names.names)
        if run.store is not None:
            state = pickle.dumps(loop.agg_state, protocol=5)
            run.store.save_round(record.round, loop.weights, asdict(record), state)
            write_outputs(run.store.run_dir, loop.history, plot=plot)
        if on_round is not None:
            on_round(record)

    try:
        if strategy.asynchronous and resume:
            raise ValueError("resuming an asynchronous (FedBuff) run is not supported yet")
        loop = open_loop(
            strategy,
            transport,
            run.take_weights(),  # the loop owns the model now: keep no second copy here
            evaluate_fn=evaluate_fn,
            seed=seed,
            round_timeout=round_timeout,
            wait_timeout=wait_timeout,
            on_round=round_done,
            history=run.history,
            agg_state=run.agg_state,
        )
        del initial_weights
        if run.history is None:
            loop.history.config = run.config
        if isinstance(loop, RoundLoop):
            loop.run(rounds, start=run.start)
        else:
            loop.run(rounds)
        if run.store is not None:
            run.store.set_status("finished")
    except BaseException:
        if run.store is not None:
            run.store.set_status("failed")
        raise
    finally:
        transport.close()
        if run.store is not None:
            run.store.close()
    return ServeResult(dict(loop.weights), loop.history, Path(run_dir) if run_dir else None)


def _server_tls(
    tls: ServerTLS | None, certs: str | Path | None, insecure: bool, address: str
) -> ServerTLS | None:
    """The TLS material ``serve`` was given, checked for consistency."""
    if certs is not None:
        if tls is not None:
            raise ValueError("give tls= or certs=, not both")
        tls = tls_from_dir(certs)
    if tls is None and not insecure:
        raise ValueError(
            "serve() needs TLS (certs=DIR from `covey certs init`, or tls=ServerTLS(...)) "
            "or insecure=True for a local experiment"
        )
    if tls is not None and insecure:
        raise ValueError("give TLS material or insecure=True, not both")
    if insecure:
        logger.warning(
            "serving WITHOUT TLS: anyone who can reach %s can join and see the model", address
        )
    return tls


class _ClientNames:
    """Each client id's chosen name: ids stay internal, names go into history and logs."""

    def __init__(
        self,
        store: RunStore | None,
        shared: dict[int, str] | None,
        on_event: Callable[[str, str, str], None] | None,
    ) -> None:
        self.store = store
        self.names = shared if shared is not None else {}
        if store is not None:  # a resumed run knows its clients already
            self.names.update({cid: name for name, cid in store.clients().items()})
        self.on_event = on_event
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def client_id(self, name: str) -> int:
        """The stable id of client ``name``, remembering the name."""
        with self._lock:
            if self.store is not None:
                cid = self.store.client_id(name)
            else:
                cid = self._ids.setdefault(name, len(self._ids))
            self.names[cid] = name
        return cid

    def event(self, name: str, event: str, detail: str) -> None:
        """Record a fleet event in the store and pass it on."""
        if self.store is not None:
            self.store.log_event(name, event, detail)
        if self.on_event is not None:
            self.on_event(name, event, detail)

    def name_failures(self, record: RoundRecord) -> None:
        """Put each failed client's name on its failure."""
        for failure in record.failures:
            failure.name = failure.name or self.names.get(failure.cid, "")


@dataclass
class _Run:
    """A served run as opened: its store (if any) and where its loop starts."""

    store: RunStore | None
    weights: Weights | None
    config: dict[str, Any]
    start: int = 1
    history: History | None = None
    agg_state: Any = None

    def take_weights(self) -> Weights:
        """The starting weights, forgotten here so only the loop holds them."""
        weights, self.weights = self.weights, None
        if weights is None:  # an invariant of this module, not an input check
            raise RuntimeError("internal error: weights is unset")
        return weights


def _open_run(
    strategy: Strategy,
    rounds: int,
    initial_weights: Weights | None,
    address: str,
    run_dir: str | Path | None,
    resume: bool,
    seed: int,
) -> _Run:
    """Create the run's store, or reopen it to resume after its last complete round."""
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs run_dir")
        opened = RunStore.open(run_dir)
        last, weights, _, blob = opened.load_latest_valid()
        opened.discard_after(last)  # rounds whose files did not survive are redone
        history = opened.history()
        history.rounds = [r for r in history.rounds if r.round <= last]
        history.config = opened.config
        state = pickle.loads(blob) if blob else None
        logger.info("resuming the run in %s after round %d", run_dir, last)
        return _Run(opened, weights, history.config, last + 1, history, state)
    if initial_weights is None:
        raise ValueError("serve() needs initial_weights (unless resuming)")
    config = run_config(
        strategy,
        rounds=rounds,
        seed=seed,
        backend="grpc",
        model=WeightsSpec.of(initial_weights).describe(),
        address=address,
        started=_dt.datetime.now(_dt.UTC).isoformat(),
    )
    store = RunStore.create(run_dir, config=config) if run_dir is not None else None
    return _Run(store, initial_weights, config)
