"""Strategies: who takes part, what they are told, and how their replies combine.

A :class:`Strategy` is data: sampling fractions and minimums, per-round config
functions, how metrics are combined, and an aggregation :class:`~covey.aggregate.Step`.
Named presets such as :func:`FedAvg` are short functions that fill one in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from covey.aggregate import Step, chain, weighted_mean
from covey.aggregate._base import run_hooks
from covey.aggregate._flat import floor_fraction
from covey.aggregate._order import check_reduces
from covey.core._hooks import RunHook
from covey.core._messages import Config, Count, FitResult, Metrics, Real
from covey.core._signature import InitSignature
from covey.core._weights import Array, Weights
from covey.strategies._checks import (
    CALLS,
    check_call,
    check_hooks,
    checked_count,
    checked_metrics,
    name_of,
)
from covey.strategies._clients import (
    ClientConfigFn,
    ClientInfo,
    eligible_ids,
    made_config,
    no_config,
    option_config,
    per_client_configs,
    round_config,
)
from covey.strategies._describe import described, sampled
from covey.strategies._fitround import FitRound, check_fit_round
from covey.strategies._fold import fold
from covey.strategies._metrics import MetricsFn, weighted_metrics
from covey.strategies._names import TRAINS_NO_CLIENT, refuse_flower_methods, unknown_options
from covey.strategies._numbers import check_numbers
from covey.strategies._subclass import parameters

ConfigFn = Callable[[int], Config]
"""``(round) -> config``: ``on_fit_config`` and ``on_evaluate_config``, a round's config."""
Selector = Callable[[Sequence[int], int, np.random.Generator], Sequence[int]]
"""``(candidates, round, rng) -> chosen cids``: a custom client selection."""
Where = Mapping[str, Any] | Callable[[Mapping[str, Any]], bool]
"""Which clients may take part: required property values, or a predicate on properties."""


