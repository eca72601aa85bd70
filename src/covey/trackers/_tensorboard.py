"""Log each round to TensorBoard event files, with the writer of the ``tensorboard`` package.

No TensorFlow or PyTorch needed: events are written by
``tensorboard.summary.writer.EventFileWriter`` as ``simple_value`` scalars, which
TensorBoard's scalar dashboard and its ``EventAccumulator`` read.

A ``simple_value`` is a 32-bit float (about 7 significant digits). A 64-bit
tensor summary (``DT_DOUBLE``) would keep more, but TensorBoard's default loader,
its Rust data server (``--load_fast``), takes only 32-bit scalars and leaves such
a tag out of its charts altogether (TensorBoard 2.21, ``tensorboard-data-server``
0.7): the run's history and MLflow keep the 64-bit values.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from covey.core import RoundRecord
from covey.trackers._scalars import log_folder, refuse_another_run, round_scalars


class TensorBoardLogger:
    """A round callback writing every round's numbers to a TensorBoard log folder.

    Args:
        logdir: The folder (made if missing); view with ``tensorboard --logdir``.
        prefix: Put before every tag, e.g. ``"digits/"``.

    Example:
        >>> import tempfile
        >>> from covey.core import RoundRecord
        >>> with TensorBoardLogger(tempfile.mkdtemp()) as log:
        ...     log(RoundRecord(round=1, central_loss=0.25))
    """

    def __init__(self, logdir: str | Path, *, prefix: str = "") -> None:
        """Open an event file in ``logdir``.

        Raises:
            ValueError: ``prefix`` holds text UTF-8 cannot write (a lone surrogate).
        """
        try:
            prefix.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"TensorBoardLogger: prefix {prefix!r} holds {exc.object[exc.start : exc.end]!r}, "
                "which UTF-8 cannot write; give a prefix of plain text"
            ) from exc
        self.logdir = log_folder(logdir, "TensorBoardLogger")
        self._prefix = prefix
        self._writer = EventFileWriter(str(self.logdir))
        self._started = False
        self._closed = False
        self._last: int | None = None  # the round logged last

    def __call__(self, record: RoundRecord) -> None:
        """Write the round's scalars at step ``record.round``, then flush.

        The first round logged is marked as a (re)start (``SessionLog.START``),
        so that TensorBoard drops what the folder holds from that step on: a
        resumed run that redoes a round shows it once, with its new values.
        The tags are those of :func:`round_scalars`: a metric named ``loss``
        is logged as ``central/loss_metric`` (``federated/``, ``fit/``), never
        over the round's ``central/loss``, and a metric name UTF-8 cannot write
        is logged escaped. A NaN or infinite value (a diverging run) is logged
        as it is, as TensorBoard shows it.

        Raises:
            ValueError: the logger is closed (its event file is), or the round is
                before the last one it logged (another run's).
        """
        if self._closed:
            raise ValueError(
                f"TensorBoardLogger: the event file in {self.logdir} is closed (its logger "
                "left its `with` block or was closed): make a new TensorBoardLogger for "
                "another run (the same folder continues it)"
            )
        refuse_another_run(
            "TensorBoardLogger",
            self._last,
            record.round,
            "make a new TensorBoardLogger for each run, with a folder of its own",
        )
        self._last = record.round
        if not self._started:
            start = SessionLog(status=SessionLog.START)
            self._writer.add_event(
                Event(wall_time=time.time(), step=record.round, session_log=start)
            )
            self._started = True
        values = [
            Summary.Value(tag=self._prefix + tag, simple_value=value)
            for tag, value in round_scalars(record, nonfinite=True).items()
        ]
        event = Event(wall_time=time.time(), step=record.round, summary=Summary(value=values))
        self._writer.add_event(event)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file. Closing twice is harmless."""
        self._writer.close()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
