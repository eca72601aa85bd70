"""Errors that name covey's way when a strategy is written with another framework's names.

People who come from Flower (``flwr``) write ``FedAvg(on_fit_config_fn=...)``,
subclass ``FedAvg`` or override ``aggregate_fit``. None of that applies here:
options have covey's names, presets are functions, and a :class:`~covey.Strategy`
is data whose aggregation is a step. These helpers turn each slip into an
error that says what to write instead; nothing here accepts the other names.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

#: Why ``fraction_fit=0`` with ``min_fit_clients=0`` is refused, and covey's evaluate-only way.
TRAINS_NO_CLIENT = (
    "fraction_fit=0 and min_fit_clients=0 would train no client: covey has no evaluate-only "
    "run (Flower's fraction_fit=0.0 with min_fit_clients=0); to judge a given model, evaluate "
    "it on the server with simulate(evaluate_fn=..., rounds=0)"
)

#: Flower's strategy options (its legacy and its message API) and covey's counterparts.
FLOWER_OPTIONS = {
    "on_fit_config_fn": "on_fit_config",
    "on_evaluate_config_fn": "on_evaluate_config",
    "fit_metrics_aggregation_fn": "fit_metrics",
    "evaluate_metrics_aggregation_fn": "evaluate_metrics",
    "initial_parameters": "simulate(initial_weights=...) or serve(initial_weights=...)",
    "evaluate_fn": "simulate(evaluate_fn=...) or serve(evaluate_fn=...)",
    "fraction_train": "fraction_fit",
    "min_train_nodes": "min_fit_clients",
    "min_evaluate_nodes": "min_evaluate_clients",
    "min_available_nodes": "min_available_clients",
    "server_learning_rate": "server_lr (FedAvgM, Scaffold, FedBuff)",
    "beta_1": "beta1",
    "beta_2": "beta2",
    "eta_l": "nothing: the clients' learning rate is their own setting; send it with on_fit_config",
    "num_malicious_clients": "f (Krum, MultiKrum, Bulyan)",
    "num_clients_to_keep": "MultiKrum(m=...)",
    "q_param": "q (QFedAvg)",
    "qffl_learning_rate": "client_lr (QFedAvg)",
    "inplace": "nothing: aggregation never writes into the clients' replies",
    # Names only Flower's message API strategies (flwr.serverapp.strategy) use.
    "train_metrics_aggr_fn": "fit_metrics",
    "evaluate_metrics_aggr_fn": "evaluate_metrics",
    "weighted_by_key": "nothing: means are weighted by each reply's num_examples",
    "num_malicious_nodes": "f (Krum, MultiKrum, Bulyan)",
    "num_nodes_to_select": "MultiKrum(m=...)",
    "client_learning_rate": "client_lr (QFedAvg)",
    "train_loss_key": "loss_key (QFedAvg: the metric of each client's loss before it trains)",
    "arrayrecord_key": "nothing: the model is one dict of named arrays (initial_weights)",
    "configrecord_key": "nothing: on_fit_config's dict is the config clients get",
    "first_aggregation_rule": "nothing: Bulyan selects with Krum, as its paper does",
    "to_keep": "nothing: Bulyan's Krum picks one update at a time, as its paper does",
}

#: Strategy methods of Flower's that covey's round loop never calls, and what to do instead.
FLOWER_METHODS = {
    "aggregate_fit": "give Strategy(aggregator=...) a step (covey.aggregate: chain(...), "
    "or init/update functions of your own)",
    "aggregate": "Strategy.aggregate only runs the aggregator outside the loop; give "
    "Strategy(aggregator=...) a step of your own",
    "configure_fit": "override fit_config(round) for what every client is told and "
    "client_fit_config(round, client) for what one client is told, and pass selector= or "
    "where= for which clients take part",
    "configure_evaluate": "override evaluate_config(round) (and client_evaluate_config(round, "
    "client)), and pass selector= or where=",
    "aggregate_evaluate": "pass evaluate_metrics= to combine the clients' metrics",
    "evaluate": "pass evaluate_fn= to simulate() or serve() for central evaluation",
    "initialize_parameters": "pass initial_weights= to simulate() or serve()",
    "num_fit_clients": "override num_fit(available)",
    "num_evaluation_clients": "override num_evaluate(available)",
}


def flower_hint(name: str, counterpart: str) -> str:
    """What Flower's option ``name`` is in covey, in words.

    ``counterpart`` is covey's name (``"on_fit_config"``), or ``"nothing: WHY"``
    for an option covey has no counterpart to.

    Example:
        >>> flower_hint("on_fit_config_fn", "on_fit_config")
        "Flower's on_fit_config_fn is covey's on_fit_config"
        >>> flower_hint("transport", "nothing: covey speaks gRPC")
        "Flower's transport has no counterpart in covey: covey speaks gRPC"
    """
    none, sep, why = counterpart.partition("nothing: ")
    if sep and not none:
        return f"Flower's {name} has no counterpart in covey: {why}"
    return f"Flower's {name} is covey's {counterpart}"


#: Settings of the clients' training that people pass to a strategy, and the run's length.
CLIENT_SETTINGS = frozenset({"lr", "learning_rate", "epochs", "local_epochs", "batch_size"})
ROUND_COUNTS = frozenset({"rounds", "num_rounds"})


def _strategy_hint(name: str, choices: list[str]) -> str | None:
    """Where a client setting or the number of rounds goes, for a strategy (which sends configs)."""
    if "on_fit_config" not in choices:
        return None
    if name in ROUND_COUNTS:
        return (
            "is no strategy option: give the number of rounds to the run, "
            "simulate(rounds=...) or serve(strategy, rounds, ...)"
        )
    if name not in CLIENT_SETTINGS:
        return None
    rate = next((r for r in ("eta", "server_lr") if r in choices), None)
    lr = rate and name in ("lr", "learning_rate")
    server = f" (the server's own step size is {rate})" if lr else ""
    return (
        f"is the clients' setting: send it to them each round with "
        f"on_fit_config=lambda round: {{{name!r}: ...}}, and read it from their config{server}"
    )


def unknown_options(
    name: str,
    unknown: Iterable[str],
    known: Iterable[str] = (),
    flower: Mapping[str, str] = FLOWER_OPTIONS,
    elsewhere: Mapping[str, str] = {},
) -> TypeError:
    """The error for keyword arguments ``name`` does not take, with covey's names for Flower's.

    A misspelt name gets the closest of the ``known`` ones.

    Args:
        name: What was called, e.g. ``"FedAvg"``.
        unknown: The keyword arguments it does not take.
        known: The keyword arguments it takes.
        flower: Flower's names for what was called and covey's counterparts.
        elsewhere: Other names people give (``random_seed``), each with what it is
            (``"covey's seed"``), said as ``random_seed is covey's seed``.

    Returns:
        A TypeError to raise.

    Example:
        >>> print(unknown_options("FedAvg", ["on_fit_config_fn"]))
        FedAvg() got unexpected keyword arguments: ['on_fit_config_fn']; Flower's on_fit_config_fn is covey's on_fit_config
        >>> print(unknown_options("FedAvg", ["fraction_fitt"], ["fraction_fit", "seed"]))
        FedAvg() got unexpected keyword arguments: ['fraction_fitt']; did you mean fraction_fit?
    """  # noqa: E501
    names = sorted(unknown)
    choices = sorted(known)
    hints = []
    for n in names:
        if n in flower:
            hints.append(flower_hint(n, flower[n]))
        elif n in elsewhere:
            hints.append(f"{n} is {elsewhere[n]}")
        elif hint := _strategy_hint(n, choices):
            hints.append(f"{n} {hint}")
        elif close := difflib.get_close_matches(n, choices, n=1):
            hints.append(f"{n + ': ' if len(names) > 1 else ''}did you mean {close[0]}?")
    return TypeError(
        f"{name}() got unexpected keyword arguments: {names}"
        + "".join(f"; {hint}" for hint in hints)
    )


#: Options of Flower's differential privacy wrappers (``DifferentialPrivacy*``) and covey's.
FLOWER_DP_OPTIONS = {
    "clipping_norm": "clip",
    "initial_clipping_norm": "clip (the first clip, with adaptive=AdaptiveClipping(...))",
    "num_sampled_clients": "expected_clients (the mean's divisor; by default fraction_fit "
    "times the clients available)",
    "target_clipped_quantile": "AdaptiveClipping(target_quantile=...), passed as adaptive=",
    "clip_norm_lr": "AdaptiveClipping(learning_rate=...), passed as adaptive=",
    "clipped_count_stddev": "AdaptiveClipping(count_stddev=...), passed as adaptive=",
    "epsilon": "target_epsilon (the run stops before the round that would pass it)",
}

#: Options of Flower's ``SecAggPlusWorkflow`` and covey's for ``covey.secagg.secure``.
FLOWER_SECAGG_OPTIONS = {
    "clipping_range": "clip_range",
    "quantization_range": "bits (fixed-point bits per value over [-clip_range, clip_range])",
    "max_weight": "max_examples",
    "num_shares": "threat=ThreatModel(corrupt_rate=..., dropout_rate=...), from which "
    "the graph's degree follows",
    "reconstruction_threshold": "threat=ThreatModel(corrupt_rate=..., dropout_rate=...), "
    "from which the threshold follows",
    "modulus_range": "nothing: the ring's size follows from bits, max_examples and the "
    "number of clients (covey.secagg.ring_bits)",
    "timeout": "round_timeout= of simulate() or serve()",
}


#: Keywords of Flower's ``start_server`` and covey's counterparts in ``serve``.
FLOWER_SERVE = {
    "num_rounds": "rounds",
    "config": "rounds (ServerConfig(num_rounds=R) is rounds=R; its round_timeout is round_timeout)",
    "server_address": "address ('host:port')",
    "certificates": "certs (a folder made by covey certs init) or tls=tls_from_dir(folder)",
    "initial_parameters": "initial_weights (a dict of names to NumPy arrays)",
    "grpc_max_message_length": "nothing: models of any size travel in chunks",
}


#: Options of Flower's ``ServerApp`` and covey's counterparts in ``covey.deploy.ServerApp``.
FLOWER_SERVER_APP = {
    "server_fn": "strategy, initial_weights and rounds, given directly (what Flower's "
    "server_fn(context) builds; a project's make_server(config) returns the ServerApp)",
    "config": "rounds (ServerConfig(num_rounds=R) is rounds=R)",
    "num_rounds": "rounds",
    "initial_parameters": "initial_weights (a dict of names to NumPy arrays)",
}

#: Keywords of Flower's ``start_client`` and covey's counterparts in ``connect``.
FLOWER_CONNECT = {
    "server_address": "address ('host:port')",
    "client_fn": "client (connect runs one covey.Client: pass it client_fn(cid) yourself)",
    "root_certificates": "tls (covey.deploy.tls_from_certs(folder, name), or "
    "client_tls(ca, cert, key))",
    "max_retries": "max_attempts",
    "max_wait_time": "retry_for (seconds)",
    "grpc_max_message_length": "max_task_bytes (the largest task this client accepts)",
    "authentication_keys": "tls: a client proves who it is with its certificate",
    "transport": "nothing: covey speaks gRPC",
}


def flower_keywords(flower: Mapping[str, str]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Wrap a function so that a keyword it does not take is named with covey's own.

    Flower's name gets covey's counterpart from ``flower``; a misspelt one the
    closest keyword the function takes.

    Args:
        flower: Flower's option names and covey's counterparts.

    Returns:
        A decorator for a function with a fixed set of keyword arguments.
    """

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        own = frozenset(inspect.signature(func).parameters)

        @functools.wraps(func)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if unknown := [name for name in kwargs if name not in own]:
                raise unknown_options(func.__name__, unknown, own, flower)
            return func(*args, **kwargs)

        return call

    return wrap


