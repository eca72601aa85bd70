"""A simulation's checkpoints: the deployed server's run store, saver and resume point.

``simulate(run_dir=...)`` keeps what a deployed server keeps in its run folder
(``run.sqlite`` and ``weights/``, see :class:`~covey.server.RunStore`): each
completed round's record, aggregation state (a strategy's optimizer state, a
DP accountant's rounds) and global weights (the files of the newest
``keep_last`` rounds are kept, two by default, every round's with None),
written by the :class:`~covey.server._saver.BackgroundSaver` while the next
round trains, each save atomic, so a process killed at any moment leaves its
last complete round loadable. ``simulate(run_dir=..., resume=True)``
goes on after that round.

Client sampling, availability, stragglers and the compression schemes'
stochastic rounding are seeded by ``(seed, round)``, so nothing else is needed
for the resumed rounds to be the uninterrupted run's, bit for bit, given clients
that keep no state of their own between rounds (a resume builds them again with
``client_fn``, as a deployed client restart does). What covey cannot save is
refused: top-k's error feedback, kept by each client, and an asynchronous
strategy's virtual clock and tasks in flight; such runs keep no checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covey.compress import Scheme, TopK
from covey.core._files import MAX_SETTINGS_BYTES, read_regular
from covey.core._history import History, RoundRecord
from covey.core._recordvalues import Written
from covey.core._weights import Weights, WeightsSpec
from covey.server._callbacks import RoundCallback
from covey.server._kept import SIMULATION_KEEPS
from covey.server._resume import (
    resume_point,
    same_strategy,
    strategy_changes,
    warn_of_unrecorded,
)
from covey.server._roundfiles import WEIGHTS_DIR, check_storable
from covey.server._rundb import DB_NAME
from covey.server._saver import BackgroundSaver, call_pending, flushing, rewritten
from covey.server._served import how_to_continue
from covey.server._state import StateError, load_state, state_types
from covey.server._store import RunStore
from covey.sim._options import RAY_SETTINGS
from covey.sim._rundir import new_run_command
from covey.strategies._strategy import Strategy

__all__ = ["SimCheckpoint", "check_resumable", "open_checkpoint", "rounds_refusal", "unresumable"]

logger = logging.getLogger("covey")


def unresumable(strategy: Strategy, scheme: Scheme | None) -> str | None:
    """Why a simulation of ``strategy`` compressed with ``scheme`` cannot resume, or None."""
    if strategy.asynchronous:
        return (
            f"{strategy.name} is asynchronous: its virtual clock and the tasks in flight "
            "are not checkpointed"
        )
    if isinstance(scheme, TopK):
        return (
            f"its updates are compressed with top-k ({scheme.name}), whose error-feedback "
            "residuals each client keeps: they are not checkpointed, and a resumed run "
            "starting them at zero would not be the run it continues"
        )
    return None


def check_resumable(
    resume: bool, run_dir: object, strategy: Strategy, scheme: Scheme | None
) -> None:
    """Refuse ``resume=True`` without a run folder, or for a run that keeps no checkpoint."""
    if not resume:
        return
    if run_dir is None:
        raise ValueError("resume=True needs run_dir: the folder of the run to continue")
    why = unresumable(strategy, scheme)
    if why is not None:
        raise ValueError(f"this simulation cannot be resumed: {why}")


@dataclass
class SimCheckpoint:
    """The store a simulation saves its rounds in (None: it keeps none), and where it starts.

    Attributes:
        store: The run's store; None for a run that keeps no checkpoint (or a new
            run's, until :meth:`begin`).
        config: What the run's history records of its setup.
        weights: The model the run starts from, until the loop takes it.
        start: The first round to run.
        history: The rounds done before (a resumed run), else None.
        state: The saved aggregation state (a resumed run), else None.
        keep_last: How many rounds keep their weights file (None: every round).
    """

    store: RunStore | None
    config: dict[str, Any]
    weights: Weights | None
    start: int = 1
    history: History | None = None
    state: bytes | None = None
    keep_last: int | None = SIMULATION_KEEPS
    types: dict[str, type] | None = None
    background: BackgroundSaver | None = None
    ended: bool = False
    unstorable: bool = False
    new_run: tuple[Path, dict[str, Any]] | None = None
    """The folder and settings of a new run's store, made by :meth:`begin`."""
    callbacks: bool = False
    """The run has ``on_round`` callbacks: each save marks them pending until the next."""
    returned: int | None = None
    """The last round whose ``on_round`` callbacks returned."""
    rewrite: dict[str, Any] | None = None
    """A saved round's record as its callbacks left it, saved with the next round or at the end."""

    def begin(self) -> None:
        """Make a new run's store, once its clients are up.

        A run that fails to start leaves its folder without one, free for the next try.
        """
        if self.new_run is not None and self.store is None:
            folder, stored = self.new_run
            self.store = RunStore.create(folder, config=stored)  # the folder's lock is held

    def take_weights(self) -> Weights:
        """The weights the run starts from, forgotten here so only the loop holds them."""
        weights, self.weights = self.weights, None
        if weights is None:  # an invariant of this module, not an input check
            raise RuntimeError("internal error: the checkpoint's weights were taken already")
        return weights

    def agg_state(self, strategy: Strategy, weights: Weights) -> Any:
        """The aggregation state to start with: the saved one when resuming, else None."""
        if self.types is not None and self.state is None:  # a new run's, checked already
            return None
        template = strategy.aggregator.init(weights)
        self.types = state_types(template)
        return None if self.state is None else load_state(self.state, template)

    def flushing(self, strategy: Strategy) -> Strategy:
        """``strategy`` whose aggregation first waits for the save in flight, as deployed."""
        return flushing(strategy, lambda: self.background)

    def clock(self) -> float:
        """The simulated seconds the saved rounds took (0.0 for a new run)."""
        rounds = [] if self.history is None else self.history.rounds
        for record in reversed(rounds):
            now = record.aggregate_info.get("clock")
            if isinstance(now, int | float):
                return float(now)
        return 0.0

    def save(self, record: RoundRecord, weights: Weights, agg_state: Any) -> None:
        """Start saving a completed round; it is written while the next round trains.

        A state that cannot be stored (a custom step's) ends the checkpoints, with a
        warning, not the run: a resume then goes on after the last round saved.
        """
        if self.store is None or self.unstorable:
            return
        if self.background is None:
            self.background = BackgroundSaver(self.store, keep_last=self.keep_last)
        rewrite, self.rewrite = self.rewrite, None
        try:
            self.background.submit_round(
                record,
                weights,
                agg_state,
                self.types,
                pending_callbacks=self.callbacks,
                returned=rewrite,
            )
        except StateError as exc:
            self.rewrite = rewrite  # saved as the run ends
            self.unstorable = True
            logger.warning(
                "round %d and later are not checkpointed in %s (a resume goes on after "
                "the last round saved): %s",
                record.round,
                self.store.run_dir,
                exc,
            )

    def call_pending(self, on_round: RoundCallback | None) -> None:
        """Call ``on_round`` with the saved round a stopped run left its callbacks pending in."""
        if self.store is not None:
            called = call_pending(self.store, self.history, self.start, on_round)
            if called is not None:
                self.returned, self.rewrite = called

    def called(self, record: RoundRecord, before: Written) -> None:
        """The round's callbacks returned: what they wrote since ``before`` is saved next.

        Only a round this run saved: one not checkpointed (see :meth:`save`) keeps
        the last saved round's to save.
        """
        self.returned = record.round
        if self.store is not None and not self.unstorable:
            self.rewrite = rewritten(record, before)

    def end(self, exc: BaseException | None, *, close_only: bool = False) -> None:
        """Wait for the last save and mark the run finished or failed; close the store.

        Only the first call does anything; ``close_only`` closes the store of a run
        that never started (its status stays as it was).
        """
        if self.store is None or self.ended:
            return
        self.ended = True
        if close_only:
            self.store.close()
            return
        try:
            if self.background is not None:
                with contextlib.suppress(*(() if exc is None else (Exception,))):
                    self.background.flush()
            try:
                if self.returned is not None:
                    self.store.callbacks_returned(self.returned, self.rewrite)
                self.store.set_status("finished" if exc is None else "failed")
            except OSError as err:
                if exc is None:
                    raise
                logger.error("could not record in %s that the run stopped: %s", self.store, err)
        finally:
            self.store.close()

    def run_meta(self, path: Path | None, meta: dict[str, Any]) -> dict[str, Any]:
        """``run.json`` of the run: ``meta``, or for a resumed run its own, running again."""
        if path is None or self.start <= 1 or not path.is_file():
            return meta
        with contextlib.suppress(OSError, ValueError, RecursionError):  # damaged: as new
            kept = json.loads(read_regular(path, MAX_SETTINGS_BYTES).decode("utf-8"))
            if isinstance(kept, dict):
                for key in ("ended", "stopped_reason"):
                    kept.pop(key, None)
                resumed = kept.get("resumed")
                now = _dt.datetime.now(_dt.UTC).isoformat()
                kept["resumed"] = [*resumed, now] if isinstance(resumed, list) else [now]
                now_serving = {"rounds": meta["rounds"], "backend": meta["backend"]}
                return {**kept, "status": "running", **now_serving}
        return meta


