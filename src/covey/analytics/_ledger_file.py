"""A site's DP budget kept in a JSON file, so that restarting the site does not reset it.

The file holds :meth:`covey.analytics._dp.Budget.to_json` (limit, delta, spent and
the dp-accounting ledger). It is read when the site starts, checked event by
event, and rewritten after every charge, before the answer leaves the site:
written to a temporary file in the same folder, flushed to disk, then renamed
over the old one, so a site killed mid-write keeps the previous ledger.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from covey.analytics._dp import Budget, recorded_spent
from covey.core._files import TMP_SUFFIX, atomic_write

FORMAT = 1
"""The format of the ledger files this covey writes (files without one are of format 1)."""
_KEYS = frozenset({"format", "epsilon", "delta", "spent", "ledger", "queries"})
SPENT_TOLERANCE = 1e-6  # relative slack for the recorded total against the recomputed one
MAX_LEDGER_BYTES = 64 << 20  # far more than any run-length encoded ledger of queries


def load_budget(path: Path, epsilon: float | None, delta: float) -> Budget:
    """The budget kept in ``path`` (a new one if there is no file), under today's limit.

    Args:
        path: The ledger file.
        epsilon: The site's limit now (the policy's; it may differ from the file's).
        delta: The policy's delta; the file must have been kept at the same one.

    Returns:
        A :class:`Budget` with the file's ledger and the limit ``epsilon``.

    Raises:
        ValueError: The file is too large, not JSON, not a budget, kept at another delta,
            its recorded ``spent`` is no finite number >= 0, or its events add up to less
            than the epsilon it records as spent.
        NewerLedgerError: A newer covey wrote it (another format, entries this
            covey does not know).
    """
    if not path.exists():
        return Budget(epsilon, delta, owner="the site")
    size = path.stat().st_size
    if size > MAX_LEDGER_BYTES:
        raise ValueError(f"the ledger file {path} has {size} bytes; the cap is {MAX_LEDGER_BYTES}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        _check_format(path, data)
        kept = Budget.from_json(data)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, NewerLedgerError):
            raise
        raise ValueError(f"the ledger file {path} is not a site's budget: {exc}") from None
    if kept.delta != delta:
        raise ValueError(
            f"the ledger file {path} was kept at delta {kept.delta:g}, the policy says "
            f"{delta:g}: its epsilon would not be comparable; use another file"
        )
    _check_spent(path, data, kept)
    kept.epsilon = epsilon  # today's policy sets the limit; what was spent stays spent
    return kept


class NewerLedgerError(ValueError):
    """A ledger file a newer covey wrote: this one could under-count what it cannot read."""


def _check_format(path: Path, data: object) -> None:
    """Refuse a ledger of a newer format, or with entries this covey does not know.

    Going on would leave out what this covey cannot read (an under-count of
    the budget spent) and rewrite the file without it at the next charge.
    """
    if not isinstance(data, dict):
        return  # Budget.from_json names what is wrong
    from covey import __version__

    fmt = data.get("format", 1)
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if fmt != FORMAT or unknown:
        what = f"format {fmt!r}" if fmt != FORMAT else f"entries {', '.join(unknown)}"
        raise NewerLedgerError(
            f"the ledger file {path} has {what}, which covey {__version__} does not know "
            f"(it reads ledger format {FORMAT}): a newer covey wrote it; run the site with "
            "that version, since this one would under-count the budget spent"
        )


def _check_spent(path: Path, data: dict[str, Any], kept: Budget) -> None:
    """Refuse a file whose events add up to less than the epsilon it says was spent.

    The events are what counts; a recorded total above them means events were lost
    (a hand edit, a bad merge), and going on from the events would under-count.
    """
    recorded = recorded_spent(data, f"the ledger file {path}")
    if recorded is None:
        return
    if recorded > kept.spent * (1 + SPENT_TOLERANCE) + SPENT_TOLERANCE:
        raise ValueError(
            f"the ledger file {path} records epsilon {recorded:.6g} spent, but its events "
            f"add up to {kept.spent:.6g}: events are missing, so the site would under-count "
            "its budget; restore the file from a copy"
        )


def save_budget(budget: Budget, path: Path) -> None:
    """Write ``budget`` to ``path`` atomically (temporary file, fsync, rename).

    Raises:
        OSError: The file cannot be written (a full disk, a missing folder), naming
            it; the old ledger is kept.
    """
    if not path.parent.is_dir():  # else the error would name the temporary file
        raise FileNotFoundError(
            f"cannot keep the ledger file {path}: the folder {path.parent} does not exist"
        )
    data = {"format": FORMAT, **budget.to_json()}
    atomic_write(path, json.dumps(data, indent=1), mode=0o600)


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary copies of ``path`` a site killed mid-write left beside it.

    :func:`save_budget` writes ``.NAME.<12 hex digits>.tmp`` and renames it over the
    ledger; a kill between the two leaves the copy (the ledger itself is whole).
    Call it only while no other process may be writing ``path`` (its lock held).
    """
    stale = re.compile(re.escape(f".{path.name}.") + "[0-9a-f]{12}" + re.escape(TMP_SUFFIX))
    for candidate in path.parent.glob(f".{glob_escape(path.name)}.*{TMP_SUFFIX}"):
        if stale.fullmatch(candidate.name) and candidate.is_file():
            candidate.unlink(missing_ok=True)


__all__: Sequence[str] = [
    "FORMAT",
    "MAX_LEDGER_BYTES",
    "NewerLedgerError",
    "load_budget",
    "remove_stale_temporaries",
    "save_budget",
]
