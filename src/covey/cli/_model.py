"""The model a simulated ``covey run`` keeps in its run folder, however the run ends.

A finished run keeps the model after its last round. A run stopped by an error
(a round that cannot complete, the app's ``evaluate_fn`` raising) or by Ctrl-C
keeps the model after its last complete round: the last round of its
``history.json``, the one its central evaluation scored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from covey.core._history import History, RoundRecord
from covey.core._weights import Weights
from covey.server._base import EvaluateFn, check_evaluate_fn

__all__ = ["MODEL_FILE", "RoundModels", "keep_model", "not_saved", "restore_model", "save_model"]

MODEL_FILE = "model.safetensors"


class RoundModels:
    """The model after each round, as the loop hands it to central evaluation.

    ``evaluate`` stands for the app's ``evaluate_fn`` (or for none: it then
    returns None, as no evaluation does): it sees the model after every round
    and keeps it until a later round has finished (``finished``, the round
    callback), so that the model after the last complete round is at hand
    whatever stops the run, the app's own function or Ctrl-C included. The
    model after the round that is finishing is the loop's own: at most one
    more model is held, while a round is evaluated.

    Args:
        evaluate_fn: The app's ``evaluate_fn``, or None.
    """

    def __init__(self, evaluate_fn: EvaluateFn | None) -> None:
        """Wrap ``evaluate_fn`` (refused, as the loop would, if it cannot be called so)."""
        check_evaluate_fn(evaluate_fn)
        self.evaluate_fn = evaluate_fn
        self.models: dict[int, Weights] = {}

    @property
    def evaluate(self) -> EvaluateFn:
        """Keep the model after ``rnd``, then evaluate it with the app's function, if any.

        The function stands for the app's: an error it raises is noted with the
        app's function's name (it is the function's ``__wrapped__``), not this one's.
        """

        def evaluate(rnd: int, weights: Weights) -> Any:
            self.models[rnd] = weights
            return None if self.evaluate_fn is None else self.evaluate_fn(rnd, weights)

        if self.evaluate_fn is not None:
            evaluate.__wrapped__ = self.evaluate_fn  # type: ignore[attr-defined]
        return evaluate

    def finished(self, record: RoundRecord) -> None:
        """Round ``record.round`` finished: the models of the rounds before it are let go."""
        for rnd in [r for r in self.models if r < record.round]:
            del self.models[rnd]

    def after(self, rnd: int) -> Weights | None:
        """The model after round ``rnd``, if still kept."""
        return self.models.get(rnd)


def save_model(
    run_dir: Path,
    last: int,
    weights: Mapping[str, Any],
    console: Console,
    to: Path | None = None,
) -> bool:
    """Keep a simulated run's model (after round ``last``) in its folder; say why if not kept.

    ``to``: the file to write instead of the run folder's ``model.safetensors``.
    """
    from safetensors import SafetensorError

    from covey.core._weights import WeightsSpec
    from covey.server._roundfiles import write_weights

    path = to or run_dir / MODEL_FILE
    try:
        write_weights(path, last, weights, WeightsSpec.of(weights))
    except (OSError, ValueError, SafetensorError) as exc:
        # the file's own name, never that of the temporary it is written through
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        console.print(f"[yellow]the model was not saved to {escape(str(path))}:[/] {escape(why)}")
        return False
    return True


def not_saved(run_dir: Path, last: int, to: Path | None = None) -> str:
    """Why a finished run fails when its model could not be written, and what it kept.

    Args:
        run_dir: The run's folder.
        last: The round the model is of.
        to: The file the model was to be written to; None: ``model.safetensors`` in ``run_dir``.
    """
    from covey.server._roundfiles import WEIGHTS_DIR, weights_file_name

    path = to or run_dir / MODEL_FILE
    said = f"the run finished, but its model after round {last} could not be written to {path}"
    kept = run_dir / WEIGHTS_DIR / weights_file_name(last)
    if kept.is_file():
        return (
            f"{said}; the run folder keeps its rounds: history.json, and that model in "
            f"{kept} (read it with covey.server.RunStore.open(folder).load_round({last}))"
        )
    return f"{said}; the run folder keeps its history.json"


def keep_model(
    run_dir: Path,
    models: RoundModels,
    console: Console,
    history: History | None = None,
    weights: Weights | None = None,
    to: Path | None = None,
) -> str | None:
    """Save the model after the last complete round of a stopped run; where it is, or None.

    Args:
        run_dir: The run's folder.
        models: The models the run kept round by round.
        console: Where to say why the model could not be written.
        history: The run's history (from its error); None reads the run's ``history.json``.
        weights: The model the error carries (a FederationError's), used when the
            round's own is no longer kept. Without either (a round the app's
            ``evaluate_fn`` did not see, as ``evaluate_every`` skips it), the model
            is the one the run folder saved for the round.
        to: The file to write the model to; None: ``model.safetensors`` in ``run_dir``.

    Returns:
        ``the model after round N, the last complete one, is in PATH``, or None
        when no round after round 0 finished (or the model could not be written).
    """
    from covey.cli._runs import last_finished

    if history is None:
        try:
            history = History.load(run_dir)
        except (OSError, ValueError):
            return None
    done = last_finished(history) or 0
    model = models.after(done)
    if model is None:
        model = weights
    if model is None and done > 0:  # a round not evaluated (evaluate_every): its checkpoint
        model = _saved_model(run_dir, done)
    path = to or run_dir / MODEL_FILE
    if done <= 0 or model is None or not save_model(run_dir, done, model, console, path):
        return None
    return f"the model after round {done}, the last complete one, is in {path}"


def _saved_model(run_dir: Path, done: int) -> Weights | None:
    """The model after round ``done`` as the run folder's checkpoint keeps it, if it does."""
    from safetensors import SafetensorError

    from covey.server._store import RunStore

    try:
        with RunStore.open(run_dir) as store:
            weights, _, _ = store.load_round(done)
    except (OSError, ValueError, KeyError, SafetensorError):
        return None  # not saved (a run without a checkpoint), or damaged: nothing to write
    return weights


def model_round(path: Path) -> int | None:
    """The round a run's model file says it holds (its ``covey_round``); None if it says none.

    Only the file's header is read (its length capped as the run store caps it).
    A file that is missing, unreadable, not a regular file, not safetensors or
    without the metadata gives None.
    """
    from covey.core._files import regular_reader
    from covey.server._roundfiles import MAX_HEADER_BYTES

    try:
        # A named pipe would block for ever: only a regular file is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0))
        opened = regular_reader(fd)
        if opened is None:
            return None
        with opened[0] as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= MAX_HEADER_BYTES:
                return None
            stored = json.loads(f.read(length))["__metadata__"]["covey_round"]
        return int(stored) if isinstance(stored, str) and stored.isdigit() else None
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None


def restore_model(run_dir: Path, rounds: int, console: Console) -> str | None:
    """Write the model of a finished run whose ``model.safetensors`` is missing or stale; say so.

    A run killed after its store marked it finished and before the model was
    written (SIGKILL, a power cut) keeps its last round's weights in the run
    folder: those are the model. A resumed run so killed still holds the model
    its first part wrote, of an earlier round: it is replaced too. Nothing is
    done (None) unless the run in ``run_dir`` is finished, ``rounds`` asks for
    no more rounds than it ran, and its model file is missing or not of its
    last round.
    """
    from safetensors import SafetensorError

    from covey.server._store import RunStore

    path = run_dir / MODEL_FILE
    present = path.exists() or path.is_symlink()
    held = model_round(path) if present else None
    try:
        with RunStore.open(run_dir) as store:
            last = store.last_round()
            if store.info()["status"] != "finished" or last is None or rounds > last:
                return None
            if present and held == last:
                return None
            weights, _, _ = store.load_round(last)
    except (OSError, ValueError, KeyError, SafetensorError):
        return None  # the resume says what is wrong with the folder
    if not save_model(run_dir, last, weights, console):
        return None
    if not present:
        was = "missing"
    elif held is None:
        was = "not the model after its last round"
    else:
        was = f"the model after round {held}"
    return (
        f"the run in {run_dir} finished after round {last}, but its {MODEL_FILE} was "
        f"{was} (the run was stopped before writing it): the model after round {last}, "
        f"kept in its run folder, is now in {path}"
    )


def finished_unmarked(run_dir: Path, rounds: int) -> tuple[History, Weights] | None:
    """The history and last model of a run that finished but was stopped before it said so.

    Ctrl-C or SIGTERM after the run's store marked its last round finished (as
    the store closed, or ``run.json`` was written) leaves every round done and
    kept, while ``run.json`` says the run was interrupted. None unless the store
    is finished, ``rounds`` asks for no more rounds than it ran, ``run.json``
    does not say finished and ``history.json`` holds the last round.
    """
    from safetensors import SafetensorError

    from covey.core._files import MAX_SETTINGS_BYTES, read_json_object
    from covey.server._store import RunStore

    meta = read_json_object(run_dir / "run.json", MAX_SETTINGS_BYTES)
    if meta is None or meta.get("status") == "finished":
        return None
    try:
        with RunStore.open(run_dir) as store:
            last = store.last_round()
            if store.info()["status"] != "finished" or last is None or rounds > last:
                return None
            weights, _, _ = store.load_round(last)
        history = History.load(run_dir)
    except (OSError, ValueError, KeyError, SafetensorError):
        return None  # the resume says what is wrong with the folder
    if not history.rounds or history.rounds[-1].round != last:
        return None
    return history, weights