def open_checkpoint(
    meta_path: Path | None,
    *,
    resume: bool,
    strategy: Strategy,
    scheme: Scheme | None,
    config: dict[str, Any],
    initial_weights: Weights,
    keeps_clients: bool,
    keep_last: int | None = SIMULATION_KEEPS,
) -> SimCheckpoint:
    """The run's checkpoint store in ``folder``: a new one, or the run to resume.

    Args:
        meta_path: The ``run.json`` of the run folder (held by this process), or
            None for a run without a folder.
        resume: Continue the run in ``folder`` after its last complete round.
        strategy: The run's strategy.
        scheme: The run's compression, if any.
        config: What the run's history records of its setup (:func:`run_config`).
        initial_weights: The step-0 model.
        keeps_clients: Whether clients are kept built from round to round.
        keep_last: How many rounds keep their weights file (None: every round),
            recorded in the run's settings; a resumed run's replaces the one it had.

    Returns:
        The store, and the weights and round to start from; without a store when
        there is no folder or the run cannot resume (it then keeps no checkpoint).

    Raises:
        ValueError: naming what differs, if the run in ``folder`` cannot be resumed
            with these settings (or holds no simulation checkpoint, or is finished).
    """
    check_resumable(resume, meta_path, strategy, scheme)
    if meta_path is None or unresumable(strategy, scheme) is not None:
        return SimCheckpoint(None, config, initial_weights)
    folder = meta_path.parent
    if not resume:
        spec = WeightsSpec.of(initial_weights)
        check_storable(spec)
        try:  # refused as a deployed server refuses it, but only the checkpoints go
            types = state_types(strategy.aggregator.init(initial_weights))
        except StateError as exc:
            logger.warning("%s keeps no checkpoint to resume from: %s", folder, exc)
            return SimCheckpoint(None, config, initial_weights)
        config = {**config, "keep_last": keep_last}
        stored = {**config, "kind": "simulated", "model": spec.describe()}
        return SimCheckpoint(
            None,
            config,
            initial_weights,
            keep_last=keep_last,
            types=types,
            new_run=(folder, stored),
        )
    store = _open(folder, config["rounds"])
    try:
        _check_same(store, strategy, config)
        point = resume_point(store, initial_weights, config["rounds"])
        # run.sqlite says them as history.json does
        now = {"rounds": config["rounds"], "keep_last": keep_last, "backend": config.get("backend")}
        # and the Ray options it runs with now (none off Ray)
        now.update({k: config.get(k) for k in RAY_SETTINGS if k in config or k in store.config})
        store.update_config(now)
        store.take_over(point.uncounted)  # running again (it said failed), as a served run
    except BaseException:
        store.close()
        raise
    _warn_of_client_state(strategy, keeps_clients, point.start)
    settings = {k: v for k, v in point.config.items() if k not in ("kind", "model")}
    settings["rounds"] = config["rounds"]  # a resumed run may be asked for more rounds
    settings["keep_last"] = keep_last  # and may keep more or fewer rounds' files
    settings["backend"] = config.get("backend")  # and run on another backend, as run.json says
    settings.update({k: v for k, v in now.items() if k in RAY_SETTINGS})
    return SimCheckpoint(
        store, settings, point.weights, point.start, point.history, point.state, keep_last
    )