def flower_names(preset: Callable[P, R]) -> Callable[P, R]:
    """Wrap a preset with a required option so that Flower's name or a misspelt one is named.

    ``Krum(num_malicious_clients=1)`` would otherwise fail on the missing ``f``
    before the preset could say that ``f`` is Flower's ``num_malicious_clients``,
    and ``Krum(num_malicious=1)`` without naming the keyword it does not take.

    Args:
        preset: The preset to wrap.

    Returns:
        The preset, refusing Flower's option names before it is called.
    """
    parameters = inspect.signature(preset).parameters
    own = set(parameters)
    required = [
        n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    ]

    @functools.wraps(preset)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        from covey.strategies._options import StrategyOptions  # it imports this module

        known = own | set(StrategyOptions.__annotations__)
        unknown = [name for name in kwargs if name not in known]
        if any(name in FLOWER_OPTIONS for name in unknown):  # each unknown one named at once
            raise unknown_options(preset.__name__, unknown, known - {"options"})
        missing = [name for name in required if name not in kwargs]
        if missing and unknown:  # a misspelt option is named before the missing one
            error = unknown_options(preset.__name__, unknown, known - {"options"})
            raise TypeError(f"{error}; it needs {', '.join(missing)}")
        return preset(*args, **kwargs)

    return call


