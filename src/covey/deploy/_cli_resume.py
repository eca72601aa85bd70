"""How a stopped deployed run is continued: whether it can be, and the command that does it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "present_run",
    "recorded_rounds",
    "resume_hint",
    "resuming_line",
    "run_folder",
    "saved_model",
    "saved_round",
    "show_stopped",
]


def saved_round(run: Path) -> bool:
    """Whether the run in ``run`` saved a round, so that ``--resume`` can continue it."""
    import sqlite3

    from covey.server._store import RunStore

    if not (run / "run.sqlite").is_file():
        return False
    try:
        with RunStore.open(run) as store:
            return store.last_round() is not None
    except (OSError, ValueError, sqlite3.Error):
        return False


def recorded_rounds(run: Path) -> int | None:
    """The round count the run in ``run`` was started (or last resumed) with; None if unknown.

    A resumed run given no ``--rounds`` goes on to it, not to the app's own count.
    """
    import json
    import sqlite3

    from covey.core._files import read_regular
    from covey.core._history import MAX_HISTORY_BYTES, History

    try:  # history.json, then run.sqlite (an older covey kept the first count there)
        text = read_regular(run / History.FILE_NAME, MAX_HISTORY_BYTES)
        rounds = json.loads(text)["config"]["rounds"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        rounds = None
    if rounds is None:
        from covey.server._store import RunStore

        try:
            with RunStore.open(run) as store:
                rounds = store.config.get("rounds")
        except (OSError, ValueError, sqlite3.Error):
            return None
    return rounds if isinstance(rounds, int) and not isinstance(rounds, bool) else None


def _last_saved(run: Path) -> tuple[str, int | None] | None:
    """The step ("round", "update") of the run in ``run`` and its last saved one; None: no store."""
    import sqlite3

    from covey.server._store import RunStore

    if not (run / "run.sqlite").is_file():
        return None
    try:
        with RunStore.open(run) as store:
            # "update" for an asynchronous run, as its log says
            return store.step, store.last_round()
    except (OSError, ValueError, sqlite3.Error):
        return None


def resuming_line(run: Path, rounds: int) -> str:
    """The line a resumed server starts with: the run, its last saved round, its round count.

    Read once the server has reopened the run (a damaged newest round already set aside).
    """
    saved = _last_saved(run)
    step, last = saved if saved is not None else ("round", None)
    if last is None:  # killed before its round 0 was saved: it starts again from it
        return f"resuming run {run} from its start (no {step} of it was saved; {rounds} to run)"
    return f"resuming run {run} after {step} {last} (of {rounds})"


def saved_model(run: Path) -> str | None:
    """Where the model after the run's last saved round is, in words; None before round 1.

    A deployed run keeps each complete round's model in ``weights/`` (the newest
    ``keep_last`` of them); the newest is the model a stopped run leaves.
    """
    from covey.server._roundfiles import WEIGHTS_DIR, weights_file_name

    saved = _last_saved(run)
    if saved is None:
        return None
    step, last = saved
    path = run / WEIGHTS_DIR / weights_file_name(last or 0)
    if not last or not path.is_file():
        return None
    return f"the model after {step} {last}, the last complete one, is in {path}"


def show_stopped(run: Path, hint: str, console: Console) -> None:
    """What the server of a run that failed says last: where its model is, how to continue it.

    ``hint``: the command that continues the run (:func:`resume_hint`, or its project's
    ``covey run``), said as ``covey runs show`` says it: after the last complete round,
    or from the start if none finished; "" when this covey cannot continue it (a newer
    covey saved it). Nothing if the run has no store to resume.
    """
    from covey.deploy._shown import escape, stamped
    from covey.sim._rundir import resumed_from

    saved = _last_saved(run)
    if saved is None:
        return
    model = saved_model(run)
    said = [f"run stopped: {model}"] if model is not None else []
    go_on = [f"continue the run {resumed_from(*saved)} with `{hint}`"] if hint else []
    for line in [*said, *go_on]:
        console.print(stamped(escape(line), console), soft_wrap=True)


def resume_hint(
    run: Path,
    *,
    app: str | None = None,
    config: Path | None = None,
    certs: Path | None = None,
    insecure: bool = False,
    tls_given: bool = False,
    rounds: int | None = None,
    keep_last: int | None = None,
    max_clients: int | None = None,
    data_port: int | None = None,
    plot: bool | None = None,
    timing: Mapping[str, float | int | None] | None = None,
    trackers: Mapping[str, str | None] | None = None,
    if_present: bool = False,
) -> str:
    """The ``covey server --resume`` command that continues ``run`` as it was started.

    A server started with ``--resume-if-present`` (a service's one command line) is
    told its own: ``--run-dir RUN --resume-if-present``, which resumes it alike.

    ``timing`` holds the settings the run folder does not keep (``round_timeout``,
    ``round_retries``, ``wait_timeout``, ``heartbeat``): each one given is repeated,
    so the resumed server keeps the deadlines of the one it continues; so are the
    ``trackers`` given (``--tensorboard``, ``--mlflow``), which it logs to again, and
    ``plot`` as the command line chose it (``--no-plot``; ``--plot`` only over a
    ``config`` file, which alone can turn it off otherwise). With a
    ``config`` file, read again on resume, the TLS choice is repeated only if the
    command line made it (``tls_given``), and then in full: ``--no-insecure`` beside
    ``--certs``, so that a file saying ``insecure = true`` does not win on resume.

    Paths are quoted for a POSIX shell (a folder named ``my run`` gives
    ``--resume 'my run'``), so the command can be pasted as it is.
    """
    where = f"--run-dir {quote(str(run))} --resume-if-present" if if_present else ""
    parts = [f"covey server {where or '--resume ' + quote(str(run))}"]
    if config is not None:
        parts.append(f"--config {quote(str(config))}")
    if app is not None:
        parts.append(f"--app {quote(app)}")
    if config is None:
        parts.append("--insecure" if insecure else f"--certs {quote(str(certs))}" if certs else "")
    elif tls_given:
        parts.append("--insecure" if insecure else f"--no-insecure --certs {quote(str(certs))}")
    if rounds is not None:
        parts.append(f"--rounds {rounds}")
    if keep_last is not None:  # else the resumed run keeps every round's file again
        parts.append(f"--keep-last {keep_last}")
    if max_clients is not None:  # else the resumed server admits the default 1000
        parts.append(f"--max-clients {max_clients}")
    if data_port is not None:
        parts.append(f"--data-port {data_port}")
    if plot is False or (plot and config is not None):
        parts.append("--plot" if plot else "--no-plot")
    for key, value in (timing or {}).items():
        if value is not None and not (key == "round_retries" and value == 0):
            # 600 as 600, 1e300 as 1e+300 (not its 301 digits), 0.5 as 0.5
            whole = float(value).is_integer() and abs(value) < 1e15
            exact = str(int(value)) if whole else repr(float(value))
            parts.append(f"--{key.replace('_', '-')} {exact}")
    from covey.server._served import tracker_words

    parts += tracker_words(trackers)
    return " ".join(p for p in parts if p)


def present_run(run_dir: Path | None, resume: Path | None) -> tuple[Path | None, Path | None]:
    """``--run-dir X --resume-if-present``: ``(X, None)`` starts a run in X, ``(None, X)`` resumes.

    X holding a served run (its ``run.sqlite``) is resumed, as ``--resume X`` would;
    any other X starts a new run there, refused as ``--run-dir X`` refuses a folder
    (a simulation's included). So one command line starts a run and continues it
    after a crash or a stop (systemd's ``Restart=on-failure``).
    """
    from covey.deploy._cli_errors import fail

    if resume is not None:
        fail(
            f"--resume-if-present goes with --run-dir, not --resume (which resumes always): "
            f"give --run-dir {quote(str(resume))} --resume-if-present, or leave the flag out"
        )
    if run_dir is None:
        fail(
            "--resume-if-present needs --run-dir PATH: the folder to start the run in, or "
            "whose run to resume (an --app whose ServerApp has main= keeps no run folder: "
            "leave the flag out for it)"
        )
    from covey.server._readcopy import is_simulation

    if (run_dir / "run.sqlite").exists() and not is_simulation(run_dir):
        return None, run_dir
    return run_dir, None


def run_folder(run_dir: Path | None, resume: Path | None) -> Path:
    """The run folder: the one to resume, the one given, or a fresh one under ``runs/``."""
    from covey.deploy._cli_errors import fail, fresh_run_dir

    if resume is not None:
        if run_dir is not None and run_dir.resolve() != resume.resolve():
            fail(
                f"give --run-dir {run_dir} (a new run) or --resume {resume} (continue that "
                "one), not both"
            )
        if (resume / "run.sqlite").exists() and not (resume / "run.sqlite").is_file():
            fail(f"--resume {resume}: its run.sqlite is not a file (a folder?); no run to continue")
        if not (resume / "run.sqlite").is_file():
            fail(f"--resume {resume}: no covey run there (no run.sqlite); start one with --run-dir")
        from covey.server._readcopy import is_simulation

        if is_simulation(resume):  # served on, its folder would hold two kinds of run
            from covey.sim._rundir import how_to_resume

            fail(
                f"--resume {resume} holds a simulated run; `covey server` continues deployed "
                f"runs only: continue it with {how_to_resume(resume)}, or serve a new run "
                "(--run-dir) from its model"
            )
        return resume
    if run_dir is None:
        return fresh_run_dir("runs", "server", "the run folder (leave out --run-dir: runs/)")
    below = next((p for p in run_dir.parents if p.exists() and not p.is_dir()), None)
    if below is not None:
        fail(f"--run-dir {run_dir}: {below} is a file, not a folder; give a folder's path")
    if run_dir.exists() and not run_dir.is_dir():
        fail(
            f"--run-dir {run_dir} is a file; give a new or empty folder, or leave --run-dir "
            "out for a fresh folder under runs/"
        )
    kept = [n for n in ("run.sqlite", "history.json", "run.json") if (run_dir / n).exists()]
    from covey.server._readcopy import is_simulation

    if "run.sqlite" in kept and not is_simulation(run_dir):  # a served run
        fail(
            f"--run-dir {run_dir} already holds a run; continue it with "
            f"--resume {quote(str(run_dir))} or give another folder"
        )
    if kept:
        fail(
            f"--run-dir {run_dir} already holds a run ({', '.join(kept)}), which a new run "
            "would write over; give another folder"
        )
    return run_dir
