"""The aggregation protocol: a step is a pair of pure functions ``(init, update)``.

A round reaches the aggregation pipeline as a stream of events::

    Begin(round, params)  Contribution(cid=0, ...)  Contribution(cid=3, ...)  End(round)

and a step maps each event to ``(new_state, events_out)``. Per-client steps
(clipping, dropping non-finite updates) rewrite ``Contribution`` events;
reducers (weighted mean, median, ...) fold contributions into their state and
emit one :class:`Aggregate` at ``End``; server-side steps (noise, server
optimizers) rewrite the ``Aggregate``. :func:`chain` composes steps into a step
of the same type, so any sensible combination is one ``chain(...)``.

Every step passes on the events it does not know, and :func:`chain` gives
``Begin`` to every step, even past a reducer that consumes it (server-side
steps need the round's global weights). Steps report what they did through
``End.info`` (per-client steps, before the reducer) or ``Aggregate.info``
(after it); a reducer copies ``End.info`` into its ``Aggregate``. A step that
needs clients to receive something with their fit task (SCAFFOLD's control
variate) emits a :class:`Broadcast` when it sees ``Begin``.

State is returned, never kept on an object. For speed, a reducer may reuse the
array buffers of the state it is given (continue only with the state it returns);
a step that passes a contribution on leaves that state as it was (AggregationError).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from covey.aggregate._delta import check_delta
from covey.aggregate._fields import check_fields
from covey.core._jsonvalues import check_info
from covey.core._messages import Metrics, slot_setters
from covey.core._weights import Array, Weights, add, subtract


class AggregationError(ValueError):
    """A round's contributions cannot be combined (e.g. every one has zero examples).

    Raised at ``End``, the round loop keeps the global model for that round; raised
    on a ``Contribution`` (before the step changes any state), it refuses that one
    client's update, which the loop records as a failed fit; the round goes on from
    the chain's state before it, which the steps before must not have changed.
    """


@dataclass(frozen=True, slots=True)
class Begin:
    """A round starts; ``params`` are the global weights the clients received.

    Args:
        round: The round (an asynchronous run's update) that starts.
        params: The global weights the round's clients received.
    """

    round: int
    params: Weights


@dataclass(frozen=True, slots=True, init=False)
class Contribution:
    """One client's validated reply: full weights or a delta, and its size.

    Args:
        cid: The client's id.
        num_examples: Examples the client trained on.
        weights: The client's full local weights, if it sent weights.
        delta: The client's update (local minus global), if it sent a delta.
        metrics: The client's reported metrics.
        staleness: How many global updates happened between the model the client
            trained from and now (0 in synchronous rounds; FedBuff weighs by it).
        extras: Model-shaped arrays the client sent besides its update, by name
            (e.g. SCAFFOLD's ``"scaffold_delta_c"``).
    """

    cid: int
    num_examples: int
    weights: Weights | None = None
    delta: Weights | None = None
    metrics: Metrics = field(default_factory=dict)
    staleness: int = 0
    extras: Mapping[str, Weights] = field(default_factory=dict)
    # Set by the round loops' validation only: every floating-point value's square
    # is finite, so sums of num_examples * value cannot overflow (see _mean.py).
    _bounded: bool = field(default=False, init=False, repr=False, compare=False)

    def __init__(
        self,
        cid: int,
        num_examples: int,
        weights: Weights | None = None,
        delta: Weights | None = None,
        metrics: Metrics | None = None,
        staleness: int = 0,
        extras: Mapping[str, Weights] | None = None,
    ) -> None:
        """Client ``cid``'s contribution (see the class)."""
        (
            set_cid,
            set_count,
            set_weights,
            set_delta,
            set_metrics,
            set_staleness,
            set_extras,
            set_bounded,
        ) = _CONTRIBUTION_SLOTS
        set_cid(self, cid)
        set_count(self, num_examples)
        set_weights(self, weights)
        set_delta(self, delta)
        set_metrics(self, {} if metrics is None else metrics)
        set_staleness(self, staleness)
        set_extras(self, {} if extras is None else extras)
        set_bounded(self, False)

    def as_delta(self, params: Weights) -> Weights:
        """The update relative to ``params`` (computed if the client sent weights).

        Args:
            params: The global weights the client trained from (``Begin.params``).

        Returns:
            ``delta`` as the client sent it, or ``weights - params``, a new dict.
        """
        if self.delta is not None:
            return self.delta
        if self.weights is None:  # an invariant of this module, not an input check
            raise RuntimeError("internal error: self.weights is unset")
        return subtract(self.weights, params)

    def as_weights(self, params: Weights) -> Weights:
        """The client's full weights (computed if the client sent a delta).

        Args:
            params: The global weights the client trained from (``Begin.params``).

        Returns:
            ``weights`` as the client sent them, or ``params + delta``, a new dict.
        """
        if self.weights is not None:
            return self.weights
        if self.delta is None:  # an invariant of this module, not an input check
            raise RuntimeError("internal error: self.delta is unset")
        return add(params, self.delta)


_CONTRIBUTION_SLOTS = slot_setters(
    Contribution,
    "cid",
    "num_examples",
    "weights",
    "delta",
    "metrics",
    "staleness",
    "extras",
    "_bounded",
)


mark_bounded: Callable[[Contribution, bool], None] = _CONTRIBUTION_SLOTS[-1]
"""``mark_bounded(contribution, True)`` records that its every float value has a finite square.

For the round loops' validation, which computes those squares anyway: the
mean then folds it without guarding against overflow (see ``_mean.py``). The
slot's setter itself, so marking costs no Python frame on the hot path.
"""


@dataclass(frozen=True, slots=True)
class End:
    """A round's contributions are all in.

    Args:
        round: The round.
        info: What per-client steps report (e.g. who was clipped); reducers copy
            it into the :class:`Aggregate` they emit.
        step: What ``round`` counts, for errors: ``"round"``, or an asynchronous
            run's ``"update"``; a step that emits an ``End`` of its own passes it on.
    """

    round: int
    info: dict[str, Any] = field(default_factory=dict)
    step: str = "round"

    def __post_init__(self) -> None:
        check_info(self.info, "End", self.round)


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Arrays a step wants every client of the round to receive with its fit task.

    A step emits it in answer to ``Begin``; the round loop sends the merged
    ``extras`` of all broadcasts as the fit task's payload, and the client runtime
    hands them to ``Client.fit`` as ``config["extras"]``.

    Args:
        round: The round.
        extras: Model-shaped arrays by name (e.g. ``{"scaffold_c": c}``).
    """

    round: int
    extras: Mapping[str, Weights]


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The combined result of a round: new global weights or an update to them.

    Args:
        round: The round.
        num_clients: How many contributions were combined.
        num_examples: Their total number of examples.
        weights: The new global weights, when the reducer produced full weights.
        delta: The update to add to the global weights otherwise.
        info: What steps want to report (e.g. clipped or dropped clients).

    Raises:
        TypeError: ``round``, ``num_clients`` or ``num_examples`` is no int (NumPy
            integers are taken), ``weights`` or ``delta`` no dict, or not exactly
            one of them is given; naming the field.
        ValueError: ``round``, ``num_clients`` or ``num_examples`` is negative,
            naming the field.
    """

    round: int
    num_clients: int
    num_examples: int
    weights: Weights | None = None
    delta: Weights | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.weights is None) == (self.delta is None):
            raise TypeError(
                f"Aggregate(round={self.round}) needs exactly one of weights= or delta=, got "
                + ("neither" if self.weights is None else "both")
            )
        check_fields(self.round, self.num_clients, self.num_examples, self.weights, self.delta)
        check_info(self.info, "Aggregate", self.round)

    def as_delta(self, params: Weights) -> Weights:
        """The update relative to ``params``.

        Args:
            params: The round's global weights (``Begin.params``).

        Returns:
            ``delta``, or ``weights - params`` when the aggregate holds weights.
        """
        if self.delta is not None:
            return self.delta
        if self.weights is None:  # an invariant of this module, not an input check
            raise RuntimeError("internal error: self.weights is unset")
        return subtract(self.weights, params)

    def apply(self, params: Weights, step: str = "round") -> dict[str, Array]:
        """The new global weights: ``weights`` or ``params + delta``.

        Args:
            params: The round's global weights (``Begin.params``).
            step: What ``round`` counts, in an error (as :attr:`End.step`):
                ``"round"``, or an asynchronous run's ``"update"``.

        Raises:
            covey.WeightsError: if ``delta`` does not have the names and shapes of
                ``params``, or holds values an array's dtype cannot take (a float
                delta for an integer array), naming the array.
        """
        if self.weights is not None:
            return dict(self.weights)
        if self.delta is None:  # an invariant of this module, not an input check
            raise RuntimeError("internal error: self.delta is unset")
        check_delta(self.delta, params, f"{step} {self.round}'s aggregate delta")
        return add(params, self.delta)


@dataclass(frozen=True, slots=True)
class Dropped:
    """A per-client step left client ``cid``'s contribution out; the round records why.

    Emitted in place of the contribution, it passes down the chain; the round loop
    then counts the client's fit as failed (``why``), not as a participant.

    Args:
        cid: The id of the client whose contribution the step was given: a
            ``Dropped`` naming another client stops the run.
        why: A non-empty str, recorded as ``"left out by the aggregation: <why>"``.
    """

    cid: int
    why: str

    def __post_init__(self) -> None:
        if not isinstance(self.why, str):
            raise TypeError(
                f"Dropped(cid={self.cid!r}).why must be a str saying why the contribution "
                f"was left out (the round records it as the client's failure), got "
                f"{type(self.why).__name__}"
            )
        if not self.why.strip():
            raise ValueError(
                f"Dropped(cid={self.cid!r}).why is {self.why!r}: say why the contribution "
                "was left out (the round records it as the client's failure)"
            )


Event = Begin | Contribution | End | Aggregate | Broadcast | Dropped
"""One event of a round's stream, what a step's ``update`` takes and gives."""
State = Any
Init = Callable[[Weights], State]
Update = Callable[[State, Event], tuple[State, tuple[Event, ...]]]


class Step(NamedTuple):
    """An aggregation step: ``init(params) -> state``, ``update(state, event) -> (state, events)``.

    ``init`` runs once per federation with the initial global weights;
    ``update`` runs for every event of every round.

    Attributes:
        init: ``init(params) -> state``: the step's first state, from the run's
            initial global weights.
        update: ``update(state, event) -> (state, events)``: the new state and
            the events passed on, in a tuple (a list is taken).
    """

    init: Init
    update: Update

    def feed(self, state: State, event: Event) -> tuple[State, tuple[Event, ...]]:
        """``update(state, event)``, its result checked: a mistake in it is named.

        Args:
            state: The state the last call returned (or ``init``'s).
            event: The round's next event.

        Returns:
            ``(state, events)`` as ``update`` returned them.

        Raises:
            TypeError: naming the ``update`` function, if it does not return
                ``(state, events)`` with the events in a tuple (or list).
        """
        out = self.update(state, event)
        if type(out) is tuple and len(out) == 2:
            events = out[1]  # a tuple, checked by identity first: this runs once per client
            if type(events) is tuple or isinstance(events, tuple | list):
                return out
        name = getattr(self.update, "__qualname__", type(self.update).__name__)
        module = getattr(self.update, "__module__", None)
        got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
        if isinstance(out, tuple) and len(out) == 2:
            got = f"(state, {type(out[1]).__name__})"
        raise TypeError(
            f"the aggregation step {name}"
            + (f" (in {module})" if module else "")
            + f" returned {got} for {type(event).__name__}: update(state, event) must return "
            "(state, events), the events it passes on in a tuple, e.g. (state, (event,))"
        )


_NEED = "_covey_min_contributions"
MEAN = "_covey_mean"
"""Set on the ``update`` of a mean step: whether it weighs by examples (see ``_short``)."""
STEPS = "_covey_steps"
"""Set on the ``update`` of a chain: its steps, in order."""
WRAPS = "_covey_wraps"
"""Set on the ``update`` of a step that acts as the step it names once a contribution passed.

The checkpointing wrapper waits for the save in flight at the round's first
contribution, and is the step it wraps after that.
"""
_FEDERATION = "_covey_federation_size"


def for_federation(step: Step, num_clients: int) -> Step:
    """``step``, marked as written for a federation of exactly ``num_clients`` clients.

    SCAFFOLD's ``c`` moves by ``1/N`` of each client's change: a simulation of
    another number of clients is refused before it starts.
    """
    setattr(step.update, _FEDERATION, num_clients)
    return step


def innermost(step: Step) -> Any:
    """The ``update`` of ``step``, or of the step it wraps (see :data:`WRAPS`), innermost.

    What a step says of itself (its need, its federation, whether it is a mean) is
    said by the step a run's checkpointing wraps, not by the wrapper.
    """
    update = step.update
    while (inner := getattr(update, WRAPS, None)) is not None:
        update = inner.update
    return update


def federation_size(step: Step) -> int | None:
    """The federation size ``step`` was written for, if it says (see for_federation)."""
    size = getattr(innermost(step), _FEDERATION, None)
    return size if isinstance(size, int) and not isinstance(size, bool) else None


_HOOKS = "_covey_run_hooks"


def carrying(step: Step, *hooks: Any) -> Step:
    """``step``, carrying run hooks (:class:`covey.core.RunHook`) the round loop calls.

    A step whose rule reaches past one round (XGBoost's ``max_trees`` stopping the
    run) brings its hook with it, so a strategy of one's own with the step, in a
    chain or alone, runs it as the preset does.
    """
    setattr(step.update, _HOOKS, (*getattr(step.update, _HOOKS, ()), *hooks))
    return step


def step_hooks(step: Step) -> tuple[Any, ...]:
    """The run hooks ``step`` carries (see :func:`carrying`), a chain's steps' in order."""
    update = innermost(step)
    inner = (hook for part in getattr(update, STEPS, ()) for hook in step_hooks(part))
    return (*getattr(update, _HOOKS, ()), *inner)


def run_hooks(hooks: Sequence[Any], step: Step) -> tuple[Any, ...]:
    """The run hooks a round loop calls: a strategy's ``hooks``, then those its ``step`` carries."""
    own = tuple(hooks)
    return (*own, *(h for h in step_hooks(step) if all(h is not o for o in own)))


def requiring(step: Step, count: int, why: str) -> Step:
    """``step``, marked as needing at least ``count`` contributions per round to do anything.

    ``why`` says so in words (e.g. ``"Krum with f=1 needs at least 2f+3 = 5"``); a run
    that can never sample that many clients per round is refused before it starts.
    """
    setattr(step.update, _NEED, (count, why))
    return step


def min_contributions(step: Step) -> tuple[int, str] | None:
    """``(count, why)``: the contributions per round ``step`` needs, if it says (see requiring)."""
    need = getattr(innermost(step), _NEED, None)
    if isinstance(need, tuple) and len(need) == 2:
        return int(need[0]), str(need[1])
    return None


def broadcast_extras(events: tuple[Event, ...]) -> dict[str, Weights] | None:
    """The merged ``extras`` of every :class:`Broadcast` in ``events`` (None if there is none)."""
    merged: dict[str, Weights] | None = None
    for event in events:
        if isinstance(event, Broadcast):
            merged = {} if merged is None else merged
            merged.update(event.extras)
    return merged
