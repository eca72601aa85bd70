"""Checks of ``simulate()``'s options, before any worker starts or any client trains."""

from __future__ import annotations

import difflib
import functools
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

import numpy as np

from covey.aggregate._flat import check_switch
from covey.clients._build import cannot_take_cid, not_callable
from covey.core._messages import MAX_ROUNDS, finite
from covey.core._metricvalues import fits_a_float
from covey.server._kept import SIMULATION_KEEPS, check_keep_last
from covey.sim._rayplan import ray_need
from covey.strategies._checks import (
    name_of,
    poisson_minimum,
    refuse_other_federation,
    refuse_unmet_need,
)
from covey.strategies._keeps import warn_of_an_unreached_m
from covey.strategies._names import CLIENT_SETTINGS, a_strategy, unknown_options
from covey.strategies._options import StrategyOptions
from covey.strategies._presets import PRESETS, FedAvg
from covey.strategies._strategy import Strategy

__all__ = [
    "FLOWER_SIMULATE",
    "SIMULATE_ELSEWHERE",
    "_check_availability",
    "_check_backend_options",
    "_check_durations",
    "_check_keep_last",
    "_check_options",
    "_check_ray_options",
    "_checked",
    "flower_keywords",
    "ray_settings",
]

P = ParamSpec("P")
R = TypeVar("R")

#: Keywords of Flower's ``start_simulation``, ``run_simulation`` and its message API's
#: ``Strategy.start`` and covey's counterparts (``client_resources`` and ``num_clients``
#: have the same name in both).
FLOWER_SIMULATE = {
    "num_rounds": "rounds",
    "config": "rounds (ServerConfig(num_rounds=R) is rounds=R; its round_timeout is round_timeout)",
    "num_supernodes": "num_clients",
    "backend_name": "backend ('inline', 'process' or 'ray')",
    "backend_config": "client_resources with backend='ray' (backend_config's 'client_resources')",
    "ray_init_args": "ray_address (a running Ray cluster; None starts a local one)",
    "server_app": "strategy, initial_weights and evaluate_fn",
    "client_app": "client_fn (cid -> Client)",
    "clients_ids": "num_clients (clients are numbered 0 .. num_clients - 1)",
    "train_config": "the strategy's on_fit_config, a function round -> dict: "
    "covey.FedAvg(on_fit_config=lambda round: {...})",
    "evaluate_config": "the strategy's on_evaluate_config, a function round -> dict: "
    "covey.FedAvg(on_evaluate_config=lambda round: {...})",
    "initial_arrays": "initial_weights (a dict of names to NumPy arrays)",
    "grid": "num_clients and backend (simulate runs the clients itself)",
}


def _preset_options() -> dict[str, str]:
    """The options some presets take beyond every strategy's, each with where it goes."""
    takers: dict[str, list[str]] = {}
    for preset in PRESETS:
        for name, param in inspect.signature(preset).parameters.items():
            named = param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)
            if named and name not in StrategyOptions.__annotations__:
                takers.setdefault(name, []).append(f"covey.{preset.__name__}")
    return {
        name: f"an option of {', '.join(who)}: strategy={who[0]}({name}=...)"
        for name, who in takers.items()
    }


_SEED = "covey's seed (an int seeding the sampling of clients)"
_WEIGHTS = "covey's initial_weights (the model's weights, a dict of names to NumPy arrays)"
_RAY = "given as client_resources={{'{}': ...}} with backend='ray'"
#: Other names people give simulate's keywords, and options that belong elsewhere.
SIMULATE_ELSEWHERE = {
    **_preset_options(),  # proximal_mu: covey.FedProx's
    **dict.fromkeys(("random_seed", "random_state", "rng"), _SEED),
    **dict.fromkeys(("n_rounds", "num_round", "rounds_count"), "covey's rounds"),
    **dict.fromkeys(("model", "parameters", "params"), _WEIGHTS),
    **{name: _RAY.format(name) for name in ("num_cpus", "num_gpus")},
    "checkpoint_dir": "covey's run_dir (a folder each round is saved in)",
    "callbacks": "covey's on_round (a function, or a list of them, called after each round)",
    "verbose": "covey's progress (True draws a progress bar)",
    **{
        name: f"the strategy's option: strategy=covey.FedAvg({name}=...)"
        for name in StrategyOptions.__annotations__
    },
    **{
        name: "the clients' setting: send it to them each round with strategy=covey.FedAvg("
        f"on_fit_config=lambda round: {{{name!r}: ...}}), and read it from their config"
        for name in CLIENT_SETTINGS
    },
}


