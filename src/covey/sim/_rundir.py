"""A simulation's run folder: held while the run writes it, its history and ``run.json``.

``simulate(run_dir=...)`` writes ``history.json`` after every round and
``run.json`` (what ran, when, and how it ended) at the start and the end, and
holds the folder's ``run.lock`` as a served run does, so that a second run is
refused the folder and a killed run can be told from a running one. Its
checkpoints (``run.sqlite``, ``weights/``) are :mod:`covey.sim._checkpoint`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING, Any

from covey.core._files import MAX_SETTINGS_BYTES, atomic_write, read_given
from covey.core._interrupt import as_interrupt, interrupt_in
from covey.server._rundb import DB_NAME, LOCK_NAME, hold_run, is_held
from covey.server._served import recorded_trackers, tracker_words

if TYPE_CHECKING:  # NumPy is slow to load for `covey runs list`
    from covey.core._history import History
    from covey.core._historyfile import HistoryFile

__all__ = [
    "SET_UP_FILES",
    "end_run_meta",
    "how_to_resume",
    "interrupted_set_up_reason",
    "is_set_up_only",
    "kept_history",
    "new_run_command",
    "resume_command",
    "resumed_from",
    "run_folder",
    "save_history",
    "stop_reason",
    "stopped_simulation_reason",
    "write_run_meta",
]

logger = logging.getLogger("covey")

SET_UP_FILES = (LOCK_NAME, "project.json")
"""What a simulation writes as it sets up, before its first round: its lock, project settings."""


def is_set_up_only(folder: Path) -> bool:
    """Whether ``folder`` holds a simulation that never got past its set-up.

    It holds a :data:`SET_UP_FILES` file but neither ``history.json`` nor ``run.sqlite``:
    the run is starting, or was killed or interrupted as it started. A ``history.json``
    of any kind (a folder, a named pipe, a broken link) counts: the run is damaged, and
    its readers name that file, rather than call the run set up only.
    """
    if os.path.lexists(folder / "history.json") or (folder / DB_NAME).is_file():
        return False
    return any((folder / name).is_file() for name in SET_UP_FILES)


def interrupted_set_up_reason(folder: Path, *, prefix: bool = True) -> str:
    """Why a run :func:`is_set_up_only` and held by no process shows nothing, and what to do.

    ``prefix``: begin with ``"interrupted during set-up: "``.
    """
    return (
        ("interrupted during set-up: " if prefix else "")
        + "its simulation stopped before its first round (killed or interrupted as it "
        f"started); `{resume_command(folder)}` starts it again at round 1"
    )


@contextlib.contextmanager
def run_folder(
    run_dir: str | Path | None, resume: bool = False
) -> Iterator[tuple[Path | None, Path | None, bool]]:
    """Hold ``run_dir`` while the simulation writes it; yield its history and run.json paths.

    The third value yielded is whether the run resumes: false for a folder that
    holds only the ``run.lock`` (or a ``covey run``'s ``project.json``) of a run
    killed before its first checkpoint, which starts again at round 1.

    The run's ``run.lock`` is held as a served run holds it, and the kernel
    drops the lock when the process exits, however it exits: a run whose
    ``run.json`` still says running but that nobody holds was killed.

    Raises:
        ValueError: Another covey process is writing a run in ``run_dir``, or it
            holds a run already and ``resume`` is false (the new run would write
            over its history), or ``resume`` is true and it does not exist.
    """
    if run_dir is None:
        yield None, None, resume
        return
    folder = Path(run_dir)
    if resume and not folder.is_dir():
        raise ValueError(f"run_dir {folder} is no folder: there is no simulation in it to resume")
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # it, or a folder above it, is a file
        raise ValueError(
            f"run_dir {folder} cannot be a folder: it or a folder above it is a file"
        ) from None
    # A run was started here (or is running): its lock, or the settings `covey run`
    # keeps (project.json) just before it starts the simulation.
    left = (folder / LOCK_NAME).is_file() or (folder / "project.json").is_file()
    try:
        lock = hold_run(folder)
    except OSError as exc:
        if is_held(folder) is not True:
            raise
        holder = (folder / LOCK_NAME).read_text(errors="replace").strip() or "unknown"
        ours = holder == str(os.getpid())
        if resume:  # the run to continue has not stopped: another folder is no answer
            raise ValueError(_still_running(folder, holder, ours)) from exc
        who = (
            f"another run of this same process (pid {holder}; a simulation still going "
            "in another thread, say)"
            if ours
            else f"another covey process (pid {holder})"
        )
        raise ValueError(
            f"run_dir {folder} is in use by {who} writing its run there; give this run "
            "a folder of its own"
        ) from exc
    try:
        names = ("run.json", "history.json", "run.sqlite")
        kept = [name for name in names if (folder / name).exists()]
        if kept and not resume:
            more = " (or resume=True to continue it)" if "run.sqlite" in kept else ""
            raise ValueError(
                f"run_dir {folder} already holds a run ({', '.join(kept)}); a simulation "
                f"would write over it: give this run a folder of its own{more}, or remove "
                "the old run first"
            )
        if resume and not kept and left:
            # Killed before its first checkpoint (its clients starting, say): there is
            # no round to go on after, and the run starts at round 1, as it would have.
            logger.warning(
                "%s holds no round of the run started there (it stopped before its first "
                "checkpoint): the resumed run starts at round 1",
                folder,
            )
            resume = False
        yield folder / "history.json", folder / "run.json", resume
    except BaseException:
        if not left and not any((folder / name).exists() for name in names):
            _forget(folder, made)  # refused before it wrote anything: leave no run behind
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _forget(folder: Path, made: bool) -> None:
    """Remove the ``run.lock`` of a run that wrote nothing, and ``folder`` if made for it."""
    with contextlib.suppress(OSError):
        (folder / LOCK_NAME).unlink()
        if made:
            folder.rmdir()  # only if empty


def _still_running(folder: Path, holder: str, ours: bool) -> str:
    """Why a resume of the run in ``folder``, held by process ``holder``, is refused."""
    if ours:
        where, stop = f"this same process (pid {holder}; in another thread, say)", ""
    elif holder.isdigit():
        where, stop = f"pid {holder}", f", or `kill {holder}`"
    else:
        where, stop = "another covey process", ""
    return (
        f"run_dir {folder}: the run there is still running in {where}, which writes the "
        f"folder until it ends; wait for it to end, or stop it first (Ctrl-C in its "
        f"terminal{stop}), then resume it"
    )


def stop_reason(exc: BaseException) -> str:
    """Why a simulation stopped, in one line, from the error that stopped it.

    The notes covey adds to an error (the function that raised it, its client and
    round) follow the message, each in parentheses.
    """
    interrupt = interrupt_in(exc)  # Ctrl-C as a module imported: an ImportError, say
    if interrupt is not None:  # worded as a deployed run's: Ctrl-C sends SIGINT
        return f"interrupted ({interrupt.args[0] if interrupt.args else 'SIGINT'})"
    notes = [n for n in getattr(exc, "__notes__", ()) if isinstance(n, str) and n.strip()]
    return f"{type(exc).__name__}: {exc}" + "".join(f" ({' '.join(n.split())})" for n in notes)


@contextlib.contextmanager
def kept_history(
    history: History, path: Path | None, file: HistoryFile | None = None
) -> Iterator[None]:
    """Write ``history`` to ``path`` however the block ends; if it raised, with why it stopped.

    ``file``: the writer of ``path`` during the run, which writes it as it ends
    with the records' text it already has. An error that Ctrl-C caused (in a
    module being imported, say) is raised as the ``KeyboardInterrupt`` it was.
    """
    try:
        yield
    except BaseException as caught:
        history.stopped_reason = history.stopped_reason or stop_reason(caught)
        exc = as_interrupt(caught)
        if exc is caught:
            raise
        raise exc from caught
    finally:
        save_history(history, path, file)


def save_history(history: History, path: Path | None, file: HistoryFile | None = None) -> None:
    """Write the history at the end of a run, however it ends; a failed write is logged.

    ``file``: the run's writer of ``path`` (:meth:`HistoryFile.write` with ``final``).
    """
    if path is None:
        return
    try:
        if file is not None:
            file.write(history, final=True)
        else:
            history.save(path)
    except OSError as exc:  # the run's own error, if any, is the one to raise
        logger.error("cannot write the history: %s", exc)  # the error names the file


def write_run_meta(path: Path | None, meta: dict[str, Any]) -> None:
    """Write ``run.json`` (what ran, when, and whether it is done) atomically."""
    if path is not None:
        atomic_write(path, json.dumps(meta, indent=2))


def end_run_meta(path: Path | None, meta: dict[str, Any]) -> None:
    """Write ``run.json`` as the run ends; if the run failed, a failed write is only logged.

    The run's own error (say, a full disk that stopped the history) is the one
    to raise; ``run.json`` then still says running, and as the run's lock is
    let go, the run reads as stopped.
    """
    try:
        write_run_meta(path, meta)
    except OSError as exc:
        if meta.get("status") == "finished":
            raise
        logger.error("cannot write the run's end: %s", exc)  # the error names the file


def _project_of(folder: Path) -> Path | None:
    """The ``covey run`` project ``folder`` is a run of (a ``[tool.covey]`` just above), or None."""
    for parent in list(folder.resolve().parents)[:4]:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = read_given(parent / "pyproject.toml", MAX_SETTINGS_BYTES)  # never waits
            if "[tool.covey]" in text.decode("utf-8"):
                return parent
    return None


def resume_command(folder: Path, trackers: Mapping[str, str] | None = None) -> str:
    """What continues the simulation in ``folder``: ``covey run --resume`` for a project's.

    A ``covey run`` repeats the tracker flags ``trackers`` (``--tensorboard DIR``...),
    by default those the run folder keeps of its latest start
    (:func:`~covey.server._served.recorded_trackers`).
    """
    project = _project_of(folder)
    if project is None and not (folder / "project.json").is_file():
        return f"covey.simulate(..., run_dir={str(folder)!r}, resume=True)"
    if project is None:  # moved out of its project
        command = f"covey run <its project's folder> --resume {quote(str(folder))}"
    else:
        here = project == Path.cwd().resolve()
        command = (
            f"covey run {'' if here else quote(str(project)) + ' '}--resume {quote(str(folder))}"
        )
    words = tracker_words(recorded_trackers(folder) if trackers is None else trackers)
    return " ".join([command, *words])


def new_run_command(folder: Path) -> str:
    """What runs the simulation in ``folder`` again, from round 1, in a folder of its own."""
    project = _project_of(folder)
    if project is None:
        return "covey.simulate(..., run_dir=<a new folder>)"
    here = project == Path.cwd().resolve()
    return f"covey run{'' if here else ' ' + quote(str(project))}"


def resumed_from(step: str, last: int | None) -> str:
    """Where a resume goes on in a run whose last finished ``step`` is ``last`` (None: none).

    After it; but a run that finished no round of training (its round 0, the
    evaluation of the initial model, at most) starts again from its initial
    weights at round 1, as a resume of it does.

    Example:
        >>> resumed_from("round", 3)
        'after its last complete round'
        >>> resumed_from("round", 0)
        'from its start (no round of it finished)'
    """
    if last is None or last < 1:
        return f"from its start (no {step} of it finished)"
    return f"after its last complete {step}"


def stopped_simulation_reason(folder: Path, step: str = "round", last: int | None = 1) -> str:
    """Why the simulation in ``folder`` is not running though unfinished, and how to go on.

    ``step`` is what the run's numbers count: ``"round"``, or an asynchronous run's
    ``"update"``; ``last`` is the last of them that finished (None: none).
    """
    if not (folder / DB_NAME).is_file():
        return (
            "the simulation's process was killed or crashed before it finished; it kept no "
            "checkpoint (compressed with top-k, an asynchronous strategy's, or an older "
            "covey's; see its log): run it again"
        )
    return (
        "the simulation's process was killed or crashed before it finished; continue it "
        f"{resumed_from(step, last)} with {how_to_resume(folder)}"
    )


def note_resume(exc: BaseException, folder: Path | None) -> None:
    """Add to an interrupt (Ctrl-C) of a run kept in ``folder`` how to continue it.

    The note prints under the ``KeyboardInterrupt``'s traceback, which said nothing
    of the run folder nor of the rounds it keeps.
    """
    if folder is not None and interrupt_in(exc) is not None:
        exc.add_note(
            f"covey: the run in {folder} keeps its complete rounds; continue it with "
            f"{how_to_resume(folder)}"
        )


def how_to_resume(folder: Path) -> str:
    """The command that continues the simulation in ``folder``, quoted, and what it needs."""
    command = f"`{resume_command(folder)}`"
    if command.startswith("`covey run"):
        return command
    return (
        f"{command} and the client_fn and settings it was started with (a `covey demo` "
        "is run again instead)"
    )
