"""The saved rounds of a run's store, read back: their weights, records and history.

:class:`~covey.server.RunStore` inherits these from :class:`StoredRounds`; the
writing (``save_round``, ``discard_after``) and the opening are its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from covey.core._history import History
from covey.core._jsonvalues import from_jsonable
from covey.core._roundrecord import round_from_json
from covey.core._weights import Array
from covey.server._dbdamage import DamagedStoreError
from covey.server._kept import kept_rounds, pruned_error
from covey.server._roundfiles import (
    check_finite,
    damaged_record_error,
    lost_rounds_error,
    read_record,
    read_weights,
    round_number,
    round_of_file,
    stored_file,
    stored_state,
    weights_file_name,
)
from covey.server._rundb import DB_NAME, NewerFormatError
from covey.server._runrecords import RunRecords

__all__ = ["SKIPS_SAID", "StoredRounds"]

logger = logging.getLogger("covey")
SKIPS_SAID = 3  # damaged rounds named one by one when resuming; the older ones counted


def _untagged(text: str) -> bool:
    """Whether a record's JSON ``text`` holds no value :func:`jsonable` tagged (NaN, bytes)."""
    return "__float__" not in text and "__bytes__" not in text and "\\" not in text


class StoredRounds(RunRecords):
    """The rounds a run's store saved, read back (see :class:`~covey.server.RunStore`).

    Every method is safe to call from several threads at once.
    """

    _run_dir: Path
    _weights_dir: Path

    def last_round(self) -> int | None:
        """The newest saved round, or None if no round was saved."""
        with self._db.reading() as conn:
            row = conn.execute("SELECT MAX(round) FROM rounds").fetchone()
        return None if row[0] is None else int(row[0])

    def rounds(self) -> list[int]:
        """Every saved round, oldest first (including rounds whose weights were pruned)."""
        with self._db.reading() as conn:
            rows = conn.execute("SELECT round FROM rounds ORDER BY round").fetchall()
        return [int(r[0]) for r in rows]

    def kept_rounds(self) -> list[int]:
        """The saved rounds whose weights file is still kept (see ``keep_last``), oldest first."""
        return kept_rounds(self._db)

    def load_round(
        self, round: int
    ) -> tuple[dict[str, Array], dict[str, Any] | None, bytes | None]:
        """The weights, record and server state of a saved round.

        The weights file is checked against the SHA-256 recorded when it was saved.

        Args:
            round: The round to load, as :meth:`rounds` lists it (a NumPy integer too).

        Returns:
            ``(weights, record, server_state)``; the arrays are writable and the
            names are in the order they were saved in.

        Raises:
            KeyError: ``round`` was never saved (None: no round was, as
                :meth:`last_round` gives for such a run).
            TypeError: ``round`` is not an int (a str, a float, a bool).
            ValueError: the round's weights file is missing or corrupt, or was pruned
                (the error names the rounds kept: :meth:`kept_rounds`).
        """
        step = self.step
        round, row = round_number(round, self._run_dir, step), None
        if round < 2**63:  # SQLite's largest integer: a larger round was never saved
            with self._db.reading() as conn:
                row = conn.execute(
                    "SELECT weights_file, sha256, record, server_state FROM rounds WHERE round = ?",
                    (round,),
                ).fetchone()
        if row is None:
            raise KeyError(f"{step} {round} was never saved in the run at {self._run_dir}")
        name, digest, record_text, state = row
        if name is None:
            raise pruned_error(self._run_dir, round, self.kept_rounds(), self.config, step)
        name = stored_file(self._run_dir / DB_NAME, round, name, step)
        weights = read_weights(round, self._weights_dir / name, digest, step)
        record = None if record_text is None else self._record(round, record_text)
        return weights, record, stored_state(self._run_dir / DB_NAME, round, state, step)

    def load_latest_valid(
        self, check_state: Callable[[bytes], None] | None = None
    ) -> tuple[int, dict[str, Array], dict[str, Any] | None, bytes | None]:
        """The newest round whose weights file (and server state) verify, to resume from.

        Rounds whose file is missing, corrupt, pruned or holds NaN or Inf, or whose
        server state ``check_state`` refuses, are skipped with a logged warning (the newest
        :data:`SKIPS_SAID` each, the others counted). A resuming server should
        then call :meth:`discard_after` with the returned round.

        Args:
            check_state: Raises ``ValueError`` for damaged server state bytes (e.g.
                :func:`covey.server._state.check_state`); None takes them as they are.

        Returns:
            ``(round, weights, record, server_state)``.

        Raises:
            ValueError: no saved round has a valid weights file (or none was saved),
                or ``weights/`` holds files of rounds the database lost.
        """
        self.check_lost_rounds()
        step, newest, oldest = self.step, None, None  # the rounds tried
        for skipped, round in enumerate(self._newest_first()):
            newest, oldest = round if newest is None else newest, round
            try:
                weights, record, state = self.load_round(round)
                check_finite(round, self._weights_dir / weights_file_name(round), weights, step)
                if state is not None and check_state is not None:
                    check_state(state)
            except DamagedStoreError:  # the database's, not the round's: never skipped
                raise
            except NewerFormatError as exc:  # never skipped: the redo would delete it
                where = f"{step} {round} of the run in {self._run_dir}"
                raise NewerFormatError(f"{where}: {exc}") from None
            except ValueError as exc:  # the newest few said; a long run's others counted
                if skipped < SKIPS_SAID:
                    logger.warning("skipping %s %d of %s: %s", step, round, self._run_dir, exc)
                continue
            if skipped > SKIPS_SAID:
                logger.warning("%d more %ss skipped likewise", skipped - SKIPS_SAID, step)
            return round, weights, record, state
        if newest is None:
            raise ValueError(f"the run at {self._run_dir} has no saved {step}")
        said = f" ({step}s {oldest}-{newest})" if skipped + 1 > SKIPS_SAID else ""
        raise ValueError(f"no saved {step} of the run at {self._run_dir} has valid weights{said}")

    def _newest_first(self, batch: int = 64) -> Iterator[int]:
        """The saved rounds, newest first, read a few at a time (a resume takes the newest)."""
        upto = 2**63 - 1  # SQLite's largest integer
        while True:
            with self._db.reading() as conn:
                rows = conn.execute(
                    "SELECT round FROM rounds WHERE round <= ? ORDER BY round DESC LIMIT ?",
                    (upto, batch),
                ).fetchall()
            for (round,) in rows:
                yield int(round)
            if len(rows) < batch:
                return
            upto = int(rows[-1][0]) - 1

    def check_lost_rounds(self) -> int | None:
        """The last recorded round, after refusing files of rounds ``run.sqlite`` lost.

        One file just past the last recorded round is a save that crashed
        between the rename and the commit (swept and redone). Files further on
        mean the database lost committed rounds: SQLite keeps the newest
        commits in ``run.sqlite-wal`` until it copies them over, so a run
        folder copied without that file, or with that file damaged, reads as
        an older run. Resuming would redo those rounds and delete their files.

        Raises:
            ValueError: naming the files of the lost rounds.
        """
        last = self.last_round()
        floor = -1 if last is None else last
        ahead = sorted(
            path.name
            for path in (self._weights_dir.iterdir() if self._weights_dir.is_dir() else ())
            if (m := round_of_file(path.name)) is not None and m > floor + 1
        )
        if not ahead:
            return last
        raise lost_rounds_error(self._run_dir / DB_NAME, self._weights_dir, last, ahead, self.step)

    def history(self) -> History:
        """The run's :class:`History`: the saved round records, its config and client names."""
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT round, record FROM rounds WHERE record IS NOT NULL ORDER BY round"
            ).fetchall()
        db = self._run_dir / DB_NAME
        step = self.step

        def created_by() -> str:
            return str(self.info()["covey_version"])

        raws = [(read_record(db, r, text, created_by, step), text) for r, text in rows]
        try:
            # as History.from_dict reads them; a text with no tag JSON cannot say otherwise
            # (no "__float__", "__bytes__", nor a key spelt with escapes) holds none to undo
            rounds = [
                round_from_json(raw if _untagged(text) else from_jsonable(raw))
                for raw, text in raws
            ]
            names = {str(cid): name for name, cid in self.clients().items()}
            history = History.from_dict({"rounds": [], "config": self.config, "clients": names})
        except (TypeError, KeyError, ValueError) as exc:
            raise damaged_record_error(db, exc, step) from None
        history.rounds = rounds
        return history

    def _record(self, round: int, text: str) -> dict[str, Any]:
        """The stored record of ``round``, or ValueError naming the round and the file."""
        db = self._run_dir / DB_NAME
        return read_record(db, round, text, lambda: self.info()["covey_version"], self.step)
