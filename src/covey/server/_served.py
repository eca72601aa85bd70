"""How a stopped served run goes on: ``covey server --resume``, or its project's ``covey run``.

A run served by ``covey run --federation NAME`` keeps the project and the
federation it was served for in its folder (:data:`FEDERATION_FILE`), so the
command that continues it can be named when its server is gone. Any run given
tracker flags (``--tensorboard DIR``...) keeps them in :data:`TRACKERS_FILE`, so
that the command that continues it, served or simulated, repeats them.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path

from covey.core._files import atomic_write, read_json_object

__all__ = [
    "FEDERATION_FILE",
    "TRACKERS_FILE",
    "how_to_continue",
    "killed_server_reason",
    "project_command",
    "record_federation",
    "recorded_trackers",
    "resume_command",
    "tracker_words",
]

FEDERATION_FILE = "federation.json"
"""The project folder and federation name of a run served by ``covey run --federation``."""

TRACKERS_FILE = "trackers.json"
"""What a run folder keeps of its trackers: the MLflow run its rounds were logged to
(``mlflow``: its store, experiment and run id), and the tracker flags of its latest
start (``flags``: ``tensorboard``, ``mlflow``, ``mlflow_experiment``, folders made
absolute), which the command that continues it repeats."""

_MOST_BYTES = 64 * 1024

_TRACKER_KEYS = ("tensorboard", "mlflow", "mlflow_experiment")
"""The settings of the trackers a run logs to, each a flag (``--mlflow-experiment``)."""


def record_federation(
    run_dir: Path,
    project: Path,
    name: str,
    sets: list[str],
    trackers: Mapping[str, str] | None = None,
) -> None:
    """Keep in ``run_dir`` that its run serves ``project``'s federation ``name`` with ``sets``.

    ``trackers``: the tracker flags given on the command line (``tensorboard``...),
    repeated by the command that continues the run.
    """
    kept = {"project": str(project), "federation": name, "set": list(sets)}
    text = json.dumps(kept | {"trackers": dict(trackers or {})})
    atomic_write(run_dir / FEDERATION_FILE, text)


def tracker_words(trackers: Mapping[str, str | None] | None) -> list[str]:
    """``--tensorboard DIR``, ``--mlflow URI``... of ``trackers``, each value quoted for a shell.

    Every printed command that continues a run repeats its tracker flags with these
    words, in this order.

    Example:
        >>> tracker_words({"mlflow": "file:./ml runs", "tensorboard": "tb"})
        ['--tensorboard tb', "--mlflow 'file:./ml runs'"]
    """
    given = trackers or {}
    return [
        f"--{key.replace('_', '-')} {shlex.quote(str(given[key]))}"
        for key in _TRACKER_KEYS
        if given.get(key)
    ]


def recorded_trackers(path: Path) -> dict[str, str]:
    """The tracker flags the run in ``path`` was last started with, as :data:`TRACKERS_FILE` keeps.

    Empty when it keeps none: no file, one an older covey wrote (the MLflow run
    alone), or a damaged one.
    """
    kept = read_json_object(path / TRACKERS_FILE, _MOST_BYTES) or {}
    flags = kept.get("flags", {})
    if not isinstance(flags, dict) or not all(
        key in _TRACKER_KEYS and isinstance(value, str) for key, value in flags.items()
    ):
        return {}
    return dict(flags)


def resume_command(
    project: Path,
    name: str,
    run_dir: Path,
    sets: list[str],
    trackers: Mapping[str, str] | None = None,
) -> str:
    """``covey run PROJECT --federation NAME --resume RUN_DIR --set ...``, quoted for a shell.

    The project is left out when it is the current folder. The tracker flags in
    ``trackers`` (``--tensorboard``, ``--mlflow``...) are repeated, so that the
    resumed run logs where the run it continues did.
    """
    here = Path(project) == Path.cwd().resolve()
    parts = ["covey run"] + ([] if here else [shlex.quote(str(project))])
    parts += ["--federation", shlex.quote(name), "--resume", shlex.quote(str(run_dir))]
    parts += [f"--set {_word(item)}" for item in sets]
    parts += tracker_words(trackers)
    return " ".join(parts)


def _word(text: str) -> str:
    """``text`` as one word of a POSIX shell: ``"address='h:0'"`` rather than shlex's quoting."""
    quoted = shlex.quote(text)
    if quoted == text or any(c in text for c in '$`\\"!'):
        return quoted
    return f'"{text}"'


def project_command(path: Path) -> str | None:
    """The :func:`resume_command` of a project's served run in ``path``, else None.

    None when the folder keeps no :data:`FEDERATION_FILE`, or a damaged one.
    """
    kept = read_json_object(path / FEDERATION_FILE, _MOST_BYTES)
    if kept is None:
        return None
    project, name, sets = kept.get("project"), kept.get("federation"), kept.get("set", [])
    if not isinstance(project, str) or not isinstance(name, str) or not project or not name:
        return None
    if not isinstance(sets, list) or not all(isinstance(item, str) for item in sets):
        return None
    trackers = kept.get("trackers", {})  # none in the folder of an older covey's run
    if not isinstance(trackers, dict) or not all(
        key in _TRACKER_KEYS and isinstance(value, str) for key, value in trackers.items()
    ):
        return None
    return resume_command(Path(project), name, path, sets, trackers)


def how_to_continue(path: Path) -> str:
    """The command that continues the served run in ``path``, quoted, and what it needs."""
    command = project_command(path)
    if command is not None:
        return (
            f"`{command}` (with the --set items and tracker flags of its latest start; the "
            "app's settings are kept in the run folder)"
        )
    command = " ".join(
        [f"covey server --resume {shlex.quote(str(path))}", *tracker_words(recorded_trackers(path))]
    )
    return (
        f"`{command}` and the --app (or --config) and --certs (or --insecure) it was started with"
    )


def killed_server_reason(path: Path) -> str:
    """Why the run in ``path`` stopped when no server holds it, and how to go on.

    ``covey server --resume`` needs the app and security the server was started
    with (unrecorded); a project's served run goes on with its ``covey run``.
    """
    return (
        "the server is not running (it crashed or was killed); continue the run with "
        + how_to_continue(path)
    )
