"""One round of a run's history: its record, and reading one back from JSON, checked."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from covey.core._messages import Scalar

__all__ = ["Failure", "RoundRecord", "clipped", "round_from_json", "unknown_fields"]

ERROR_CHARS = 2_000
"""The most of a failure's one-line error a history keeps."""
TRACEBACK_CHARS = 64_000
"""The most of a failure's full error text a history keeps (its start and its end)."""


def clipped(text: str, cap: int) -> str:
    """``text`` if it has at most ``cap`` characters, else its start and end around a note.

    A client's error text is the client's to word, as long as it likes: a message of
    megabytes would be kept once per failure, in memory and in the run's history.
    The end is kept as well as the start: a traceback's last lines say what was raised.
    """
    if len(text) <= cap:
        return text
    half = (cap - 60) // 2  # the note fits within the cap: clipping again changes nothing
    return f"{text[:half]}\n... [{len(text) - 2 * half:,} characters cut] ...\n{text[-half:]}"


@dataclass
class Failure:
    """A client that did not contribute: it raised, sent something invalid, or never replied.

    Args:
        cid: The client's id.
        stage: The task kind (``"fit"``, ``"evaluate"``, ...).
        error: One line saying what went wrong (its start and end when over 2,000
            characters).
        traceback: The full error text, when the client raised (its start and end
            when over 64,000 characters).
        name: The client's chosen name in a deployed run (its certificate
            identity or ``--name``); empty in simulation.
    """

    cid: int
    stage: str
    error: str
    traceback: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        self.error = clipped(self.error, ERROR_CHARS)
        self.traceback = clipped(self.traceback, TRACEBACK_CHARS)

    @property
    def who(self) -> str:
        """The client as people call it: its name, else ``client <cid>``."""
        return self.name or f"client {self.cid}"


@dataclass
class RoundRecord:
    """One round. Round 0 holds only the central evaluation of the initial model.

    Attributes:
        round: The round number (in an asynchronous run, the global update).
        fit_participants: The clients whose fit replies went into the aggregate.
        fit_failures: The clients asked to train that did not contribute, and why.
        fit_metrics: The participants' fit metrics, combined by the strategy's
            ``fit_metrics`` (by default weighted by their numbers of examples): any
            values ``history.json`` keeps, as it reads them back (lists, dicts of names).
        fit_examples: The participants' total number of examples.
        aggregated: Whether the global model was updated; if aggregation failed,
            ``aggregate_info["error"]`` says why and the model is unchanged.
        aggregate_info: What the aggregation steps reported (e.g. ``"clipped"``
            clients, Krum's ``"selected"``), and ``"unreported"``: how many clients
            asked for their properties in the round did not report them (offline,
            or failed), so that ``where=`` left them out of its sample (they are
            asked again the next round); absent when every client asked answered.
        evaluate_participants: The clients whose federated evaluation counted.
        evaluate_failures: The clients asked to evaluate that did not, and why.
        evaluate_loss: The participants' loss, weighted by their numbers of
            examples; None without federated evaluation, or when fewer than
            ``min_evaluate_clients`` replied.
        evaluate_metrics: Their metrics, combined by the strategy's ``evaluate_metrics``.
        evaluate_examples: Their total number of examples.
        central_loss: The loss ``evaluate_fn`` gave for the model after the round
            (None without ``evaluate_fn``).
        central_metrics: The metrics ``evaluate_fn`` gave (:meth:`History.metric`
            reads one named ``loss`` as ``"loss_metric"``: ``"loss"`` is ``central_loss``).
        durations: Wall-clock seconds of the round's stages. ``"fit"``: from
            sending the fit tasks to the new global model (the clients' training,
            the transfers and the wait for the slowest reply, and ``"aggregate"``);
            ``"aggregate"``: the server's own work folding the replies and applying
            the aggregate, part of ``"fit"``; ``"evaluate"``: federated evaluation;
            ``"central"``: ``evaluate_fn``; ``"wait"``: a deployed server's wait
            for enough clients to connect before the round, not part of
            ``"fit"``; ``"total"``: the whole round, ``"wait"`` included. A stage
            that did not run has no entry: ``"evaluate"`` when no client was asked
            to evaluate (``fraction_evaluate=0``, a round ``evaluate_every`` skips,
            too few clients), ``"central"`` without ``evaluate_fn`` or in a round
            it skips.
        privacy: The budget spent so far, ``{"epsilon": ..., "delta": ...}``, in a
            differentially private run (None otherwise).
        bytes_sent: The array bytes the server sent to clients in the round (in an
            asynchronous run, in the global update; a round a deployed server ran
            again counts every attempt's).
        bytes_received: The array bytes the server received from clients, counted
            as ``bytes_sent`` is.
    """

    round: int
    fit_participants: list[int] = field(default_factory=list)
    fit_failures: list[Failure] = field(default_factory=list)
    fit_metrics: dict[str, Any] = field(default_factory=dict)
    fit_examples: int = 0
    aggregated: bool = False
    aggregate_info: dict[str, Any] = field(default_factory=dict)
    evaluate_participants: list[int] = field(default_factory=list)
    evaluate_failures: list[Failure] = field(default_factory=list)
    evaluate_loss: float | None = None
    evaluate_metrics: dict[str, Any] = field(default_factory=dict)
    evaluate_examples: int = 0
    central_loss: float | None = None
    central_metrics: dict[str, Scalar] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None

    @property
    def failures(self) -> list[Failure]:
        """Every failure of the round, fit and evaluate."""
        return [*self.fit_failures, *self.evaluate_failures]


