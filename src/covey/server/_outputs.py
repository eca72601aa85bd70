"""What a run leaves for people to read: a fresh run folder, ``history.json`` and ``plot.png``."""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covey.core._files import TMP_SUFFIX, atomic_write
from covey.core._history import History, metric_points
from covey.core._historyfile import HistoryFile
from covey.core._runstep import step_of_settings

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

__all__ = [
    "PLOT_NAME",
    "RunOutputs",
    "new_run_dir",
    "not_aggregated",
    "not_aggregated_line",
    "plot_history",
    "write_outputs",
]

PLOT_NAME = "plot.png"
"""The plot a run folder keeps next to its ``history.json``."""
PLOT_POINTS = 1000
"""The most points a line of ``plot.png`` draws: a longer run's are thinned to this."""


def new_run_dir(parent: str | Path, prefix: str) -> Path:
    """Create and return a new, empty run folder ``parent/PREFIX-YYYYmmdd-HHMMSS[-N]``.

    Two runs started in the same second get different folders: the folder is
    created with ``exist_ok=False`` and a counter is appended until one is free.

    Args:
        parent: Where run folders live (made if missing), e.g. ``runs``.
        prefix: The kind of run, e.g. ``demo`` or ``server``.

    Returns:
        The folder, which exists and was made by this call.
    """
    root = Path(parent)
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        folder = root / (f"{prefix}-{stamp}" if n == 1 else f"{prefix}-{stamp}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free run folder name for {prefix}-{stamp} in {root}")


def _thinned(points: list[tuple[int, float]], limit: int = PLOT_POINTS) -> np.ndarray:
    """``points`` as an ``(n, 2)`` array, at most ``limit`` of them: a bucket's lowest and highest.

    A run of tens of thousands of rounds is drawn by a panel a few hundred
    pixels wide: each bucket of rounds keeps the points of its lowest and its
    highest value (in round order), so spikes stay, and drawing the plot costs
    the same memory at round 100,000 as at round 1,000.
    """
    import numpy as np

    data = np.array(points, dtype=float).reshape(-1, 2)
    if len(data) <= limit:
        return data
    keep = []
    for bucket in np.array_split(np.arange(len(data)), limit // 2):
        values = data[bucket, 1]
        keep.extend(sorted({int(bucket[np.argmin(values)]), int(bucket[np.argmax(values)])}))
    return data[keep]


def _figure(history: History, title: str) -> Figure:
    """The figure of ``plot.png``, made without pyplot: nothing global keeps it or is switched."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for source, label, style in (
        ("central", "central (server test set)", "-o"),
        ("evaluate", "evaluate (federated)", "--s"),
    ):
        for ax, name in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            points = metric_points(history, name, source)  # type: ignore[arg-type]
            if points:
                data = _thinned(points)
                thinned = len(data) < len(points)
                shown = style.rstrip("os") if thinned else style  # thinned: a line, no marks
                ax.plot(*data.T, shown, label=label, markersize=3)
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    ax_loss.set(xlabel="round", ylabel="loss", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def plot_history(history: History, path: str | Path, title: str = "") -> None:
    """Save a PNG of accuracy and loss per round (central and federated evaluation).

    Args:
        history: The run's history.
        path: The PNG to write (atomically).
        title: A title above both panels.
    """
    fig = _figure(history, title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def write_outputs(run_dir: str | Path, history: History, *, plot: bool = True) -> None:
    """Write ``history.json`` (and ``plot.png``) into ``run_dir``, each atomically.

    Args:
        run_dir: The run folder; it must exist.
        history: The run's history so far.
        plot: Also draw ``plot.png``.
    """
    folder = Path(run_dir)
    history.save(folder / History.FILE_NAME)
    if plot:
        title = f"covey run {folder.name}"
        plot_history(history, folder / PLOT_NAME, title=title)


class RunOutputs:
    """``history.json`` after every round, ``plot.png`` at most every ``plot_every`` seconds.

    Drawing the plot takes about 0.1 s, which would be most of a round with a
    small model; the history is cheap and is always current. :meth:`finish`
    draws the plot of the whole run.

    Args:
        run_dir: The run folder; it must exist.
        plot: Draw ``plot.png`` at all.
        plot_every: Least seconds between two plots during the run.
    """

    def __init__(self, run_dir: str | Path, *, plot: bool = True, plot_every: float = 10.0) -> None:
        """Outputs of the run in ``run_dir``; nothing is written yet.

        The temporary files of these outputs that a killed process left in
        ``run_dir`` are deleted (one process writes a run's outputs at a time).
        """
        self.run_dir = Path(run_dir)
        self.plot = plot
        self.plot_every = plot_every
        self._plotted: float | None = None
        self._history = HistoryFile(self.run_dir / History.FILE_NAME)
        for name in (History.FILE_NAME, PLOT_NAME):  # what a killed server left half written
            for stale in self.run_dir.glob(f".{name}.*{TMP_SUFFIX}"):
                stale.unlink(missing_ok=True)

    def round_done(self, history: History) -> None:
        """Write ``history.json``, and ``plot.png`` if the last one is old enough."""
        now = time.monotonic()
        due = self._plotted is None or now - self._plotted >= self.plot_every
        self._history.write(history)
        if self.plot and due:
            plot_history(history, self.run_dir / PLOT_NAME, title=f"covey run {self.run_dir.name}")
            self._plotted = now

    def finish(self, history: History) -> None:
        """Write both files for the run as it ended (the records' text as the run has it)."""
        self._history.write(history, final=True)
        if self.plot:
            plot_history(history, self.run_dir / PLOT_NAME, title=f"covey run {self.run_dir.name}")


def not_aggregated(history: History) -> str | None:
    """The rounds whose aggregation failed (the model left as it was), as one line; or None.

    A run whose every round failed so (an XGBoost booster past the federation's
    capacity, a strategy refusing every round's updates) finished with the model
    it started with: the line says so first. An asynchronous run's are updates.
    """
    step = step_of_settings(history.config)
    trained = [r for r in history.rounds if r.round > 0]
    failed = [r for r in trained if not r.aggregated and "error" in r.aggregate_info]
    if not failed:
        return None
    numbers = [r.round for r in failed[:5]]
    return not_aggregated_line(
        step, numbers, len(failed), len(trained), failed[-1].aggregate_info["error"]
    )


def not_aggregated_line(step: str, first: list[int], failed: int, trained: int, error: Any) -> str:
    """:func:`not_aggregated`'s line: ``failed`` of ``trained`` rounds, the ``first`` five.

    ``first``: the numbers of the first failed rounds; ``error``: the last one's.
    """
    numbers = [str(rnd) for rnd in first[:5]]
    if failed > 5:
        numbers.append(f"{failed - 5:,} more")
    which = numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + " and " + numbers[-1]
    error = str(error)
    error = error if len(error) <= 300 else error[:299] + "…"
    if failed == trained:
        head = f"no {step} aggregated: the model is the one the run started with"
    else:
        head = f"{failed:,} of {trained:,} {step}s did not aggregate"
        head += " (the model was left as it was)"
    return f"{head}; {step}{'s' if failed > 1 else ''} {which}: {error}"