def _open(folder: Path, rounds: int) -> RunStore:
    """The simulation checkpoint in ``folder``, or ValueError saying why there is none.

    A finished run is continued only when asked for more rounds than it ran, a
    stopped one only when asked for no fewer.
    """
    if not (folder / DB_NAME).is_file():
        raise ValueError(_no_checkpoint(folder))
    store = RunStore.open(folder)  # the folder's lock is held by the run already
    try:
        if store.config.get("kind") != "simulated":
            raise ValueError(
                f"run_dir {folder} holds a deployed run, not a simulation: continue it "
                f"with {how_to_continue(folder)}"
            )
        refused = _rounds_refusal(folder, store, rounds)
        if refused is not None:
            raise ValueError(refused)
    except BaseException:
        store.close()
        raise
    return store


def _rounds_refusal(folder: Path, store: RunStore, rounds: int) -> str | None:
    """Why the simulation ``store`` in ``folder`` cannot be resumed with ``rounds``, or None.

    A finished run is continued only when asked for more rounds than it ran, a
    stopped one only when asked for no fewer.
    """
    last = store.last_round()
    if store.info()["status"] == "finished" and rounds <= (last or 0):
        return (
            f"the simulation in {folder} is finished (round {last} was its last): "
            f"there is nothing to resume with rounds={rounds}; to train it on, resume "
            f"it with more rounds than {last} (simulate(rounds=...), covey run --set "
            f"rounds={(last or 0) + 1} or more), or give a new run a folder of its own"
        )
    if rounds < (last or 0):
        return (
            f"the simulation in {folder} stopped after round {last}: it cannot be "
            f"resumed with rounds={rounds}, fewer rounds than it ran; resume it with "
            f"rounds={last} or more, or give a new run a folder of its own"
        )
    return None


