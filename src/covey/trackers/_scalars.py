"""The numbers of one round, flattened into ``tag -> value`` for trackers."""

from __future__ import annotations

import hashlib
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from covey.core import RoundRecord
from covey.core._jsonvalues import as_float


def name_hash(name: str) -> str:
    """8 hex digits of a hash of ``name`` (any text, lone surrogates included)."""
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _text(tag: str) -> str:
    """``tag`` as UTF-8 can write it.

    A tag holding a lone surrogate (U+DCFF, as a client's metric name may)
    has it escaped with a backslash and ends with ``-`` and 8 hex digits of a
    hash of the whole tag, so that it stays apart from a tag spelled with the escape.
    """
    try:
        tag.encode()
    except UnicodeEncodeError:
        return f"{tag.encode('utf-8', 'backslashreplace').decode()}-{name_hash(tag)}"
    return tag


_OWN = re.compile(r"loss(_metric)*")
"""Metric names that would meet the round's own loss (``loss``) or the name given it instead."""


def _metric(name: object) -> str:
    """A metric's name in its tag: ``loss`` becomes ``loss_metric``, never the round's loss.

    ``loss_metric`` then becomes ``loss_metric_metric`` (and so on), so that no
    two metrics share a tag.
    """
    text = str(name)
    return text + "_metric" if _OWN.fullmatch(text) else text


def _adder(out: dict[str, float], nonfinite: bool) -> Callable[[str, Any], None]:
    """Add a number to ``out`` under its tag (a NaN or infinity only if ``nonfinite``).

    An int too large for a float (an ``evaluate_fn`` metric of ``10**400``, which
    ``history.json`` keeps) is the infinity :meth:`covey.History.metric` reads it as.
    """

    def add(tag: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        number = as_float(value)
        if nonfinite or math.isfinite(number):
            out[_text(tag)] = number

    return add


def round_scalars(record: RoundRecord, *, nonfinite: bool = False) -> dict[str, float]:
    """Every finite number of a round, by tag (with ``nonfinite``, NaN and infinities too).

    Tags: ``central/loss`` and ``central/<metric>`` (server-side evaluation),
    ``federated/loss`` and ``federated/<metric>`` (clients' evaluation),
    ``fit/<metric>`` (clients' training metrics), ``clients/fit``,
    ``clients/evaluate``, ``clients/failures``, ``time/<stage>`` (seconds),
    ``bytes/sent`` and ``bytes/received`` (the arrays' bytes the server sent and
    received, when the round counted them) and ``privacy/<key>`` (e.g.
    ``privacy/epsilon``) when the round has a privacy record.

    A metric named ``loss`` is logged as ``<group>/loss_metric`` (and one named
    ``loss_metric`` as ``loss_metric_metric``), so that it never overwrites the
    round's own loss. A name UTF-8 cannot write (a lone surrogate such as
    U+DCFF) is escaped with a backslash and ends with ``-`` and 8 hex digits of
    a hash of the whole tag.

    Args:
        record: The round, as given to an ``on_round`` callback.
        nonfinite: Keep the values that are NaN or infinite (a diverging run's
            loss), for a tracker that stores them; by default they are left out.

    Returns:
        ``{tag: value}``; metrics that are not numbers are left out, and so are
        NaN and infinite values unless ``nonfinite``.

    Example:
        >>> from covey.core import RoundRecord
        >>> round_scalars(RoundRecord(round=1, central_loss=0.5, fit_participants=[0, 1]))
        {'central/loss': 0.5, 'clients/fit': 2.0, 'clients/evaluate': 0.0, 'clients/failures': 0.0}
    """
    out: dict[str, float] = {}
    add = _adder(out, nonfinite)
    add("central/loss", record.central_loss)
    for name, value in record.central_metrics.items():
        add(f"central/{_metric(name)}", value)
    add("federated/loss", record.evaluate_loss)
    for name, value in record.evaluate_metrics.items():
        add(f"federated/{_metric(name)}", value)
    for name, value in record.fit_metrics.items():
        add(f"fit/{_metric(name)}", value)
    if record.round > 0:
        add("clients/fit", len(record.fit_participants))
        add("clients/evaluate", len(record.evaluate_participants))
        add("clients/failures", len(record.failures))
    for stage, seconds in record.durations.items():
        add(f"time/{stage}", seconds)
    add("bytes/sent", record.bytes_sent)  # None where the round counted none
    add("bytes/received", record.bytes_received)
    privacy = getattr(record, "privacy", None)
    if isinstance(privacy, dict):
        for key, value in privacy.items():
            add(f"privacy/{key}", value)
    return out


def refuse_another_run(tracker: str, last: int | None, round: int, advice: str) -> None:
    """Refuse a round before the last one ``tracker`` logged: another run's round.

    A logger is for one run. Given to a second ``simulate()`` (a notebook cell
    run again), it would get round 0 or 1 again and mix the second run's numbers
    into the first's at the same steps. The round it logged last may come again
    (a resumed run gives the round whose callbacks had not all returned).
    """
    if last is not None and round < last:
        raise ValueError(
            f"{tracker}: round {round} after round {last}, which it logged already: a logger "
            f"is for one run, and this round is another run's (simulate() given the same "
            f"logger again?); {advice}"
        )


def log_folder(path: str | Path, what: str) -> Path:
    """Make the folder a tracker writes to, or say in one line why it cannot be.

    Args:
        path: The folder (made with its parents if missing).
        what: The tracker, named in the error.

    Raises:
        NotADirectoryError: ``path`` or one of its parents is a file.
        OSError: the folder cannot be made or written to (e.g. no permission, a
            read-only file system), naming it.
    """
    folder = Path(path)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise NotADirectoryError(f"{what}: cannot write to {folder}: {part} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{what}: cannot make the folder {folder}: {exc.strerror or exc}") from exc
    try:  # a folder there already may be read-only (a read-only mount, another user's)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OSError(f"{what}: cannot write to {folder}: {exc.strerror or exc}") from exc
    return folder
