"""What happened in a run, round by round: metrics, participants, failures, timings."""

from __future__ import annotations

import difflib
import json
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from covey.core._extras import import_feature
from covey.core._files import TooLargeError, atomic_write, read_regular
from covey.core._jsonvalues import from_jsonable, jsonable
from covey.core._metricnames import (
    FLOWER_ATTRIBUTES,
    SOURCES,
    Source,
    metric_items,
    metric_value,
)
from covey.core._recordvalues import record_json
from covey.core._roundrecord import Failure, RoundRecord, round_from_json, unknown_fields
from covey.core._version import covey_version

__all__ = [
    "MAX_HISTORY_BYTES",
    "SOURCES",
    "Failure",
    "History",
    "RoundRecord",
    "Source",
    "metric_value",
    "unknown_fields",
]

MAX_HISTORY_BYTES = 256 << 20
"""The largest ``history.json`` :meth:`History.load` reads unless told more (as the dashboard):
thousands of rounds of thousands of clients, each failure with its traceback."""


_HISTORY_FIELDS = frozenset({"rounds", "config", "stopped_reason", "clients"})


def _unknown_in(data: dict[str, Any]) -> list[str]:
    """The fields of a history's JSON that :meth:`History.from_dict` leaves out, each named once.

    A round's field is named as ``rounds[].NAME`` (a failure's as
    ``rounds[].fit_failures.NAME``), whichever rounds hold it.
    """
    unknown = sorted(k for k in data if k not in _HISTORY_FIELDS)
    in_rounds: set[str] = set()
    for raw in data.get("rounds", []):
        if isinstance(raw, dict):
            in_rounds.update(unknown_fields(raw))
    return unknown + [f"rounds[].{name}" for name in sorted(in_rounds)]


