"""What ``covey run`` says of a simulation stopped by Ctrl-C, SIGTERM or SIGHUP, and what next."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from covey.core._interrupt import interrupted_how

__all__ = ["forget_unstarted", "interrupted_note"]


def resumed_after(run_dir: Path) -> str:
    """Where resuming the simulation in ``run_dir`` goes on, as its history.json says."""
    from covey.cli._rounds import last_finished
    from covey.core import History
    from covey.sim._rundir import resumed_from

    try:
        last = last_finished(History.load(run_dir))
    except (OSError, ValueError):  # unreadable: said when it is resumed
        return "after its last complete round"
    return resumed_from("round", last)


def interrupted_note(
    run_dir: Path,
    kept: str | None,
    exc: KeyboardInterrupt,
    trackers: Mapping[str, str] | None = None,
) -> str:
    """What a simulation stopped by Ctrl-C, SIGTERM or SIGHUP left in ``run_dir``, and what goes on.

    ``kept`` says where the model after its last complete round is, if anywhere;
    ``trackers``, the tracker flags the command line gave (``--tensorboard``...),
    which the command that resumes the run repeats.
    """
    from covey.sim._rundir import resume_command as command

    def resume_command(folder: Path) -> str:  # the flags of this start, as they were given
        return command(folder, trackers or {})

    said = interrupted_how(exc)
    if not (run_dir / "history.json").is_file():  # as its model loaded or its clients started
        return (
            f"{said}: the simulation in {run_dir} stopped before its first round; "
            f"`{resume_command(run_dir)}` starts it again at round 1"
        )
    how = (
        f"continue it {resumed_after(run_dir)} with `{resume_command(run_dir)}`"
        if (run_dir / "run.sqlite").is_file()
        else "it keeps no checkpoint (compressed with top-k, or an asynchronous "
        "strategy): `covey run` runs it again from the start, and the same seed gives "
        "the same results"
    )
    return (
        f"{said}: the simulation in {run_dir} stopped (its history.json keeps the "
        f"rounds done{'; ' + kept if kept else ''}); {how}"
    )


def forget_unstarted(run_dir: Path) -> None:
    """Remove the new run folder of a run that failed before it wrote anything but its set-up.

    Its ``run.sqlite`` could not be made (a path too deep for SQLite, a full disk),
    say, or a tracker it was given was refused: its ``project.json`` and ``run.lock``
    alone showed a run interrupted during set-up. The folder goes only if it holds
    nothing else.
    """
    from covey.cli._project_sim import SETTINGS_FILE
    from covey.server._served import TRACKERS_FILE

    try:
        names = {path.name for path in run_dir.iterdir()}
        if names <= {SETTINGS_FILE, "run.lock", TRACKERS_FILE}:
            for name in names:
                (run_dir / name).unlink()
            run_dir.rmdir()
    except OSError:
        pass  # the error that stopped the run is the one to report
