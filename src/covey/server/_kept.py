"""Which rounds of a run still keep their weights file, and the error for one that does not.

Every saved round keeps its row (record, server state) for the life of the run;
its weights file may go: :meth:`~covey.server.RunStore.save_round` with
``keep_last`` deletes all but the newest files (a deployed server's
``keep_last``, ``--keep-last``; a simulation with ``run_dir`` keeps its newest
two). A pruned round's row names no file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covey.server._roundfiles import weights_file_name
from covey.server._rundb import RunDB

__all__ = ["SIMULATION_KEEPS", "kept_rounds", "prune", "pruned_error"]

SIMULATION_KEEPS = 2
"""A simulation keeps the weights files of its newest rounds only (every round's record):
the newest to resume from, and the one before should the newest be damaged."""


_WORDS = {2: "two"}


def kept_rounds(db: RunDB) -> list[int]:
    """The saved rounds whose weights file is kept, oldest first."""
    with db.reading() as conn:
        rows = conn.execute(
            "SELECT round FROM rounds WHERE weights_file IS NOT NULL ORDER BY round"
        ).fetchall()
    return [int(r) for (r,) in rows]


def prune(db: RunDB, weights_dir: Path, keep_last: int) -> None:
    """Delete the weights files of all but the newest ``keep_last`` rounds that have one.

    Rows first, files second: a crash in between only leaves unreferenced files
    (the next save sweeps them).
    """
    with db.transaction() as conn:
        rows = conn.execute(
            "SELECT round FROM rounds WHERE weights_file IS NOT NULL"
            " ORDER BY round DESC LIMIT -1 OFFSET ?",
            (keep_last,),
        ).fetchall()
        conn.executemany(
            "UPDATE rounds SET weights_file = NULL, sha256 = NULL WHERE round = ?", rows
        )
    for (r,) in rows:  # the round's own file, whatever its row named
        (weights_dir / weights_file_name(r)).unlink(missing_ok=True)


def _listed(rounds: list[int]) -> str:
    if not rounds:
        return "no round's weights"
    if len(rounds) == 1:
        return f"the weights of round {rounds[0]} only"
    head = ", ".join(str(r) for r in rounds[:-1])
    return f"the weights of rounds {head} and {rounds[-1]} only"


def pruned_error(run_dir: Path, round: int, kept: list[int], config: dict[str, Any]) -> ValueError:
    """The error for loading round ``round``, whose weights file was pruned.

    Args:
        run_dir: The run folder.
        round: The round asked for.
        kept: The rounds that keep their weights (:func:`kept_rounds`).
        config: The run's settings (a simulation's say ``"kind": "simulated"``).
    """
    if config.get("kind") == "simulated":
        why = (
            f"a simulation keeps the weights of its newest {_WORDS[SIMULATION_KEEPS]} rounds "
            "only (and every round's record); to keep the best model as the run goes, "
            "save it from evaluate_fn, which is given each round's weights"
        )
    else:
        why = (
            "the server kept the newest rounds' files only (keep_last, --keep-last); "
            "serve without it to keep every round's weights"
        )
    return ValueError(
        f"the weights of round {round} of the run in {run_dir} were pruned: the run keeps "
        f"{_listed(kept)}, as {why}"
    )
