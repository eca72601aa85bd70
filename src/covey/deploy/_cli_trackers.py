"""``--tensorboard`` and ``--mlflow``: the trackers ``covey server`` and ``covey run`` log to.

Both commands take the same three settings (flags, ``--config`` keys, keys of a
project's tables): ``tensorboard`` (a folder of event files), ``mlflow`` (a
tracking URI or a folder) and ``mlflow_experiment``. The loggers are opened, and
so refused, before the server listens or the simulation starts, and closed as
the run ends, fails or is interrupted. The MLflow run's id is kept in the run
folder (:data:`TRACKERS_FILE`), so that a resumed run goes on logging to it, and
so are the tracker flags the command line gave, so that the command that
continues the run (``covey runs show``, the dashboard) repeats them.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from urllib.parse import unquote, urlsplit

import typer
from rich.markup import escape

from covey.deploy._cli_errors import fail
from covey.server._served import TRACKERS_FILE

if TYPE_CHECKING:  # covey.core brings NumPy, which `covey --help` goes without
    from covey.core import RoundRecord

logger = logging.getLogger("covey")

__all__ = [
    "TRACKERS_FILE",
    "TRACKER_KEYS",
    "MLflowExperimentFlag",
    "MLflowFlag",
    "TensorBoardFlag",
    "Trackers",
    "open_trackers",
    "pasted_anywhere",
]

TRACKER_KEYS = ("tensorboard", "mlflow", "mlflow_experiment")
"""The settings naming a run's trackers, as flags (``--mlflow-experiment``) and keys."""


TensorBoardFlag = Annotated[
    str | None,
    typer.Option(
        "--tensorboard",
        metavar="DIR",
        help="Log each round to TensorBoard event files in this folder (covey\\[tensorboard]).",
    ),
]
MLflowFlag = Annotated[
    str | None,
    typer.Option(
        "--mlflow",
        metavar="URI",
        help="Log each round to MLflow: a tracking URI, or a folder for a local store, e.g. "
        "file:./mlruns (covey\\[mlflow]).",
    ),
]
MLflowExperimentFlag = Annotated[
    str | None,
    typer.Option(
        "--mlflow-experiment",
        metavar="NAME",
        help="The MLflow experiment of --mlflow (default: the project's name, or covey).",
    ),
]


def _is_uri(text: str) -> bool:
    """Whether ``text`` is a tracking URI (``file:...``, ``http://...``), not a folder."""
    return "://" in text or text.lower().startswith("file:")


def _store_key(store: str) -> str:
    """``store`` as compared with the one a resumed run logged to.

    A folder, or a ``file:`` URI (of a relative path, MLflow's from the working
    folder, or of an absolute one, ``file:///...``), is resolved: the same store,
    however it is named and from any folder.
    """
    if not _is_uri(store):
        return str(Path(store).expanduser().resolve())
    if not store.lower().startswith("file:"):
        return store
    path = store[5:]
    if path.startswith("//"):  # file:///abs/mlruns, file://localhost/abs/mlruns
        parsed = urlsplit(store)
        if parsed.netloc not in ("", "localhost"):
            return store
        path = unquote(parsed.path)
    return str(Path(path).resolve())


def pasted_anywhere(flags: dict[str, str]) -> dict[str, str]:
    """The tracker ``flags`` as a command pasted in any folder gives them: folders made absolute.

    A ``--tensorboard`` folder, or an ``--mlflow`` folder or ``file:`` URI of a
    relative path, is resolved; any other tracking URI is kept as it is.
    """
    pasted = dict(flags)
    if "tensorboard" in pasted:
        pasted["tensorboard"] = str(Path(pasted["tensorboard"]).expanduser().resolve())
    store = pasted.get("mlflow")
    if store is not None and (not _is_uri(store) or store.lower().startswith("file:")):
        pasted["mlflow"] = _store_key(store)
    return pasted


