"""A served run as :func:`covey.serve` opens it: its store, its saves, how it ends."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covey.compress import Scheme, scheme_spec
from covey.core._history import History, RoundRecord
from covey.core._recordvalues import written
from covey.core._weights import Weights, WeightsSpec, made, native
from covey.deploy._goodbye import describe, reason_of
from covey.deploy._names import ClientNames
from covey.server._base import RoundCallback
from covey.server._factory import Loop, run_config
from covey.server._lasteval import add_counts
from covey.server._outputs import RunOutputs, write_outputs
from covey.server._resume import resume_point
from covey.server._roundfiles import check_storable
from covey.server._saver import BackgroundSaver, call_pending, flushing, rewritten, written_beside
from covey.server._state import load_state
from covey.server._store import RunStore
from covey.strategies._strategy import Strategy

logger = logging.getLogger("covey")


@dataclass
class ServedRun:
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
    template: Any = None
    """The aggregation state's template (``aggregator.init``) once the run is opened."""
    agg_state: Any = None
    """A resumed run's saved aggregation state, loaded as it is opened."""
    loaded: bool = False
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

    def load_state(self, strategy: Strategy) -> None:
        """Build the aggregation state's template and load the saved state (if any).

        Nothing is stored without a run folder; else the template names the named
        tuples a resume rebuilds. Raises as :func:`~covey.server._state.load_state`.
        """
        self.loaded = True
        if self.store is None or self.weights is None:
            return
        self.template = strategy.aggregator.init(self.weights)
        if self.state is not None:
            self.agg_state = load_state(self.state, self.template)

    def take_state(self, strategy: Strategy) -> tuple[Any, Any]:
        """The state's template and the loaded state, forgotten here (the loop owns them)."""
        if not self.loaded:  # a new run: its template is built once it runs
            self.load_state(strategy)
        taken = (self.template, self.agg_state)
        self.template = self.agg_state = None
        return taken

    def take_weights(self) -> Weights:
        """The starting weights, forgotten here so only the loop holds them."""
        weights, self.weights = self.weights, None
        if weights is None:  # an invariant of this module, not an input check
            raise RuntimeError("internal error: weights is unset")
        return weights


def open_run(
    strategy: Strategy,
    rounds: int,
    initial_weights: Weights | Callable[[], Weights] | None,
    address: str,
    run_dir: str | Path | None,
    opened: RunStore | None,
    seed: int = 0,
    scheme: Scheme | None = None,
) -> ServedRun:
    """Create the run's store, or take the reopened one to resume after its last round.

    A resumed run's aggregation state is loaded here: one that does not load (damaged,
    or saved by a newer covey) refuses the resume before the server listens.
    """
    if opened is not None:
        point = resume_point(opened, initial_weights, rounds)
        config = {**point.config, "rounds": rounds}  # a resumed run may go on for more rounds
        run = ServedRun(
            opened, point.weights, config, point.start, point.history, point.state, point.uncounted
        )
        if point.config.get("rounds") != rounds:  # recorded once a round is saved
            run.new_rounds = rounds
        run.load_state(strategy)
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
    return ServedRun(store, initial_weights, config)
