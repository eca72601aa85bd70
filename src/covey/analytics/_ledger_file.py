"""A site's DP budget kept in a JSON file, so that restarting the site does not reset it.

The file holds :meth:`covey.analytics._dp.Budget.to_json` (limit, delta, spent and
the dp-accounting ledger). It is read when the site starts, checked event by
event, and rewritten after every charge, before the answer leaves the site:
written to a temporary file in the same folder, flushed to disk, then renamed
over the old one (and the folder flushed, so the rename survives a power loss),
so a site killed mid-write keeps the previous ledger.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from covey.analytics._dp import Budget

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
        ValueError: The file is too large, not JSON, not a budget, or kept at another delta.
    """
    if not path.exists():
        return Budget(epsilon, delta, owner="the site")
    size = path.stat().st_size
    if size > MAX_LEDGER_BYTES:
        raise ValueError(f"the ledger file {path} has {size} bytes; the cap is {MAX_LEDGER_BYTES}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        kept = Budget.from_json(data)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"the ledger file {path} is not a site's budget: {exc}") from None
    if kept.delta != delta:
        raise ValueError(
            f"the ledger file {path} was kept at delta {kept.delta:g}, the policy says "
            f"{delta:g}: its epsilon would not be comparable; use another file"
        )
    kept.epsilon = epsilon  # today's policy sets the limit; what was spent stays spent
    return kept


def save_budget(budget: Budget, path: Path) -> None:
    """Write ``budget`` to ``path`` atomically (temporary file, fsync, rename, folder fsync)."""
    text = json.dumps(budget.to_json(), indent=1)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk, so that a rename into it survives a power loss.

    Without it the new name may be lost on a system crash after the answer left the
    site, and the restarted site would read the ledger from before the charge.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__: Sequence[str] = ["MAX_LEDGER_BYTES", "load_budget", "save_budget"]