class Trackers:
    """A run's trackers: a round callback, and a context closing them as the run ends.

    Leaving the ``with`` block closes each logger; the MLflow run ends as
    FINISHED, FAILED (an error) or KILLED (interrupted).
    """

    def __init__(
        self,
        loggers: list[Any],
        run_dir: Path,
        kept: dict[str, str] | None,
        flags: dict[str, str] | None = None,
    ) -> None:
        """What to keep in ``run_dir`` (:data:`TRACKERS_FILE`) once the run has started.

        ``kept``: the new MLflow run, if one was started (a resumed run's stays);
        ``flags``: the tracker flags the command line gave, repeated by the command
        that continues the run (None: the file is left as it is).
        """
        self.loggers = loggers
        self._run_dir = run_dir
        self._kept = kept
        self._flags = flags
        self._recorded = flags is None and kept is None
        self._logged = False
        self._before: bytes | None = None  # the file as the run's start found it
        self._started = False

    def __call__(self, record: RoundRecord) -> None:
        """Log the round to every tracker; after the first, keep the MLflow run and the flags."""
        self._logged = True
        for logger in self.loggers:
            logger(record)
        self._record()

    def started(self) -> None:
        """Keep the MLflow run and the tracker flags now: the run has started in its folder.

        A run killed (``kill -9``) before it logged a round then keeps them too. A run
        that fails (an error, not an interruption) before it logs a round gets back
        the file it had, as one that never started.
        """
        if self._recorded:
            return
        path = self._run_dir / TRACKERS_FILE
        try:
            self._before = path.read_bytes() if path.is_file() else None
        except OSError:
            return  # unreadable: kept after the first round, as before
        self._started = True
        self._record()

    def _record(self) -> None:
        """Keep the MLflow run and the tracker flags in the run folder, once.

        The file keeps the MLflow run a resumed run goes on logging to (unless
        another was started) and the flags of the run's latest start, none if it
        had none; a run that gave none and keeps no file gets none.
        """
        if self._recorded:
            return
        self._recorded = True
        from covey.core._files import MAX_SETTINGS_BYTES, atomic_write, read_json_object

        path = self._run_dir / TRACKERS_FILE
        held = read_json_object(path, MAX_SETTINGS_BYTES)
        mlflow = self._kept if self._kept is not None else (held or {}).get("mlflow")
        wanted = {"mlflow": mlflow} if mlflow is not None else {}
        wanted["flags"] = dict(self._flags or {})
        if wanted != held and (held is not None or mlflow is not None or wanted["flags"]):
            atomic_write(path, json.dumps(wanted))

    def close(self, status: str = "FINISHED") -> None:
        """Close every logger (an MLflow run ends with ``status``).

        A run interrupted before it logged a round keeps its tracker flags too, if
        it started (its ``run.sqlite`` is there): the command that continues it
        repeats them. One that failed before it logged a round after
        :meth:`started` gets back the file it found.
        """
        for logger in self.loggers:
            if hasattr(logger, "run_id"):
                logger.close(status)
            else:
                logger.close()
        if status == "KILLED" and (self._run_dir / "run.sqlite").is_file():
            self._record()
        elif status == "FAILED" and self._started and not self._logged:
            self._unstart()

    def _unstart(self) -> None:
        """Put back the file :meth:`started` found (none: remove the one it wrote)."""
        from covey.core._files import atomic_write

        path = self._run_dir / TRACKERS_FILE
        try:
            if self._before is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, self._before)
        except OSError:
            pass  # the error that stopped the run is the one to report

    def __enter__(self) -> Trackers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


def _text(value: Any, name: str, example: str) -> str | None:
    """A setting's value as text, or None; refused when it is not text."""
    if value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        fail(f"{name} = {value!r}: give it as text, e.g. {example}")
    return value


def _kept_experiment(run_dir: Path) -> str | None:
    """The MLflow experiment :data:`TRACKERS_FILE` says the run logged to, if it says one."""
    from covey.core._files import MAX_SETTINGS_BYTES, read_json_object

    kept = read_json_object(run_dir / TRACKERS_FILE, MAX_SETTINGS_BYTES) or {}
    mlflow = kept.get("mlflow")
    found = mlflow.get("experiment") if isinstance(mlflow, dict) else None
    return found if isinstance(found, str) else None