def refuse_flower_methods(cls: type) -> None:
    """Refuse a Strategy subclass that defines a method the round loop never calls.

    Raises:
        TypeError: naming the method and what does the job in covey.
    """
    for method, instead in FLOWER_METHODS.items():
        if method in vars(cls):
            raise TypeError(
                f"{cls.__name__}.{method}() would never be called: a covey.Strategy is data "
                f"(an aggregator step, sampling options, config functions) that the round "
                f"loop reads; {instead}"
            )


def not_a_class(preset: Callable[..., Any]) -> None:
    """Make ``class Mine(preset)`` fail with an error saying presets are functions."""

    def mro_entries(bases: tuple[Any, ...]) -> tuple[type, ...]:
        raise TypeError(
            f"covey.{preset.__name__} is a function that returns a covey.Strategy, not a class "
            f"to subclass: pass it options ({preset.__name__}(on_fit_config=...)), subclass "
            "covey.Strategy to override fit_config(round), or give "
            "Strategy(aggregator=...) an aggregation step of your own"
        )

    setattr(preset, "__mro_entries__", mro_entries)  # noqa: B010 - a function has no such slot


def a_strategy(value: Any) -> Any:
    """``value`` if it is a :class:`~covey.Strategy`; else a TypeError saying what to pass.

    A strategy's name (``"fedavg"``) or a preset not called (``covey.FedAvg``) would
    otherwise fail later, naming an attribute the string or the function lacks.

    Raises:
        TypeError: naming what was given and the call to make instead.
    """
    from covey.strategies._presets import PRESETS
    from covey.strategies._strategy import Strategy

    if isinstance(value, Strategy):
        return value
    presets = [preset.__name__ for preset in PRESETS]
    start = "strategy must be a covey.Strategy"
    if isinstance(value, str):
        by_case = {name.lower(): name for name in presets}
        close = difflib.get_close_matches(value.lower(), list(by_case), n=1, cutoff=0.5)
        preset = by_case[close[0]] if close else "FedAvg"
        raise TypeError(f"{start}, not the string {value!r}: pass covey.{preset}()")
    name = getattr(value, "__name__", None)
    if isinstance(value, type) and issubclass(value, Strategy):  # Strategy, or a subclass
        where = "covey." if value is Strategy else ""
        raise TypeError(f"{start}, not the class {name} itself: call it, {where}{name}(...)")
    if callable(value) and name in presets:
        raise TypeError(f"{start}, not the function {name} itself: call it, covey.{name}()")
    raise TypeError(f"{start} (e.g. covey.FedAvg()), got {type(value).__name__}")