def rounds_refusal(folder: Path, rounds: int) -> str | None:
    """Why the simulation in ``folder`` cannot be resumed with ``rounds``, read before it starts.

    None where it can, and where ``folder`` holds no simulation checkpoint this
    covey can read (resuming says why).
    """
    if not (folder / DB_NAME).is_file():
        return None
    try:
        with RunStore.open(folder) as store:  # to read: nothing is written
            if store.config.get("kind") != "simulated":
                return None
            return _rounds_refusal(folder, store, rounds)
    except (OSError, ValueError):
        return None


def _no_checkpoint(folder: Path) -> str:
    """Why the run in ``folder``, which has no ``run.sqlite``, cannot be resumed, and what to do."""
    again = f"`{new_run_command(folder)}`"
    weights = folder / WEIGHTS_DIR
    if weights.is_dir():  # made with run.sqlite: the run kept a checkpoint, and lost half of it
        files = sorted(weights.glob("round-*.safetensors"))
        left = f"{len(files)} round file{'s' if len(files) != 1 else ''}" if files else "no file"
        return (
            f"run_dir {folder} cannot be resumed: its {DB_NAME} is missing (deleted or moved), "
            f"though its {WEIGHTS_DIR}/ is still there ({left}); {DB_NAME} held the rounds' "
            f"records and aggregation state, without which no round can be resumed from. Put "
            f"the run's {DB_NAME} back (with its {DB_NAME}-wal, if one was beside it) and "
            f"resume again, or run the simulation again from round 1 with {again} (a new "
            "folder)"
        )
    if (folder / "run.json").is_file() or (folder / "history.json").is_file():
        return (
            f"run_dir {folder} holds no simulation checkpoint to resume: it has no {DB_NAME} "
            f"and no {WEIGHTS_DIR}/. Either its run kept none (one whose aggregation state "
            "cannot be stored, said as a warning as it started; an asynchronous strategy's; "
            "one compressed with top-k; or a simulation by an older covey), or they were "
            f"deleted or moved: put them back to resume it, or run it again with {again}"
        )
    return f"run_dir {folder} holds no simulation checkpoint to resume (no {DB_NAME})"


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists), to compare with a stored one."""
    return json.loads(json.dumps(value, default=str))


_STRATEGY_PARTS = ("hyperparameters", "options", "aggregator")


def _check_same(store: RunStore, strategy: Strategy, config: dict[str, Any]) -> None:
    """Refuse settings that would not continue the stored run, naming each that differs."""
    same_strategy(store, strategy)
    stored, given = store.config, _plain(config)
    changes = [
        f"strategy {change}"
        for change in strategy_changes(stored.get("strategy"), strategy, _STRATEGY_PARTS)
    ]
    for key in ("num_clients", "seed", "compression"):
        if stored.get(key) != given.get(key):
            changes.append(f"{key} was {stored.get(key)!r}, is {given.get(key)!r} now")
    # How clients come and go (recorded by runs of covey since it was, so checked then).
    kept, now = stored.get("clients"), given.get("clients") or {}
    for key, was in kept.items() if isinstance(kept, dict) else ():
        if was != now.get(key):
            changes.append(f"{key} was {was!r}, is {now.get(key)!r} now")
    if changes:
        raise ValueError(
            f"the simulation in {store.run_dir} cannot be resumed with other settings than "
            f"it was started with: {'; '.join(changes)}. Resume it as it was started, or "
            "give a new run a folder of its own"
        )
    warn_of_unrecorded(store, strategy)


def _warn_of_client_state(strategy: Strategy, keeps_clients: bool, start: int) -> None:
    """Warn once per resume that clients are rebuilt: what they kept is gone."""
    held = []
    if keeps_clients:
        held.append("clients are kept built from round to round (client_cache)")
    if "scaffold" in strategy.name.lower():
        held.append(f"{strategy.name}'s clients keep their control variates")
    if not held or start <= 1:
        return
    logger.warning(
        "resuming after round %d: the clients are built again with client_fn, as a "
        "deployed client that restarts is; %s, and what a client object kept between "
        "rounds (a local optimiser's moments, a learning-rate schedule's step) starts "
        "afresh, so the resumed rounds match an uninterrupted run's only if fit does not "
        "depend on it: keep such state on disk (covey.sim.ClientState, "
        "SklearnClient(state_path=...), the ready clients' scaffold_path=)",
        start - 1,
        " and ".join(held),
    )