def _kept_run_id(run_dir: Path, store: str, experiment: str) -> str | None:
    """The MLflow run a resumed run logged to, if it was in ``store`` and ``experiment``."""
    from covey.core._files import MAX_SETTINGS_BYTES, read_json_object

    kept = read_json_object(run_dir / TRACKERS_FILE, MAX_SETTINGS_BYTES) or {}
    mlflow = kept.get("mlflow")
    if not isinstance(mlflow, dict) or not isinstance(mlflow.get("run_id"), str):
        return None
    if mlflow.get("store") != _store_key(store) or mlflow.get("experiment") != experiment:
        return None  # another store or experiment: a run of its own there
    return str(mlflow["run_id"])


def tracker_flags(values: tuple[Any, ...], s: Any) -> dict[str, Any]:
    """The ``flags`` of :func:`open_trackers` that name the trackers.

    ``values``: the command line's of :data:`TRACKER_KEYS` (None: not given), else
    those of ``s`` (a ``--config`` file's settings).
    """
    given = {k: v if v is not None else s.get(k) for k, v in zip(TRACKER_KEYS, values, strict=True)}
    names = {
        k: s.name(v, k, "--" + k.replace("_", "-"))
        for k, v in zip(TRACKER_KEYS, values, strict=True)
    }
    typed = {k: str(v) for k, v in zip(TRACKER_KEYS, values, strict=True) if v is not None}
    return {"trackers": given, "tracker_names": names, "tracker_flags": typed}


