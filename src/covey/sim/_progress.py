r"""The progress bar of :func:`covey.simulate`: one line, updated once per round.

A progress bar is a courtesy: nothing it prints may stop a run. Standard output
whose encoding lacks a character (``PYTHONIOENCODING=ascii``, a Latin-1 locale)
gets it as a ``\xe9`` escape instead of a ``UnicodeEncodeError`` raised out of
:func:`covey.simulate` once every round has run; names that look like markup
(``f1[/macro]``) are shown as they are. Standard output that cannot be written
at all (``None`` in a windowed or embedded interpreter, a closed stream, a pipe
whose reader has gone) loses the bar, not the run: the bar's writes are dropped
there, and rich never gets to exit the process on a broken pipe. Nor does the
bar draw from Python's global ``random`` generator: a run's clients draw the same
numbers with and without it. No figure on it is ever cut short (``0.9…``): piped
to a file or a log, the bar is one whole line; in a terminal too narrow for it,
the round's metrics go on the lines below the bar, wrapped between words.
"""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any

from covey.core._history import RoundRecord
from covey.server._base import RoundCallback

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
    from rich.progress import Progress

__all__ = ["LenientStream", "progress_callback"]


class LenientStream:
    """A text stream that writes what its encoding cannot hold as backslash escapes.

    Everything else (``isatty``, ``fileno``, ``encoding``) is the wrapped
    stream's, so rich sizes and styles its output as for the stream itself. A
    stream that cannot be written (None, closed, a broken pipe) drops the text.

    Args:
        stream: The stream to write to, e.g. ``sys.stdout`` (None: nowhere).
    """

    def __init__(self, stream: IO[str] | None) -> None:
        """Wrap ``stream``."""
        self._stream = stream

    def write(self, text: str) -> int:
        r"""Write ``text``; characters the stream cannot encode become ``\xe9`` escapes."""
        if self._stream is None:
            return len(text)
        try:
            try:
                return self._stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(self._stream, "encoding", None) or "ascii"
                safe = text.encode(encoding, "backslashreplace").decode(encoding)
                return self._stream.write(safe)
        except (OSError, ValueError):  # closed, a broken pipe, a full disk: the bar goes
            self._stream = None
            return len(text)

    def flush(self) -> None:
        """Flush the stream, if it can still be written."""
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._stream = None

    def isatty(self) -> bool:
        """Whether the stream is a terminal (False once it cannot be written)."""
        try:
            return self._stream is not None and bool(self._stream.isatty())
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _console() -> Console:
    """The console the bar draws on: standard output's, or that of a live display on it.

    In a notebook rich draws a live display with ipywidgets; without them (VS Code,
    a bare ``jupyterlab``) it would draw nothing at all but a warning to install
    them, so the bar is then printed as into a file: once, when the run ends.
    """
    from rich.console import Console  # imported by now (see progress_callback)

    # The caller's own rich display is live (a sweep under ``track(...)``): it redirects
    # sys.stdout through its console. The bar joins that display, below it, instead
    # of drawing over the same terminal line from a console of its own.
    behind = getattr(sys.stdout, "_FileProxy__console", None)
    if isinstance(behind, Console):
        return behind
    stream: Any = LenientStream(sys.stdout)
    console = Console(file=stream)
    if console.is_jupyter:
        try:
            importlib.import_module("ipywidgets")
        except ImportError:
            console = Console(file=stream, force_jupyter=False)
    if not console.is_terminal and not console.is_jupyter:
        # Piped to a file or a log: the bar's one line at its full width, not cut at 80.
        console.width = _WHOLE_LINE
    return console


_WHOLE_LINE = 1 << 14  # the widest a piped bar's line may be


class _Fitted:
    """The bar's line, or in a terminal too narrow for it, the bar above its metrics.

    rich would cut the line's columns to fit (``ro… loss 0.4821  accuracy 0.…``);
    here the round, the bar and the time keep their line, the bar shrinking, and
    the metrics go below it, wrapped between words.

    Args:
        progress: The bar, its columns in the order of :func:`progress_callback`:
            what a step is, the count, the bar, the metrics, the time.
    """

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.measure import Measurement
        from rich.progress import BarColumn, ProgressColumn
        from rich.table import Column, Table
        from rich.text import Text

        tasks = self._progress.tasks
        line = self._progress.make_tasks_table(tasks)
        if Measurement.get(console, options.update_width(_WHOLE_LINE), line).maximum <= (
            options.max_width
        ):
            yield line
            return
        columns = [c for c in self._progress.columns if isinstance(c, ProgressColumn)]
        step, count, _, status, elapsed = columns
        bar = BarColumn(bar_width=None)  # as wide as the line leaves it
        for task in tasks:
            head = Table.grid(
                Column(no_wrap=True),
                Column(no_wrap=True),
                Column(),
                Column(no_wrap=True),
                padding=(0, 1),
            )
            head.add_row(*(column(task) for column in (step, count, bar, elapsed)))
            yield head
            metrics = status(task)
            if isinstance(metrics, Text) and metrics.plain:
                metrics.overflow = "fold"  # a name longer than the line itself
                yield metrics


def progress_callback(rounds: int, step: str = "round") -> tuple[RoundCallback, Callable[[], None]]:
    """A started progress bar of ``rounds`` rounds: its per-round callback and its stop.

    ``step`` names what a round counts on the bar: ``"update"`` for an asynchronous run.
    """
    # rich draws from Python's global generator when first imported (rich.style's ids):
    # a bar must not shift the draws of clients that use ``random`` seeded by the caller.
    state = random.getstate()
    try:
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    finally:
        random.setstate(state)

    class _FittedProgress(Progress):
        def get_renderables(self) -> Iterable[RenderableType]:
            yield _Fitted(self)

    progress = _FittedProgress(
        TextColumn(f"[bold]{step}"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        transient=False,
        console=_console(),
    )
    task_id = progress.add_task("rounds", total=rounds, status="")
    try:
        progress.start()
    except BaseException:  # Ctrl-C while its refresh thread starts: that thread stops too
        progress.stop()
        raise

    def on_round(record: RoundRecord) -> None:
        parts = []
        if record.central_loss is not None:
            parts.append(f"loss {record.central_loss:.4f}")
        for key, value in record.central_metrics.items():
            if isinstance(value, float):
                # A metric's name is the user's text, not markup: ``f1[/macro]`` is shown as is.
                parts.append(f"{escape(key)} {value:.4f}")
        if record.failures:
            parts.append(f"[yellow]{len(record.failures)} failed")
        progress.update(task_id, completed=record.round, status="  ".join(parts))

    return on_round, progress.stop