@dataclass(frozen=True)
class Strategy:
    """How the server runs each round.

    Args:
        aggregator: The aggregation step (see :mod:`covey.aggregate`).
        fraction_fit: Fraction of available clients sampled to train each round.
        min_fit_clients: Least number of clients sampled to train, and the least
            number of successful replies a round needs when failures are accepted.
        fraction_evaluate: Fraction of available clients sampled for federated
            evaluation (0 turns it off).
        min_evaluate_clients: Least number sampled for, and replying to, evaluation.
        evaluate_every: Evaluate (federated, and the server's ``evaluate_fn``) after every
            this many rounds, counted from round 1, and after the run's last round; 1: every.
        min_available_clients: Clients that must be connected before a round starts.
        on_fit_config: ``round -> dict`` sent to clients with each fit task (entries covey
            sets itself, such as ``"extras"`` or another ``"round"``, are refused).
        on_evaluate_config: ``round -> dict`` sent with each evaluate task.
        accept_failures: Go on with the clients that replied when some fail (if at
            least ``min_fit_clients`` replied); if False, any failed fit stops the run.
            Federated evaluation never stops a run: clients that fail to evaluate
            are recorded and left out of the averaged loss and metrics.
        fit_metrics: Combines the clients' fit metrics (default: weighted by examples).
        evaluate_metrics: Combines the clients' evaluation metrics.
        selector: Optional ``(candidates, round, rng) -> cids`` replacing uniform
            sampling; ``candidates`` are the available clients that pass ``where``,
            and ``rng`` is seeded from ``(seed, round, purpose)``.
        where: Which clients may be selected, from the properties they report
            (:meth:`covey.Client.properties`): a dict of required values such as
            ``{"site": "hospital", "has_gpu": True}`` (a bool matches only a bool), or a predicate
            ``properties -> bool`` (a return value with no truth value, an array
            say, is refused naming the predicate). Applies to training and federated evaluation;
            fractions and minimums count the clients that pass. None: every client.
        buffer_size: Run asynchronously (FedBuff): keep ``num_fit`` clients
            training at all times and update the global model every
            ``buffer_size`` replies, never waiting for the slowest client. None:
            synchronous rounds. See :func:`covey.FedBuff`.
        max_staleness: In asynchronous mode, drop updates computed from a model
            more than this many updates old (None: keep all).
        name: A label for logs and history (the preset's name, e.g. ``"FedAdam"``).
        hyperparameters: The algorithm's own settings as the preset received them
            (e.g. ``{"eta": 0.01, ...}``), recorded in the history by :meth:`describe`.
        hooks: Run hooks (:class:`covey.core.RunHook`) the round loop calls at the
            start, around each round and at the end; e.g. the privacy accountant
            that :func:`covey.privacy.central` adds.
        fit_round: Replaces the fit exchange of each synchronous round: given the
            transport, the sampled clients, the fit task and the timeout, it talks to
            the clients and returns a :class:`FitOutcome` (set by
            :func:`covey.secagg.secure`; None: one fit task per client). With
            per-client configs it is also passed ``configs=``, each client's whole config.
            It combines the round's fit metrics itself, so ``fit_metrics`` is refused beside it.
        fit_config_entries: Entries every fit task's config carries besides those of
            :meth:`fit_config`, even when a subclass overrides it (set by
            :func:`covey.privacy.central` for ``"dp_clip"``).
        on_client_fit_config: ``(round, client) -> dict``: entries of one client's own,
            sent on top of ``on_fit_config``'s to each client sampled to train (its
            entries win over the round's); ``client`` is a
            :class:`~covey.strategies.ClientInfo` (id, reported properties, name).
            Entries covey sets (``"round"``, ``"extras"``, ``"dp_clip"``, names
            starting ``"covey."``) are refused. None: every client gets the round's config.
        on_client_evaluate_config: The same for federated evaluation tasks.
    """

    aggregator: Step = field(default_factory=lambda: chain(weighted_mean()))
    fraction_fit: float = 1.0
    min_fit_clients: int = 2
    fraction_evaluate: float = 1.0
    min_evaluate_clients: int = 2
    evaluate_every: int = 1
    min_available_clients: int = 2
    on_fit_config: ConfigFn = no_config
    on_evaluate_config: ConfigFn = no_config
    accept_failures: bool = True
    fit_metrics: MetricsFn = weighted_metrics
    evaluate_metrics: MetricsFn = weighted_metrics
    selector: Selector | None = None
    where: Where | None = None
    buffer_size: int | None = None
    max_staleness: int | None = None
    name: str = "custom"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    hooks: tuple[RunHook, ...] = ()
    fit_round: FitRound | None = None
    fit_config_entries: Mapping[str, Any] = field(default_factory=dict)
    on_client_fit_config: ClientConfigFn | None = None
    on_client_evaluate_config: ClientConfigFn | None = None
    __signature__ = InitSignature()  # help(Strategy) shows the fields, not __new__'s

    if TYPE_CHECKING:  # NumPy numbers are taken, and kept as the Python numbers they are

        def __init__(
            self,
            aggregator: Step = ...,
            fraction_fit: Real = 1.0,
            min_fit_clients: Count = 2,
            fraction_evaluate: Real = 1.0,
            min_evaluate_clients: Count = 2,
            evaluate_every: Count = 1,
            min_available_clients: Count = 2,
            on_fit_config: ConfigFn = ...,
            on_evaluate_config: ConfigFn = ...,
            accept_failures: bool = True,
            fit_metrics: MetricsFn = ...,
            evaluate_metrics: MetricsFn = ...,
            selector: Selector | None = None,
            where: Where | None = None,
            buffer_size: Count | None = None,
            max_staleness: Count | None = None,
            name: str = "custom",
            hyperparameters: Mapping[str, Any] = ...,
            hooks: tuple[RunHook, ...] = (),
            fit_round: FitRound | None = None,
            fit_config_entries: Mapping[str, Any] = ...,
            on_client_fit_config: ClientConfigFn | None = None,
            on_client_evaluate_config: ClientConfigFn | None = None,
        ) -> None: ...

    def __new__(cls, *args: Any, **kwargs: Any) -> Strategy:
        # Before the dataclass's __init__ refuses them: Flower's names get covey's. A
        # subclass's __init__ of its own may take other arguments: it says which.
        accepted = parameters(cls)
        unknown = set() if accepted is None else set(kwargs) - accepted
        if unknown:
            raise unknown_options(cls.__name__, unknown, (accepted or set()) - {"self"})
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refuse_flower_methods(cls)

    def __post_init__(self) -> None:
        check_numbers(self)
        self._check_functions()
        chooses = self.selector is not None and self.buffer_size is None  # picks its own
        if self.fraction_fit == 0.0 and self.min_fit_clients == 0 and not chooses:
            raise ValueError(TRAINS_NO_CLIENT)
        if not isinstance(self.aggregator, Step):
            raise TypeError(
                f"aggregator must be a covey.aggregate.Step, got {type(self.aggregator).__name__}"
            )
        check_reduces(self.aggregator)
        if self.where is not None and not isinstance(self.where, Mapping | Callable):
            raise TypeError(
                f"where must be a dict of property values or a predicate, got {self.where!r}"
            )
        if self.buffer_size is not None and run_hooks(self.hooks, self.aggregator):
            raise ValueError("run hooks (privacy accounting, a max_trees) need synchronous rounds")
        if self.buffer_size is not None and self.fraction_evaluate > 0.0:
            raise ValueError(
                "asynchronous mode (buffer_size) runs no federated evaluation rounds: set "
                "fraction_evaluate=0 and judge the model with a central evaluate_fn"
            )

    def _check_functions(self) -> None:
        """Refuse options that must be functions (or a bool) but are not, naming them.

        A function that cannot be called as the round loop calls it (see
        :func:`~covey.strategies._checks.check_call`) is refused too.
        """
        for attr in CALLS:
            check_call(getattr(self, attr), attr)
        check_fit_round(self)
        check_hooks(self.hooks)
        if not isinstance(self.accept_failures, bool):
            raise TypeError(f"accept_failures must be True or False, got {self.accept_failures!r}")

    @property
    def asynchronous(self) -> bool:
        """Whether the strategy runs asynchronously (FedBuff), i.e. ``buffer_size`` is set."""
        return self.buffer_size is not None

    @property
    def _step(self) -> str:
        """What a round number counts in messages: ``"update"`` when asynchronous."""
        return "update" if self.asynchronous else "round"

    def eligible(
        self, available: Sequence[int], properties: Mapping[int, Mapping[str, Any]]
    ) -> list[int]:
        """The clients of ``available`` that pass :attr:`where`, in the order given.

        Args:
            available: Connected client ids.
            properties: The properties each client reported; a client missing here
                (it has not reported, or failed to) is not eligible while ``where`` is set,
                nor is one for which the predicate raises KeyError, TypeError or ValueError.

        Returns:
            The eligible ids (all of ``available`` when ``where`` is None). A subclass
            may override it: the rounds then ask it, ``where`` given or not.
        """
        return eligible_ids(self.where, available, properties)

    def num_fit(self, available: int) -> int:
        """How many clients to sample for training among ``available``.

        ``floor(fraction_fit * available)`` in exact arithmetic (0.7 of 90 is 63),
        and at least ``min_fit_clients``.

        Args:
            available: The number of eligible clients connected.
        """
        return max(floor_fraction(self.fraction_fit, available), self.min_fit_clients)

    def num_evaluate(self, available: int) -> int:
        """How many clients to sample for evaluation (0 if evaluation is off).

        Args:
            available: The number of eligible clients connected.
        """
        if self.fraction_evaluate == 0.0:
            return 0
        return max(floor_fraction(self.fraction_evaluate, available), self.min_evaluate_clients)

    def sample(
        self, available: Sequence[int], count: int, round: int, seed: int, purpose: int
    ) -> list[int]:
        """Choose ``count`` client ids, reproducibly from ``(seed, round, purpose)``.

        Args:
            available: The eligible client ids, in any order (drawn from in id order).
            count: How many to choose (:meth:`num_fit` or :meth:`num_evaluate`);
                more than ``len(available)`` raises ``ValueError``.
            round: The round the clients are chosen for.
            seed: The run's seed.
            purpose: 0 to choose clients to train, 1 to evaluate (a ``selector``
                chooses evaluation clients only if it says it does).

        Returns:
            Sorted client ids.
        """
        return sampled(self, available, count, round, seed, purpose)

    def describe(self) -> dict[str, Any]:
        """The strategy's name, hyperparameters, options and aggregator, as JSON-ready values.

        Functions (config functions, a custom ``selector`` or ``where`` predicate)
        are given by name; ``"aggregator"`` is the aggregation step as text, each
        built-in step with all its arguments (``"chain(weighted_mean(),
        server_adam(eta=0.1, ...))"``), a step of one's own by its function's
        name. :meth:`covey.History.to_json` records this, so a ``history.json``
        says which strategy ran and how, and a resumed run with another
        aggregator is refused.

        Example:
            >>> import covey
            >>> covey.FedAdam(eta=0.05).describe()["hyperparameters"]["eta"]
            0.05
        """
        return described(self, Strategy)

    def aggregate(
        self, global_weights: Weights, results: Sequence[FitResult], round: int = 1
    ) -> dict[str, Array]:
        """Combine ``results`` into new global weights, outside any loop.

        Runs this strategy's aggregation step over one round exactly as
        :func:`covey.simulate` and :func:`covey.serve` do (the results taken as
        clients ``0, 1, ...`` in order), for notebooks, tests and loops of your own.
        Stateful steps (server optimizers) start fresh on each call.

        Args:
            global_weights: The model the clients trained from.
            results: The clients' :class:`~covey.FitResult` objects.
            round: The round number the steps see: an int from 1, as the round loops
                number training rounds.

        Returns:
            The new global weights (read-only arrays; copy them to change them).

        Raises:
            ValueError: if ``round`` is below 1 (``TypeError`` if it is no int, a bool say).
            covey.WeightsError: if a result does not match ``global_weights``.
            covey.AggregationError: if the results cannot be combined.
            TypeError: if a result is no :class:`~covey.FitResult` (a Flower tuple is
                told what to give), or if the step emits a :class:`~covey.aggregate.Dropped`
                naming another client than the contribution it was given, or one at
                ``Begin`` or ``End``, as a round of :func:`covey.simulate` refuses them.

        Example:
            >>> import numpy as np, covey
            >>> results = [covey.FitResult(weights={"w": np.array([1.0])}, num_examples=1),
            ...            covey.FitResult(weights={"w": np.array([4.0])}, num_examples=2)]
            >>> covey.FedAvg().aggregate({"w": np.zeros(1)}, results)["w"].tolist()
            [3.0]
        """
        new, _ = fold(self.aggregator, global_weights, results, round)
        return new

    def fit_config(self, round: int) -> Config:
        """The config sent with fit tasks in ``round`` (the runtime adds ``"round"``).

        Args:
            round: The round number, from 1.
        """
        return option_config(self, "on_fit_config", round)

    def evaluate_config(self, round: int) -> Config:
        """The config sent with evaluate tasks in ``round``.

        Args:
            round: The round number, from 1.
        """
        return option_config(self, "on_evaluate_config", round)

    def fit_task_config(self, round: int) -> Config:
        """What the round loops send with fit tasks: :meth:`fit_config`, then the fixed entries.

        An override of :meth:`fit_config` in a subclass is called here, and what it
        returns is checked like ``on_fit_config``'s.

        Args:
            round: The round number, from 1.
        """
        what, fixed = self.source("fit_config", "on_fit_config"), self.fit_config_entries
        config = round_config(
            made_config(self, "fit", round), what, "fit", round, fixed, self._step
        )
        config.update(fixed)
        return config

    def evaluate_task_config(self, round: int) -> Config:
        """What the round loop sends with evaluate tasks: :meth:`evaluate_config`, checked.

        Args:
            round: The round number, from 1.
        """
        what = self.source("evaluate_config", "on_evaluate_config")
        made = made_config(self, "evaluate", round)
        return round_config(made, what, "evaluate", round, (), self._step)

    def client_fit_config(self, round: int, client: ClientInfo) -> Config:
        """Entries of ``client``'s own for its fit task in ``round``, on top of :meth:`fit_config`.

        The default calls :attr:`on_client_fit_config` (none when it is None). A
        subclass may override it; covey then calls it for every client sampled to
        train, in the order of their ids, and checks what it returns like
        ``on_client_fit_config``'s.

        Args:
            round: The round number, from 1.
            client: The sampled client: its id, name and reported properties.
        """
        fn = self.on_client_fit_config
        return {} if fn is None else fn(round, client)

    def client_evaluate_config(self, round: int, client: ClientInfo) -> Config:
        """Entries of ``client``'s own for its evaluate task, on top of :meth:`evaluate_config`.

        Args:
            round: The round number, from 1.
            client: The sampled client: its id, name and reported properties.
        """
        fn = self.on_client_evaluate_config
        return {} if fn is None else fn(round, client)

    def sends_client_configs(self, kind: str) -> bool:
        """Whether tasks of ``kind`` get per-client entries.

        Args:
            kind: ``"fit"`` or ``"evaluate"``.
        """
        method = f"client_{kind}_config"
        overridden = getattr(type(self), method) is not getattr(Strategy, method)
        return overridden or getattr(self, f"on_client_{kind}_config") is not None

    def client_task_configs(
        self, kind: str, round: int, base: Config, clients: Sequence[ClientInfo]
    ) -> dict[int, Config] | None:
        """What the round loops send each of ``clients``: ``base`` plus its own entries, checked.

        Args:
            kind: ``"fit"`` or ``"evaluate"``.
            round: The round.
            base: The round's config (:meth:`fit_task_config` or :meth:`evaluate_task_config`).
            clients: The sampled clients.

        Returns:
            ``{cid: config}``, or None when the strategy gives no per-client entries
            (every client then gets ``base``).

        Raises:
            TypeError: naming the function, if it returns anything but a dict keyed by str.
            ValueError: naming the function, if it sets an entry covey sets itself.
        """
        if not self.sends_client_configs(kind):
            return None
        name = f"on_client_{kind}_config"
        option, what = getattr(self, name), self.source(f"client_{kind}_config", name)
        given = (option, name) if option is not None and what != name else None
        what += f" {name_of(option)}" if option is not None and what == name else ""
        make = self.client_fit_config if kind == "fit" else self.client_evaluate_config
        fixed = self.fit_config_entries if kind == "fit" else ()
        return per_client_configs(make, what, kind, round, base, clients, fixed, self._step, given)

    def combined_metrics(
        self, kind: str, results: Sequence[tuple[int, Metrics]], round: int | None = None
    ) -> dict[str, Any]:
        """A round's metrics from :attr:`fit_metrics` (``kind="fit"``) or :attr:`evaluate_metrics`.

        Args:
            kind: ``"fit"`` or ``"evaluate"``.
            results: ``(num_examples, metrics)`` of each client that replied.
            round: The round, named in the note an error of the function gets.

        Raises:
            TypeError: naming the function, if it returns anything but a dict keyed by names.
            Exception: what the function raised, with a note naming it (and the round).
        """
        combine = self.fit_metrics if kind == "fit" else self.evaluate_metrics
        what = f"{kind}_metrics {name_of(combine)}"
        try:
            combined = combine(results)
        except Exception as exc:  # the user's error, told where it came from
            where = "" if round is None else f" in round {round}"
            exc.add_note(f"raised by {what}{where}, given {len(results)} clients' metrics")
            raise
        return checked_metrics(combined, what, round)

    def client_count(self, kind: str, available: int) -> int:
        """:meth:`num_fit` (``kind="fit"``) or :meth:`num_evaluate` of ``available``, checked.

        Args:
            kind: ``"fit"`` or ``"evaluate"``.
            available: The number of eligible clients connected.

        Raises:
            TypeError: naming the method (a subclass's override), if it returns no int >= 0.
        """
        count = self.num_fit(available) if kind == "fit" else self.num_evaluate(available)
        return checked_count(count, self.source(f"num_{kind}", f"num_{kind}"))

    def source(self, method: str, option: str) -> str:
        """Who does ``method``: a subclass's override of it, by name, or the option ``option``.

        Args:
            method: The name of a :class:`Strategy` method (``"fit_config"``).
            option: What to name when the method is not overridden (``"on_fit_config"``).
        """
        if getattr(type(self), method) is not getattr(Strategy, method):
            return f"{type(self).__name__}.{method}()"
        return option