def open_trackers(flags: dict[str, Any], refused: Callable[[], Any] | None = None) -> Trackers:
    """Open the trackers ``flags`` names for the run in ``flags["run"]``, or fail (status 2).

    Args:
        flags: ``trackers``: the value of each of :data:`TRACKER_KEYS` (None: not given);
            ``tracker_names``: where each came from (``--tensorboard``, a file's key),
            for errors; ``run``: the run's folder; ``resuming``: whether the run is
            resumed (its MLflow run goes on); ``experiment``: the MLflow experiment
            when ``mlflow_experiment`` is not given (default ``covey``);
            ``tracker_flags``: those of :data:`TRACKER_KEYS` the command line gave,
            kept in the run folder (folders made absolute) for the command that
            continues the run.
        refused: Called before failing (to remove a run folder made for this run).
    """
    given: dict[str, Any] = flags.get("trackers") or {}
    names = {k: "--" + k.replace("_", "-") for k in TRACKER_KEYS}
    names |= flags.get("tracker_names") or {}
    run_dir: Path = flags["run"]
    resuming = bool(flags["resuming"])
    experiment = str(flags.get("experiment") or "covey")
    tensorboard = _text(given.get("tensorboard"), names["tensorboard"], '"tb/run-1"')
    store = _text(given.get("mlflow"), names["mlflow"], '"file:./mlruns"')
    chosen = _text(given.get("mlflow_experiment"), names["mlflow_experiment"], '"digits"')
    if resuming:
        now = {"tensorboard": tensorboard, "mlflow": store, "mlflow_experiment": chosen}
        if store is not None:
            now["mlflow_experiment"] = experiment if chosen is None else chosen
        _warn_unresumed(run_dir, {k: v for k, v in now.items() if v is not None}, names)
    loggers: list[Any] = []

    def refuse(said: str) -> NoReturn:
        Trackers(loggers, run_dir, None).close("KILLED")
        if refused is not None:
            refused()
        fail(said)

    def opened(key: str, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except (ImportError, OSError, ValueError) as exc:  # ImportError: the extra to install
            refuse(f"{names[key]}: {exc}")

    if chosen is not None and store is None:
        refuse(f"{names['mlflow_experiment']} names an MLflow experiment: give --mlflow URI too")
    if tensorboard is not None:
        others = not resuming and _holds_events(Path(tensorboard).expanduser())
        loggers.append(opened("tensorboard", lambda: _tensorboard(tensorboard)))
        if others:
            _warn_other_runs(loggers[-1].logdir, names["tensorboard"])
    typed = pasted_anywhere(dict(flags.get("tracker_flags") or {}))
    if store is None:
        return Trackers(loggers, run_dir, None, typed)
    experiment = experiment if chosen is None else chosen
    run_id = _kept_run_id(run_dir, store, experiment) if resuming else None
    mlflow = opened("mlflow", lambda: _mlflow(store, experiment, run_dir.name, run_id))
    loggers.append(mlflow)
    kept = {"store": _store_key(store), "experiment": experiment, "run_id": mlflow.run_id}
    return Trackers(loggers, run_dir, None if run_id is not None else kept, typed)


def _warn_unresumed(run_dir: Path, now: dict[str, str], names: dict[str, str]) -> None:
    """Warn of each tracker a resume does not go on logging to, as the run's latest start did.

    A resume goes on with the trackers its start names, none of them kept from
    the run's earlier starts; the flags the latest one was given are in
    :data:`TRACKERS_FILE`, which this start writes over. ``now``: this start's
    trackers (``mlflow_experiment`` the experiment it logs to, given or not);
    ``names``: where each setting came from. A tracker left out is named, and so
    is one given another folder or store (or an MLflow run another experiment):
    the run's rounds from here on are logged apart from its earlier ones.
    """
    from covey.server._served import recorded_trackers, tracker_words

    recorded = recorded_trackers(run_dir)
    if not recorded:
        return
    latest = " ".join(tracker_words(recorded))
    if not now:
        logger.warning(
            "resuming %s without the tracker flags its latest start was given (%s): this start "
            "logs to no tracker; give them again to go on logging where the run did",
            run_dir,
            latest,
        )
        return
    here = pasted_anywhere(now)
    missing = {k: v for k, v in recorded.items() if k not in here}
    if missing:
        logger.warning(
            "resuming %s without %s, which its latest start was given (%s): this start does "
            "not log there; give %s again to go on logging where the run did",
            run_dir,
            " ".join(tracker_words(missing)),
            latest,
            "it" if len(missing) == 1 else "them",
        )
    before = dict(recorded)
    if "mlflow" in before and "mlflow_experiment" not in before:  # its default experiment
        before["mlflow_experiment"] = _kept_experiment(run_dir) or now.get("mlflow_experiment", "")
    for key, was in before.items():
        if key in here and here[key] != was:
            logger.warning(
                "resuming %s with %s %s, where its latest start had %s: %s",
                run_dir,
                names[key],
                shlex.quote(now[key]),
                " ".join(tracker_words({key: was})),
                _MOVED[key],
            )


_MOVED = {
    "tensorboard": "this start logs its rounds to that folder, apart from the earlier rounds",
    "mlflow": "this start logs its rounds to a new MLflow run in that store, apart from the "
    "earlier rounds",
    "mlflow_experiment": "this start logs its rounds to a new MLflow run in that experiment, "
    "apart from the earlier rounds",
}


def _holds_events(folder: Path) -> bool:
    """Whether ``folder`` holds TensorBoard event files (of an earlier run)."""
    try:
        return any(p.name.startswith("events.out.tfevents.") for p in folder.iterdir())
    except OSError:  # missing (made by the logger), or refused as the logger opens it
        return False


def _warn_other_runs(folder: Path, name: str) -> None:
    """Warn that a new run's TensorBoard ``folder`` holds the event files of another run.

    TensorBoard reads a folder's files as one run's: the new run's first step
    is taken for a restart, and the earlier run's steps from there on are no
    longer shown (they stay in their files).
    """
    from covey.deploy._cli_errors import console

    console.print(
        f"[yellow]warning:[/] {escape(name)} {escape(str(folder))} already holds the event "
        "files of another run: TensorBoard shows one run per folder, and hides the earlier "
        "run's steps from this run's first one on; give each run a folder of its own (the "
        "earlier run's files stay as they are)",
        soft_wrap=True,
    )


def _tensorboard(folder: str) -> Any:
    """A TensorBoard logger writing to ``folder``."""
    from covey.trackers import TensorBoardLogger

    return TensorBoardLogger(Path(folder).expanduser())


def _mlflow(store: str, experiment: str, run_name: str, run_id: str | None) -> Any:
    """An MLflow logger of ``store``; an error of MLflow's own as a ``ValueError``."""
    from covey.trackers import MLflowLogger

    path = store if _is_uri(store) else Path(store).expanduser()
    from mlflow.exceptions import MlflowException

    try:
        return MLflowLogger(path, experiment=experiment, run_name=run_name, run_id=run_id)
    except MlflowException as exc:
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"MLflow cannot log to {store!r}: {said}") from exc
