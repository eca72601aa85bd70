"""The table of a run's rounds that ``covey runs show``, ``covey run`` and ``covey demo`` print.

One row per round (all of them, or the last N of a long run): participants,
failures, the usual metrics, up to six more numeric ones, privacy, the bytes
sent and received (``covey runs show``) and seconds;
and the last round a run finished, with why it stopped early, and the rounds
whose aggregation failed.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from covey.core._runstep import STOPPED_IN, last_finished_step, step_of_settings
from covey.deploy._cli_tables import print_table
from covey.deploy._shown import escape

#: How many of a run's last rounds ``covey runs show`` and a finished run's table show
#: without ``--last`` or ``--all``.
SHOWN_ROUNDS = 100

if TYPE_CHECKING:  # imported where used: NumPy is slow to load for `covey --help`
    from pathlib import Path

    from rich.console import Console

    from covey.cli._runtail import WholeRun
    from covey.core._history import History, RoundRecord
    from covey.core._metricnames import Source

__all__ = [
    "MAX_MORE_COLUMNS",
    "ROUND_COLUMNS",
    "SHOWN_ROUNDS",
    "endings",
    "last_finished",
    "metric_columns",
    "print_rounds",
    "round_table",
    "settings_facts",
    "shown_rounds",
    "step_of",
    "stopped_early",
]


#: The table's metric columns, as ``History.metric(name, source)`` names them.
ROUND_COLUMNS: tuple[tuple[str, str], ...] = (
    ("fit", "train_loss"),
    ("evaluate", "loss"),
    ("evaluate", "accuracy"),
    ("central", "loss"),
    ("central", "accuracy"),
)


#: The most columns added for a run's other metrics (the rest are named below the table).
MAX_MORE_COLUMNS = 6


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if value != 0 and abs(value) < 1e-3:  # a delta of 1e-05 is not 0.0000
        return f"{value:.3g}"
    return f"{value:.4f}"


def metric_columns(history: History) -> tuple[list[tuple[str, str]], list[str]]:
    """The table's metric columns: the usual ones, then the run's other numeric metrics.

    Returns:
        ``(source, name)`` of each column (at most :data:`MAX_MORE_COLUMNS` past the
        usual ones, in the order the run first reported them), and
        ``"source name"`` of each metric left out.
    """
    from covey.core._metricnames import metric_items

    more: list[tuple[str, str]] = []
    for r in history.rounds:
        order: tuple[Source, ...] = ("fit", "evaluate", "central")
        for source in order:
            # named as History.metric reads them: a metric named loss is loss_metric
            for name, value in metric_items(r, source):
                key = (source, name)
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if number and key not in ROUND_COLUMNS and key not in more:
                    more.append(key)
    left = [f"{source} {name}" for source, name in more[MAX_MORE_COLUMNS:]]
    return [*ROUND_COLUMNS, *more[:MAX_MORE_COLUMNS]], left


def shown_rounds(history: History, last: int | None) -> History:
    """``history`` with only its last ``last`` rounds (all of them when ``last`` is None)."""
    if last is None or last >= len(history.rounds):
        return history
    return dataclasses.replace(history, rounds=history.rounds[len(history.rounds) - last :])


def step_of(history: History) -> str:
    """What the run's round numbers count: ``"update"`` if it is asynchronous, else ``"round"``.

    An asynchronous strategy (FedBuff) records its ``buffer_size`` among its options.
    """
    return step_of_settings(history.config)


def round_table(
    history: History,
    title: str = "Rounds",
    last: int | None = None,
    *,
    traffic: bool = False,
    whole: WholeRun | None = None,
) -> Table:
    """A rich table of a run's rounds: participants, failures and metrics.

    Args:
        history: The run's history.
        title: The table's title.
        last: Show only the last ``last`` rounds (the title says how many of how
            many); None shows every round. The columns are those of the rounds shown.
        traffic: Also the array bytes each round sent and received (when counted),
            in kB or MB.
        whole: What the table needs of the rounds ``history`` leaves out (it holds
            the last of a long run's, read from its store); None: it holds them all.

    An asynchronous run's table counts global updates: its first column is
    ``update``, and its default title ``Updates``.
    """
    from covey.core._history import metric_value

    step = step_of(history)
    if step == "update" and title == "Rounds":
        title = "Updates"
    total, every = len(history.rounds) if whole is None else whole.total, history
    history = shown_rounds(history, last)
    if len(history.rounds) < total:
        title = f"{title} (the last {len(history.rounds):,} of {total:,})"
    table = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for column in (step, "clients", "failed"):
        table.add_column(column, justify="right", no_wrap=True)
    columns, left = metric_columns(history)
    # A usual column no round of the run has a value in (a run that never evaluates) is
    # left out; one with a value in any round stays, in the rows shown too.
    columns = [
        c
        for c in columns
        if c not in ROUND_COLUMNS
        or (_any_value(every, *c) if whole is None else c in whole.any_value)
    ]
    if left:
        table.caption = escape(f"not shown: {', '.join(left)} (in history.json)")
    for source, name in columns:
        table.add_column(f"{source}\n{escape(name)}", justify="right", no_wrap=True)
    groups = [_privacy_columns(history), _traffic_columns(history) if traffic else None]
    groups.append(_seconds_columns(history))
    for headers, _ in filter(None, groups):
        for header in headers:
            table.add_column(header, justify="right", no_wrap=True)
    for r in history.rounds:
        cells = [
            str(r.round),
            str(len(r.fit_participants)) if r.round else "-",
            str(len(r.failures)) if r.round else "-",
        ]
        # each record's own values (a history holding a round twice shows both as they are)
        cells += [_number(metric_value(r, name, source)) for source, name in columns]  # type: ignore[arg-type]
        for _, more in filter(None, groups):
            cells += more(r)
        table.add_row(*cells)
    _fix_widths(table)
    return table


def _fix_widths(table: Table) -> None:
    """Give each column the width of its widest header line or cell.

    The cells are plain numbers: measured here at once, rather than rendered cell by
    cell by rich, twice (``print_table`` measures the table, then prints it), which
    took most of the seconds a table of thousands of rounds needed.
    """
    from rich.cells import cell_len
    from rich.text import Text

    for column in table.columns:
        header = Text.from_markup(str(column.header)).plain.split("\n")
        column.width = max(cell_len(str(text)) for text in (*header, *column.cells))


def _any_value(history: History, source: str, name: str) -> bool:
    """Whether any round of ``history`` has a value of the metric ``name`` of ``source``."""
    from covey.core._history import metric_value

    return any(metric_value(r, name, source) is not None for r in history.rounds)  # type: ignore[arg-type]


Columns = tuple[list[str], Callable[["RoundRecord"], list[str]]]
"""Some columns of the table: their headers, and a round's cells in them."""


def _privacy_columns(history: History) -> Columns | None:
    """The budget spent after each round, if the run is private: epsilon, and delta."""
    epsilon = _privacy(history, "epsilon")
    if not epsilon:
        return None
    # an epsilon means little without its delta: one in the header, else a column
    deltas = _privacy(history, "delta")
    one = f"\ndelta={next(iter(deltas.values())):g}" if len(set(deltas.values())) == 1 else ""
    column = bool(deltas) and not one

    def cells(r: RoundRecord) -> list[str]:
        delta = ["-" if r.round not in deltas else f"{deltas[r.round]:g}"] if column else []
        return [_number(epsilon.get(r.round)), *delta]

    return ["privacy\nepsilon" + one, *(["privacy\ndelta"] if column else [])], cells


def _traffic_columns(history: History) -> Columns | None:
    """The array bytes each round sent and received, in kB or MB; None if none were counted."""
    counts = [c for r in history.rounds for c in (r.bytes_sent, r.bytes_received) if c]
    if not counts:
        return None
    from covey.core._jsonvalues import as_float  # an int past a float's range: inf

    unit, size = ("MB", 1e6) if max(counts) >= 1e6 else ("kB", 1e3)

    def cells(r: RoundRecord) -> list[str]:
        counted = (r.bytes_sent, r.bytes_received)
        return ["-" if c is None else f"{as_float(c) / size:,.1f}" for c in counted]

    return [f"{unit}\nsent", f"{unit}\nreceived"], cells


def _seconds_columns(history: History) -> Columns:
    """Each round's seconds; a deployed run's wait for its clients apart from the work."""
    waited = any("wait" in r.durations for r in history.rounds)
    keys = ("wait", "total") if waited else ("total",)

    def cells(r: RoundRecord) -> list[str]:
        return ["-" if r.durations.get(k) is None else f"{r.durations[k]:.2f}" for k in keys]

    return (["seconds\nwaiting", "seconds\ntotal"] if waited else ["seconds"]), cells


def _privacy(history: History, key: str) -> dict[int, float]:
    """Each round's recorded privacy value ``key`` (``"epsilon"``, ``"delta"``), if any."""
    from covey.core._jsonvalues import as_float

    out: dict[int, float] = {}
    for r in history.rounds:
        privacy = getattr(r, "privacy", None)
        value = privacy.get(key) if isinstance(privacy, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[r.round] = as_float(value)
    return out


def stopped_early(history: History) -> str | None:
    """Why a run ended before its last round (e.g. its privacy budget), as one line; or None.

    It names the last round that finished: a round the run stopped in (its record
    kept for its failures) did not, and a run that stopped before any round of
    training finished says so rather than "after round 0".
    """
    if not history.stopped_reason:
        return None
    last = last_finished(history)
    stopped = STOPPED_IN.match(history.stopped_reason)
    step = step_of(history) if stopped is None else stopped.group(1)  # "update": asynchronous
    if last is None or last < 1:
        return f"stopped before any {step} finished: {history.stopped_reason}"
    return f"stopped early after {step} {last}: {history.stopped_reason}"


def last_finished(history: History) -> int | None:
    """The last round of ``history`` that finished (None: not even round 0).

    A run stopped by an error in round r keeps that round's record (its failures)
    and says so at the start of its reason (``round r: ...``): that record is not
    a finished round.
    """
    return last_finished_step([r.round for r in history.rounds], history.stopped_reason)


def endings(history: History, whole: WholeRun | None = None) -> list[str]:
    """What to say under a run's table: why it stopped early, rounds that did not aggregate.

    ``whole``: what :func:`round_table` is told of the rounds ``history`` leaves out.
    """
    from covey.server._outputs import not_aggregated  # not at import: NumPy is slow to load

    failed = not_aggregated(history) if whole is None else whole.not_aggregated
    return [line for line in (stopped_early(history), failed) if line]


def settings_facts(config: dict[str, Any], name: Any) -> list[str]:
    """The run's settings ``covey runs show`` states above its table, e.g. ``"seed 0"``.

    An asynchronous run's count is of updates (``updates 8``), its ``keep_last``
    of ``every update``.
    """
    step = step_of_settings(config)  # "update" in an asynchronous run
    every = f"every {step}"
    kept = {**config, "keep_last": every} if config.get("keep_last", 0) is None else config
    facts = [
        f"{f'{step}s' if k == 'rounds' else k} {kept[k]}"
        for k in ("backend", "rounds", "seed", "address", "keep_last")
        if k in kept
    ]
    if name:
        facts.insert(0, f"strategy {name}")
    if isinstance(config.get("compression"), str):  # the clients' updates, e.g. "q8"
        facts.append(f"compression {config['compression']}")
    if config.get("covey_version"):  # the covey that started the run
        facts.append(f"started by covey {config['covey_version']}")
    return facts


def print_rounds(
    history: History,
    out: Console,
    *,
    last: int | None = SHOWN_ROUNDS,
    traffic: bool = False,
    folder: Path | None = None,
    whole: WholeRun | None = None,
) -> None:
    """Print a run's rounds table, then how many rounds it left out and how to see them.

    Args:
        history: The run's history.
        out: The console to print on.
        last: Show only the last ``last`` rounds; None shows every round.
        traffic: Also the array bytes each round sent and received.
        folder: The run's folder, named in the line on rounds left out (a finished
            run's table); None names ``covey runs show``'s own flags.
        whole: What the table needs of the rounds ``history`` leaves out (see
            :func:`round_table`).
    """
    print_table(round_table(history, last=last, traffic=traffic, whole=whole), out)
    total = len(history.rounds) if whole is None else whole.total
    left_out = total - len(shown_rounds(history, last).rounds)
    if left_out:
        step = step_of(history)
        see = (
            f"--all shows every {step}, --last N the last N"
            if folder is None
            else f"covey runs show {shlex.quote(str(folder))} --all shows every {step}"
        )
        out.print(escape(f"the first {left_out:,} {step}s not shown ({see})"), soft_wrap=True)