@dataclass
class History:
    """The record of a run: one :class:`RoundRecord` per round, starting at round 0.

    Attributes:
        rounds: The rounds in order.
        config: How the run was set up (strategy and hyperparameters, seed, clients,
            rounds, backend, covey version): enough to reproduce it.
        stopped_reason: Why the run ended before its last round (e.g. a privacy
            budget), or None when it ran every round.
        clients: The name of each client id of a deployed run (empty in simulation,
            where the id is all there is).
    """

    rounds: list[RoundRecord] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    stopped_reason: str | None = None
    clients: dict[int, str] = field(default_factory=dict)

    FILE_NAME = "history.json"
    """The file a run folder keeps its history in."""

    def name_of(self, cid: int) -> str:
        """Client ``cid`` as people call it: its name, else ``client <cid>``.

        Args:
            cid: The client's id, as the rounds' records hold it.
        """
        return self.clients.get(cid) or f"client {cid}"

    def __len__(self) -> int:
        return len(self.rounds)

    def __iter__(self) -> Iterator[RoundRecord]:
        """The rounds in order (``history[r]`` looks a round up by its number instead)."""
        return iter(self.rounds)

    def __getitem__(self, round: int) -> RoundRecord:
        for record in self.rounds:
            if record.round == round:
                return record
        held = (
            f"it holds rounds {self.rounds[0].round} to {self.rounds[-1].round}"
            if self.rounds
            else "it holds no round"
        )
        raise KeyError(
            f"no round {round!r} in this history ({held}); history[r] looks a round up by "
            "its number, history.rounds[i] by position (history.rounds[-1] is the last)"
        )

    if not TYPE_CHECKING:  # typed code keeps its checks of History's attributes

        def __getattr__(self, name: str) -> Any:
            """Only for attributes not found: Flower's names get an error naming covey's way."""
            message = f"{type(self).__name__!r} object has no attribute {name!r}"
            if name in FLOWER_ATTRIBUTES:
                message += f"; Flower's History.{name} is covey's {FLOWER_ATTRIBUTES[name]}"
            raise AttributeError(message, name=name, obj=self)

    def __repr__(self) -> str:
        """A summary: the rounds, the strategy, the metrics by source, the failures.

        The whole record (every round's participants, failures with tracebacks,
        metrics) is in :attr:`rounds`; printed at once it would run to megabytes
        for a long run of many clients.
        """
        strategy = self.config.get("strategy")
        name = strategy.get("name") if isinstance(strategy, dict) else strategy
        metrics: dict[str, list[str]] = {}
        for source in SOURCES:
            names = {m for r in self.rounds for m, _ in metric_items(r, source)}
            if names:
                metrics[source] = sorted(names)
        span = f"{self.rounds[0].round}..{self.rounds[-1].round}" if self.rounds else "[]"
        parts = [
            f"rounds={span}",
            *([f"strategy={name!r}"] if name else []),
            f"metrics={metrics}",
            f"failures={sum(len(r.failures) for r in self.rounds)}",
            f"stopped_reason={self.stopped_reason!r}",
        ]
        return f"History({', '.join(parts)})"

    def metric(self, name: str, source: Source = "central") -> list[tuple[int, float]]:
        """``(round, value)`` of one metric; ``name="loss"`` gives the loss.

        From ``"central"`` and ``"evaluate"``, ``"loss"`` is the round's own loss
        (``central_loss``, ``evaluate_loss``); a metric named ``loss`` there (say
        ``evaluate_fn`` returned ``(loss, {"loss": x})``) is read as
        ``"loss_metric"``, one named ``loss_metric`` as ``"loss_metric_metric"``,
        the names the trackers log them under. From ``"fit"``, which has no loss
        of its own, every metric is read by its own name.

        Args:
            name: The metric, e.g. ``"accuracy"``, or ``"loss"``.
            source: ``"central"`` (server-side evaluation), ``"evaluate"``
                (federated evaluation) or ``"fit"`` (clients' training metrics).

        Example:
            >>> h = History([RoundRecord(1, central_loss=0.5, central_metrics={"loss": 0.7})])
            >>> h.metric("loss"), h.metric("loss_metric")
            ([(1, 0.5)], [(1, 0.7)])

        Returns:
            The values in round order; a round that did not record the metric
            (or recorded no number) is left out, and a history of no rounds yet
            gives ``[]``.

        Raises:
            ValueError: if ``source`` is not one of those three, or no round of
                the history records the metric from that source (a typo, or
                ``"accuracy"`` from ``"central"`` in a run without ``evaluate_fn``):
                the error names the metrics recorded there, the source that
                records the metric if another does, and the closest name.
        """
        points = metric_points(self, name, source)
        if not points and self.rounds and name not in recorded_names(self, source):
            raise ValueError(_not_recorded(self, name, source))
        return points

    def best_round(
        self,
        name: str,
        mode: Literal["max", "min"] | None = None,
        source: Source = "central",
    ) -> tuple[int, float]:
        """The round whose model scored best on one metric, and that score.

        Round 0 (the initial model) counts when it was evaluated. A tie goes to the
        earliest round; NaN values are left out. Load that round's weights from the
        run folder with :meth:`covey.server.RunStore.load_round`, if it still keeps them.

        Args:
            name: The metric (``"accuracy"``), or ``"loss"``, as :meth:`metric` names it.
            mode: ``"max"`` when higher is better (accuracy), ``"min"`` when lower is (loss).
                None (the default): ``"min"`` for a loss, a name one of whose words
                is ``loss`` (``"loss"``, ``"train_loss"``, ``"val-loss"``) or a
                regressor's error (``"mae"``, ``"mse"``, ``"rmse"``,
                ``"mean_squared_error"``, ``"error_rate"``), else ``"max"``,
                a ``neg_`` name included (scikit-learn's ``"neg_log_loss"``, higher is better).
            source: ``"central"`` (``evaluate_fn``), ``"evaluate"`` (federated
                evaluation) or ``"fit"`` (clients' training metrics).

        Returns:
            ``(round, value)``.

        Raises:
            ValueError: ``mode`` or ``source`` is unknown, or no round records the
                metric (NaN aside) from that source: the error names the metrics
                it does record there, as :meth:`metric`'s does.

        Example:
            >>> h = History([RoundRecord(1, central_loss=0.5), RoundRecord(2, central_loss=0.4)])
            >>> h.best_round("loss", mode="min")
            (2, 0.4)
        """
        if mode is None:
            mode = "min" if is_loss(name) else "max"
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        points = [(r, v) for r, v in metric_points(self, name, source) if not math.isnan(v)]
        if not points:
            raise ValueError(_not_recorded(self, name, source, nan=True))
        pick = max if mode == "max" else min
        value = pick(v for _, v in points)
        return next((r, v) for r, v in points if v == value)

    def to_pandas(self, *, costs: bool = False) -> Any:
        """The metrics as a ``pandas.DataFrame``: one row per round, one column per metric.

        The index is the round number (``"round"``). A column is named
        ``SOURCE_NAME``: ``central_loss`` and ``central_accuracy`` from
        ``evaluate_fn``, ``evaluate_loss`` and ``evaluate_accuracy`` from federated
        evaluation, ``fit_train_loss`` from the clients' training metrics: each
        metric named as :meth:`metric` reads it (a central metric named ``loss``
        is ``central_loss_metric``). Only numeric metrics are columns; a round
        that did not record one has NaN.

        Args:
            costs: Also each round's participation and costs, after the metrics:
                ``clients_fit``, ``failures_fit``, ``examples_fit``,
                ``clients_evaluate``, ``failures_evaluate``, ``bytes_sent``,
                ``bytes_received`` (NaN where not counted) and ``seconds_STAGE``
                for each stage of :attr:`RoundRecord.durations` the run timed.

        Returns:
            The table (of floats).

        Raises:
            covey.core.MissingExtraError: pandas is not installed (it comes with
                the ``analytics`` extra: ``pip install 'covey[analytics]'``).
        """
        table = import_feature("covey.core._historytable", "History.to_pandas")
        return table.metrics_frame(self, costs=costs)

    def failures(self) -> list[tuple[int, Failure]]:
        """``(round, failure)`` for every failure of the run."""
        return [(r.round, f) for r in self.rounds for f in r.failures]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**_head(self), "rounds": [record_json(r) for r in self.rounds]}

    def to_json(self, indent: int | None = 2) -> str:
        """The history as JSON text.

        Args:
            indent: Spaces per nesting level; None writes it all on one line.
        """
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path`` atomically.

        Args:
            path: The file to write (its folder must exist), replaced whole.
        """
        atomic_write(path, self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Rebuild a history from :meth:`to_dict` output.

        Args:
            data: The dict; a malformed ``clients``, ``config`` or ``stopped_reason``
                raises ``ValueError``.
        """
        rounds = [round_from_json(raw) for raw in from_jsonable(data["rounds"])]
        clients = data.get("clients") or {}
        if not isinstance(clients, dict):
            raise ValueError(f"'clients' must map ids to names, got {type(clients).__name__}")
        config = from_jsonable(data.get("config", {}))
        if not isinstance(config, dict):
            raise ValueError(f"'config' must be an object, got {type(config).__name__}")
        stopped = data.get("stopped_reason")
        if stopped is not None and not isinstance(stopped, str):
            raise ValueError(f"'stopped_reason' must be text or null, got {stopped!r:.40}")
        return cls(
            rounds,
            config=config,
            stopped_reason=stopped,
            clients={int(cid): str(name) for cid, name in clients.items()},
        )

    @classmethod
    def from_json(cls, text: str) -> History:
        """Rebuild a history from :meth:`to_json` output.

        Args:
            text: The JSON text.
        """
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, run_dir: str | Path, *, max_bytes: int = MAX_HISTORY_BYTES) -> History:
        """Read the history of any run, simulated or deployed, from its run folder.

        Args:
            run_dir: The run folder (holding ``history.json``), or the
                ``history.json`` file itself.
            max_bytes: The largest file read (256 MiB by default); a larger one
                is refused before any of it is read.

        Fields this covey does not know are left out, so that the history a newer
        covey wrote reads here; one ``UserWarning`` names them (and the covey
        version that wrote the file), so a typo in a hand-edited file shows.

        Returns:
            The run's history as of its last finished round.

        Raises:
            FileNotFoundError: if there is no ``history.json`` there.
            OSError: naming it, if the ``history.json`` is no regular file (a folder,
                a named pipe, a device).
            ValueError: if the file is not a covey history, or is larger than ``max_bytes``.

        Example:
            >>> import tempfile
            >>> folder = tempfile.mkdtemp()
            >>> History([RoundRecord(0, central_loss=1.0)]).save(f"{folder}/history.json")
            >>> History.load(folder).rounds[0].central_loss
            1.0
        """
        path = Path(run_dir)
        if path.is_dir():
            path = path / cls.FILE_NAME
        if not path.exists():  # a named pipe or a folder there is refused as it is read
            if path.name != cls.FILE_NAME:  # a folder not there
                raise FileNotFoundError(f"no run folder {path}: there is no such file or folder")
            raise FileNotFoundError(
                f"no {cls.FILE_NAME} in {path.parent}: is it a covey run folder?"
            )
        try:
            text = read_regular(path, max_bytes)
        except TooLargeError as exc:
            raise ValueError(
                f"{path} is {exc.size:,} bytes, more than History.load reads ({exc.limit:,}, "
                "max_bytes=): it is no run's history.json, or that of a run larger than "
                "that; read it with History.load(..., max_bytes=) set above its size"
            ) from None
        try:
            data = json.loads(text.decode("utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("rounds"), list):
                raise ValueError("it has no list of rounds")
            history = cls.from_dict(data)
        except RecursionError:
            raise ValueError(f"{path} is not a covey history: its JSON nests too deeply") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path} is not a covey history: {exc}") from None
        left_out = _unknown_in(data)
        if left_out:
            written = history.config.get("covey_version")
            known = isinstance(written, str) and written
            by = f"it was written by covey {written}" if known else "it records no covey version"
            warnings.warn(
                f"{path}: left out field(s) covey {covey_version()} does not know: "
                f"{', '.join(left_out)} ({by}; a newer covey adds fields, else check the "
                "file for a typo)",
                UserWarning,
                stacklevel=2,
            )
        return history


def recorded_names(history: History, source: Source) -> list[str]:
    """The names of the values some round of ``history`` records from ``source``, sorted.

    Named as :meth:`History.metric` reads them (``"loss"`` for the round's loss).
    """
    return sorted({m for r in history.rounds for m, _ in metric_items(r, source)})


def lacks_evaluate(failure: Failure) -> bool:
    """Whether ``failure`` is that of a client without ``evaluate()``: a set-up, not an incident."""
    return failure.error.endswith("does not implement evaluate()")


_ERRORS = frozenset({"loss", "error", "mse", "mae", "rmse"})


def is_loss(name: str) -> bool:
    """Whether a metric named ``name`` is a loss, lower being better.

    One of its words is ``loss`` or ``error`` (``"error_rate"``, scikit-learn's
    ``"mean_squared_error"``), or an error a regressor reports (``mse``, ``mae``,
    ``rmse``). A name starting with ``neg_`` is a negated loss, higher
    being better, as scikit-learn's scores are (``neg_log_loss``,
    ``neg_mean_squared_error``).
    """
    lower = name.lower()
    return not lower.startswith("neg_") and not _ERRORS.isdisjoint(re.split(r"[^a-z0-9]+", lower))


def metric_points(history: History, name: str, source: Source) -> list[tuple[int, float]]:
    """:meth:`History.metric`, but ``[]`` for a metric no round records.

    For code that draws or prints whichever metrics a run has.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown metric source {source!r}; choose one of {list(SOURCES)}")
    out = [(r.round, metric_value(r, name, source)) for r in history.rounds]
    return [(rnd, value) for rnd, value in out if value is not None]


_SOURCE_HINTS = {
    "central": "server-side evaluation: a run records it only with evaluate_fn",
    "evaluate": "federated evaluation: a run with fraction_evaluate=0 records none",
    "fit": "the clients' training metrics",
}


def _nothing_recorded(history: History, source: Source) -> str:
    """Why no round of ``history`` records anything from ``source``: failed tasks, or a hint."""
    if source != "central":
        stage = "evaluate" if source == "evaluate" else "fit"
        failures = [f for r in history.rounds for f in getattr(r, f"{stage}_failures")]
        took_part = any(getattr(r, f"{stage}_participants") for r in history.rounds)
        if failures and not took_part:
            first = failures[0]
            return (
                f"every federated {stage} task failed: {len(failures)} failure(s), each "
                f"in its round's {stage}_failures (history.rounds[i].{stage}_failures); "
                f"the first, {first.who}: {first.error}"
            )
    return f"source={source!r} is {_SOURCE_HINTS[source]}"


def _not_recorded(history: History, name: str, source: Source, *, nan: bool = False) -> str:
    """Why :meth:`History.metric` or :meth:`History.best_round` has no value of ``name``."""
    recorded = recorded_names(history, source)
    if name in recorded:  # recorded, but never as a number (or only as NaN)
        return _no_number(history, name, source)
    there = (
        f"it records {recorded} there"
        if recorded
        else f"it records nothing there ({_nothing_recorded(history, source)})"
    )
    message = f"no round records {name!r}{' (NaN aside)' if nan else ''} from source={source!r}: "
    message += there
    elsewhere = [s for s in SOURCES if s != source and name in recorded_names(history, s)]
    if elsewhere:
        where = " and ".join(f"source={s!r}" for s in elsewhere)
        message += f"; {name!r} is recorded from {where}"
    if name in ("mse", "mean_squared_error") and "loss" in recorded:  # covey's regressors
        return message + "; a regressor's mean squared error is its 'loss'"
    if name not in recorded and (close := difflib.get_close_matches(name, recorded, n=1)):
        message += f"; did you mean {close[0]!r}?"
    return message


_FIELDS = {"central": "central_metrics", "evaluate": "evaluate_metrics", "fit": "fit_metrics"}


def _no_number(history: History, name: str, source: Source) -> str:
    """Why a metric ``history`` records from ``source`` has no value to read: NaN, or no number."""
    values = [v for r in history.rounds for m, v in metric_items(r, source) if m == name]
    kinds = sorted({type(v).__name__ for v in values if isinstance(v, bool) or not _number(v)})
    if not kinds:
        said = f"no round records {name!r} (NaN aside) from source={source!r}"
        return f"{said}: it is NaN wherever recorded"
    return (
        f"no round records {name!r} as a number from source={source!r}: it holds "
        f"{' and '.join(kinds)} there, and History.metric and best_round read numbers "
        f"(read it from history.rounds[i].{_FIELDS[source]})"
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float)


def _head(history: History) -> dict[str, Any]:
    """Everything of ``history`` as JSON-ready data but its rounds."""
    return {
        "config": jsonable(history.config),
        "stopped_reason": history.stopped_reason,
        "clients": {str(cid): name for cid, name in sorted(history.clients.items())},
    }