_ID_LISTS = ("fit_participants", "evaluate_participants")
_OBJECTS = ("fit_metrics", "aggregate_info", "evaluate_metrics", "central_metrics", "durations")
_COUNTS = ("fit_examples", "evaluate_examples")
_OPTIONAL_NUMBERS = ("evaluate_loss", "central_loss", "bytes_sent", "bytes_received")
_ROUND_FIELDS = frozenset(f.name for f in fields(RoundRecord))
_FAILURE_FIELDS = frozenset(f.name for f in fields(Failure))


def unknown_fields(raw: dict[str, Any]) -> list[str]:
    """The keys of a round record (or of its failures) that :class:`RoundRecord` does not have."""
    unknown = sorted(k for k in raw if k not in _ROUND_FIELDS)
    for name in ("fit_failures", "evaluate_failures"):
        failures = raw.get(name)
        if isinstance(failures, list):
            unknown += sorted(
                {f"{name}.{k}" for f in failures if isinstance(f, dict) for k in f}
                - {f"{name}.{k}" for k in _FAILURE_FIELDS}
            )
    return unknown


def round_from_json(raw: Any) -> RoundRecord:
    """One round read back from JSON, each field checked, so a damaged file names what is wrong.

    Fields this version does not know (a newer covey wrote the record) are left
    out: the rest of the round reads as it was.

    Raises:
        ValueError: A field has the wrong type (the round and the field are named).
    """
    if not isinstance(raw, dict):
        raise ValueError(f"a round must be a JSON object, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k in _ROUND_FIELDS}
    rnd = raw.get("round")
    if not isinstance(rnd, int) or isinstance(rnd, bool):
        raise ValueError(f"a round has no valid 'round' number: {rnd!r:.40}")

    def check(name: str, ok: bool, want: str) -> None:
        if not ok:
            raise ValueError(f"round {rnd}: {name!r} must be {want}, got {raw[name]!r:.60}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for name in (n for n in _ID_LISTS if n in raw):
        ok = isinstance(raw[name], list) and all(is_int(c) for c in raw[name])
        check(name, ok, "a list of client ids")
    for name in (n for n in _OBJECTS if n in raw):
        check(name, isinstance(raw[name], dict), "an object")
    for name in (n for n in _COUNTS if n in raw):
        check(name, is_int(raw[name]), "a whole number")
    for name in (n for n in _OPTIONAL_NUMBERS if raw.get(n) is not None):
        ok = isinstance(raw[name], int | float) and not isinstance(raw[name], bool)
        check(name, ok, "a number or null")
    if raw.get("privacy") is not None:
        check("privacy", isinstance(raw["privacy"], dict), "an object or null")
    for name in ("fit_failures", "evaluate_failures"):
        failures = raw.get(name, [])
        check(
            name,
            isinstance(failures, list) and all(isinstance(f, dict) for f in failures),
            "a list of failures",
        )
        raw[name] = [
            Failure(**{k: v for k, v in f.items() if k in _FAILURE_FIELDS}) for f in failures
        ]
    return RoundRecord(**raw)
