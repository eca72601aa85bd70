"""Which rounds of a run still keep their weights file, and the error for one that does not.

Every saved round keeps its row (its record) for the life of the run; its
weights file and its aggregation state, which only a resume from it reads, may
go: :meth:`~covey.server.RunStore.save_round` with ``keep_last`` deletes all
but the newest files (a deployed server's ``keep_last``, ``--keep-last``; a
simulation with ``run_dir`` keeps its newest two unless given ``keep_last``).
A pruned round's row names no file and holds no state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from covey.core._messages import MAX_ROUNDS
from covey.server._roundfiles import remove, weights_file_name
from covey.server._rundb import RunDB

__all__ = ["SIMULATION_KEEPS", "check_keep_last", "kept_rounds", "prune", "pruned_error"]

SIMULATION_KEEPS = 2
"""A simulation keeps the weights files of its newest rounds only (every round's record),
unless given another ``keep_last``: the newest to resume from, and the one before should
the newest be damaged."""


def check_keep_last(keep_last: object) -> None:
    """Refuse a ``keep_last`` that is neither None nor a whole number from 1 to ``MAX_ROUNDS``.

    A run has no more rounds than that, and the run database holds 64-bit integers.
    """
    if keep_last is not None and (
        isinstance(keep_last, bool)
        or not isinstance(keep_last, int)
        or not 1 <= keep_last <= MAX_ROUNDS
    ):
        raise ValueError(
            f"keep_last must be None or a whole number from 1 to {MAX_ROUNDS:,} (a run's "
            f"most rounds), got {keep_last!r}"
        )


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
        # A pruned round is never resumed from: its aggregation state (a server
        # optimizer's moments, twice the model) goes with its file, and SQLite
        # reuses its pages for the next round's.
        conn.executemany(
            "UPDATE rounds SET weights_file = NULL, sha256 = NULL, server_state = NULL"
            " WHERE round = ?",
            rows,
        )
    for (r,) in rows:  # the round's own file, whatever its row named
        remove(weights_dir / weights_file_name(r))


def _listed(rounds: list[int], step: str = "round") -> str:
    if not rounds:
        return f"no {step}'s weights"
    if len(rounds) == 1:
        return f"the weights of {step} {rounds[0]} only"
    head = ", ".join(str(r) for r in rounds[:-1])
    return f"the weights of {step}s {head} and {rounds[-1]} only"


def pruned_error(
    run_dir: Path, round: int, kept: list[int], config: dict[str, Any], step: str = "round"
) -> ValueError:
    """The error for loading round ``round``, whose weights file was pruned.

    Args:
        run_dir: The run folder.
        round: The round asked for.
        kept: The rounds that keep their weights (:func:`kept_rounds`).
        config: The run's settings (a simulation's say ``"kind": "simulated"``).
        step: What ``round`` counts: ``"round"``, or an asynchronous run's ``"update"``.
    """
    if config.get("kind") == "simulated":
        why = _simulation_kept(config)
    else:
        why = (
            f"the server kept the newest {step}s' files only (keep_last, --keep-last); "
            f"serve without it to keep every {step}'s weights"
        )
    return ValueError(
        f"the weights of {step} {round} of the run in {run_dir} were pruned: the run keeps "
        f"{_listed(kept, step)}, as {why}"
    )


def _simulation_kept(config: dict[str, Any]) -> str:
    """Why a simulation pruned a round's weights: how many rounds it keeps, and how to keep all."""
    keep_last = config.get("keep_last", SIMULATION_KEEPS)  # a run of an older covey kept two
    every = (
        "simulate(keep_last=None) keeps every round's weights (a resumed run uses the "
        "keep_last it is given), and evaluate_fn, which is given each round's weights, can "
        "save the best model as the run goes"
    )
    if keep_last is None:
        return (
            "the simulation kept fewer rounds' files before it was resumed with "
            f"keep_last=None (every round's weights from then on); {every}"
        )
    return (
        f"the simulation keeps the weights of its newest {keep_last} rounds only "
        f"(keep_last={keep_last}, and every round's record); {every}"
    )