def flower_keywords(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``fn`` so that Flower's simulation keywords get an error naming covey's.

    So do the other names of :data:`SIMULATE_ELSEWHERE` (``random_seed``, a
    strategy's option, a client's setting), each with where it goes. Any other
    keyword ``fn`` does not take keeps Python's own error, with the closest
    keyword ``fn`` takes when there is one (``evaluate_func``: did you mean
    evaluate_fn?).

    Args:
        fn: The function to wrap, :func:`covey.simulate`.

    Returns:
        ``fn``, refusing Flower's keywords before it is called.
    """
    own = set(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        unknown = [name for name in kwargs if name not in own]
        if any(n in FLOWER_SIMULATE or n in SIMULATE_ELSEWHERE for n in unknown):  # all named
            raise unknown_options(fn.__name__, unknown, own, FLOWER_SIMULATE, SIMULATE_ELSEWHERE)
        for name in kwargs:
            if name not in own and (close := difflib.get_close_matches(name, sorted(own), n=1)):
                raise TypeError(
                    f"{fn.__name__}() got an unexpected keyword argument {name!r}; "
                    f"did you mean {close[0]}?"
                )
        return fn(*args, **kwargs)

    return call


def _check_ray_options(
    resources: object, group: object, address: object, start_timeout: object = None
) -> None:
    """Refuse Ray options of the wrong type before a Ray is started for them."""
    if resources is not None and not isinstance(resources, Mapping):
        raise TypeError(
            "client_resources must be a mapping such as {'num_cpus': 1}, or one per group, "
            f"got {type(resources).__name__}"
        )
    if group is not None and not callable(group):
        raise TypeError(
            f"client_group must be a function cid -> group name, got {type(group).__name__}"
        )
    if address is not None and not isinstance(address, str):
        raise TypeError(
            "ray_address must be an address string such as '127.0.0.1:6379' or 'auto', "
            f"got {type(address).__name__}"
        )
    if start_timeout is not None and not (finite(start_timeout) and start_timeout > 0):
        raise ValueError(
            "ray_start_timeout must be None (the defaults: 10 s for a cluster to answer, "
            "120 s for a local Ray and for the actors to start) or a positive, finite number "
            "of seconds, "
            f"got {start_timeout!r}"
        )


#: The Ray options a run on Ray records in its settings, for its resume to run as it did.
RAY_SETTINGS = ("client_resources", "ray_address")


def ray_settings(
    backend: str, resources: object, address: object, start_timeout: object = None
) -> dict[str, Any]:
    """What a run on ``backend`` records of its Ray options: none off Ray.

    ``covey run --resume`` gives them back to the run it resumes (the cluster it
    joined, what each client holds there). Checked here, before the run's folder
    records them, as the Ray backend would check them.

    Raises:
        TypeError, ValueError: for options the Ray backend would refuse, naming them.
    """
    if backend != "ray":
        return {}
    _check_ray_options(resources, None, address, start_timeout)
    if isinstance(resources, Mapping):
        nested = any(isinstance(v, Mapping) for v in resources.values())
        for name, table in resources.items() if nested else [("", resources)]:
            if not isinstance(table, Mapping):
                raise ValueError(
                    f"client_resources[{name!r}] must be a mapping such as {{'num_cpus': 1}} "
                    f"when another group's is, got {type(table).__name__}"
                )
            ray_need(table)
    # NumPy numbers (np.int64(2**30) of memory) recorded as the numbers they are
    plain = json.dumps(resources, default=lambda v: v.item() if isinstance(v, np.generic) else v)
    return {"client_resources": json.loads(plain), "ray_address": address}


def _check_options(
    seed: object, round_timeout: object, client_cache: object, num_workers: object = None
) -> None:
    """Refuse values of simulate()'s options that would fail later, deep in a round."""
    if num_workers is not None and (
        isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1
    ):
        raise ValueError(f"num_workers must be None or a positive int, got {num_workers!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if round_timeout is not None and (
        isinstance(round_timeout, bool)
        or not isinstance(round_timeout, int | float)
        or not round_timeout > 0
    ):
        raise ValueError(f"round_timeout must be None or a positive number, got {round_timeout!r}")
    if isinstance(round_timeout, int) and not fits_a_float(round_timeout):
        # no float holds it: the process backend's deadline, monotonic() + it, overflowed
        raise ValueError(
            "round_timeout must be None or a positive number, got an int of "
            f"{round_timeout.bit_length()} bits, too large for a float; None sets no limit"
        )
    if client_cache is not None and (
        isinstance(client_cache, bool) or not isinstance(client_cache, int) or client_cache < 0
    ):
        raise ValueError(f"client_cache must be None or a non-negative int, got {client_cache!r}")


def _check_flags(client_fn: object, progress: object, resume: object) -> None:
    """Refuse a ``client_fn`` that cannot be called and on/off options that are no bool.

    A ``client_fn`` that takes no client id (``lambda: MyClient()``) is refused
    here, before any worker starts, rather than failing every sampled client.
    ``progress="no"`` drew a bar and ``resume="yes"`` resumed: any text is true.
    """
    uncallable = not_callable(client_fn) or cannot_take_cid(client_fn)
    if uncallable is not None:
        raise TypeError(uncallable)
    check_switch(progress, "progress")
    check_switch(resume, "resume")


def _cannot_take_two(fn: Callable[..., Any], what: str, how: str) -> str | None:
    """Why ``fn``, given as ``what``, cannot be called with two arguments, or None if it can.

    ``how`` says what covey calls it with. A function of one parameter failed in the
    run with Python's bare "takes 1 positional argument but 2 were given".
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or an extension type: nothing to say
        return None
    try:
        signature.bind(0, 0)
    except TypeError:
        return f"{what} {name_of(fn)}{signature} cannot be called as {how}"
    return None


def _check_durations(durations: object, num_clients: int) -> None:
    """Refuse ``client_durations`` that is no ``(cid, rng)`` function nor one value per client."""
    if callable(durations):
        why = _cannot_take_two(
            durations,
            "client_durations",
            "client_durations(cid, rng) -> seconds: covey calls it with the client id and a "
            "NumPy Generator for each fit task, and takes the simulated seconds it returns",
        )
        if why is not None:
            raise TypeError(why)
        return
    if durations is None:
        return
    try:
        count = len(durations)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "client_durations must be a (cid, rng) -> seconds function or one value per "
            f"client, got {type(durations).__name__}"
        ) from None
    if count < num_clients:
        raise ValueError(
            f"client_durations has {count} values but num_clients={num_clients}: "
            "give one value per client"
        )


def _check_availability(availability: object, num_clients: int) -> None:
    """Refuse an availability function or trace that cannot answer for every client.

    A function must take ``(cid, round)``; a trace ``trace[cid, t]`` needs a row per client.

    Checked when a round samples a client past it, such a trace stopped the run in
    whichever round first did, any number of rounds in.
    """
    if callable(availability) and not isinstance(availability, np.ndarray):
        why = _cannot_take_two(
            availability,
            "availability",
            "availability(cid, round) -> bool: covey calls it with the client id and the "
            "round (an asynchronous run's update), and takes whether the client is online",
        )
        if why is not None:
            raise TypeError(why)
    if isinstance(availability, np.ndarray) and availability.ndim == 2:
        rows = availability.shape[0]
        if rows < num_clients:
            raise ValueError(
                f"the availability trace has {rows} rows (trace[cid, t]) but "
                f"num_clients={num_clients}: give one row per client"
            )


def _checked(strategy: Strategy | None, num_clients: int, rounds: int) -> Strategy:
    """The strategy to run (FedAvg by default), once the arguments of simulate() are valid."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive int, got {num_clients!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 0 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"rounds must be an int from 0 to {MAX_ROUNDS:,}, got {rounds!r}")
    strategy = a_strategy(strategy) if strategy is not None else FedAvg()
    count = strategy.client_count("fit", num_clients)
    counter = strategy.source("num_fit", "")  # a subclass's num_fit(), or ""
    if strategy.selector is None and count == 0:
        raise ValueError(
            "the strategy samples no client per round: "
            + (
                f"{counter} returns 0 for num_clients={num_clients}"
                if counter
                else f"fraction_fit={strategy.fraction_fit} of num_clients={num_clients} "
                "rounds down to 0 and min_fit_clients=0; raise fraction_fit or min_fit_clients"
            )
        )
    poisson = poisson_minimum(strategy, num_clients, f"num_clients={num_clients}")
    if count > num_clients and poisson is not None:
        raise ValueError(poisson)
    if count > num_clients:
        # FedBuff(concurrency=c) sets min_fit_clients=c with fraction_fit=0
        by_concurrency = strategy.asynchronous and not strategy.fraction_fit
        by = "FedBuff's concurrency, " if by_concurrency else ""
        raise ValueError(
            (
                f"the strategy keeps at least {count} clients training at once "
                if strategy.asynchronous
                else f"the strategy samples at least {count} clients per round "
            )
            + (
                f"({counter} says so)"
                if counter
                else f"({by}min_fit_clients={strategy.min_fit_clients})"
            )
            + f" but num_clients={num_clients}: "
            + (
                f"make {counter} return at most {num_clients}"
                if counter
                else f"lower {'concurrency' if by_concurrency else 'min_fit_clients'} to at most "
                f"{num_clients}, or simulate more clients"
            )
        )
    if strategy.buffer_size is not None and strategy.buffer_size > num_clients:
        raise ValueError(
            f"FedBuff's buffer_size={strategy.buffer_size} exceeds num_clients={num_clients}: "
            "an update needs that many distinct clients' replies"
        )
    # Before min_available_clients: a robust preset waits for its rule's need, which
    # says more than "min_available_clients=5 exceeds num_clients=3".
    refuse_unmet_need(strategy, num_clients, limit="num_clients", samples="this run samples")
    warn_of_an_unreached_m(strategy, num_clients, "num_clients")
    refuse_other_federation(strategy, num_clients)
    if strategy.min_available_clients > num_clients:
        raise ValueError(
            f"min_available_clients={strategy.min_available_clients} exceeds "
            f"num_clients={num_clients}: no {'update' if strategy.asynchronous else 'round'} "
            f"would start; lower it to at most "
            f"{num_clients}, or simulate more clients"
        )
    _check_evaluate_count(strategy, num_clients)
    return strategy


def _check_evaluate_count(strategy: Strategy, num_clients: int) -> None:
    """Refuse a federated evaluation asked for (``fraction_evaluate > 0``) that samples no one."""
    asked = strategy.fraction_evaluate > 0.0 and strategy.selector is None
    overridden = strategy.source("num_evaluate", "")  # a subclass's num_evaluate() decides
    if asked and not overridden and strategy.min_evaluate_clients > num_clients:
        raise ValueError(
            f"min_evaluate_clients={strategy.min_evaluate_clients} exceeds num_clients="
            f"{num_clients}: federated evaluation would never run; lower it, or set "
            "fraction_evaluate=0 to turn federated evaluation off"
        )
    if asked and not overridden and strategy.client_count("evaluate", num_clients) == 0:
        raise ValueError(
            f"federated evaluation samples no client: fraction_evaluate="
            f"{strategy.fraction_evaluate} of num_clients={num_clients} rounds down to 0 "
            "and min_evaluate_clients=0; raise either, or set fraction_evaluate=0 to "
            "turn federated evaluation off"
        )


def _check_keep_last(keep_last: object, run_dir: object) -> None:
    """Refuse a ``keep_last`` a simulation cannot keep to, naming the value.

    A resume needs the newest complete round's file, and the one before should the
    newest be damaged: a simulation keeps at least those two (a finished run may be
    resumed with more rounds, so always), which ``keep_last=1`` would prune.
    """
    check_keep_last(keep_last)  # None, or a whole number of 1 or more
    if keep_last == 1:
        raise ValueError(
            "keep_last=1 would leave a resume no fallback: a simulation keeps the weights "
            "files of its newest two rounds at least, the one to resume from and the one "
            "before should it be damaged; give keep_last=2 or more, or None to keep every "
            "round's weights"
        )
    if run_dir is None and keep_last != SIMULATION_KEEPS:
        raise ValueError(
            f"keep_last={keep_last!r} needs run_dir: it says how many rounds' weights "
            "files the run folder keeps, and without run_dir the simulation saves none"
        )


def _check_backend_options(
    backend: str, start_method: str | None, client_cache: int | None, ray_options: tuple[Any, ...]
) -> None:
    """Refuse the options of one backend given to another, naming them and where they apply."""
    if backend != "process" and start_method is not None:
        raise ValueError(
            f"start_method applies to backend='process' only (how its workers start), "
            f"not to backend={backend!r}"
        )
    if backend != "ray" and any(option is not None for option in ray_options):
        raise ValueError(
            "client_resources, client_group, ray_address and ray_start_timeout apply to "
            "backend='ray' only"
        )
    if backend == "process" and client_cache is not None:
        raise ValueError(
            "client_cache applies to backend='inline' and 'ray' only: the process backend "
            "keeps every client it built for the whole run"
        )
