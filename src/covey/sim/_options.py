"""Checks of ``simulate()``'s options, before any worker starts or any client trains."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import ParamSpec, TypeVar

import numpy as np

from covey.strategies._names import unknown_options

__all__ = [
    "FLOWER_SIMULATE",
    "_check_availability",
    "_check_durations",
    "_check_options",
    "_check_ray_options",
    "flower_keywords",
]

P = ParamSpec("P")
R = TypeVar("R")

#: Keywords of Flower's ``start_simulation`` and ``run_simulation`` and covey's counterparts
#: (``client_resources`` and ``num_clients`` have the same name in both).
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
}


def flower_keywords(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``fn`` so that Flower's simulation keywords get an error naming covey's.

    Any other keyword ``fn`` does not take keeps Python's own error.

    Args:
        fn: The function to wrap, :func:`covey.simulate`.

    Returns:
        ``fn``, refusing Flower's keywords before it is called.
    """
    own = set(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        flower = [name for name in kwargs if name in FLOWER_SIMULATE and name not in own]
        if flower:
            raise unknown_options(fn.__name__, flower, flower=FLOWER_SIMULATE)
        return fn(*args, **kwargs)

    return call


def _check_ray_options(resources: object, group: object, address: object) -> None:
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
    if client_cache is not None and (
        isinstance(client_cache, bool) or not isinstance(client_cache, int) or client_cache < 0
    ):
        raise ValueError(f"client_cache must be None or a non-negative int, got {client_cache!r}")


def _check_durations(durations: object, num_clients: int) -> None:
    """Refuse ``client_durations`` that is neither a function nor one value per client."""
    if durations is None or callable(durations):
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
    """Refuse an availability trace ``trace[cid, t]`` with fewer rows than clients.

    Checked when a round samples a client past it, such a trace stopped the run in
    whichever round first did, any number of rounds in.
    """
    if isinstance(availability, np.ndarray) and availability.ndim == 2:
        rows = availability.shape[0]
        if rows < num_clients:
            raise ValueError(
                f"the availability trace has {rows} rows (trace[cid, t]) but "
                f"num_clients={num_clients}: give one row per client"
            )
