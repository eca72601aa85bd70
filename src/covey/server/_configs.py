"""The configs a round sends, as every client receives them.

Clients of the process and Ray backends and of a deployed federation receive
their task's config as JSON (:mod:`covey.transport.grpc._wire`); inline clients
used to receive the strategy's dict itself. A config is therefore taken through
that encoding once, where the round builds it: every backend then hands its
clients the same values (tuples as lists, NumPy scalars as Python numbers), and
one that cannot travel (a set, a function, a key that is not a string) stops
the run before any client runs, naming the function that returned it (a
client's own entries that cannot travel fail that client, as they always did).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from covey.strategies._clients import ClientInfo
from covey.transport.grpc import _wire

__all__ = ["client_configs", "evaluate_config", "fit_config", "sendable"]

Config = dict[str, Any]


def sendable(config: Mapping[str, Any], what: str, round: int, step: str = "round") -> Config:
    """``config`` as a client receives it over the network.

    Args:
        config: The config a strategy built.
        what: Who built it, for errors (``"on_fit_config"``).
        round: The round it is for.
        step: What ``round`` counts, for errors: ``"round"``, or an asynchronous
            run's ``"update"``.

    Raises:
        TypeError: naming ``what``, the round and the place, for a key that is
            not a string (JSON would make ``0`` the string ``"0"``).
        ValueError: naming ``what``, the round and the place, for a value no
            client can be sent (a set, an object) or one over a client's caps.
    """
    _check_keys(config, what, f"{step} {round}", "")
    try:
        value = _wire.loads(_wire.dumps_within(config, _wire.WireLimits()))
    except _wire.WireError as exc:
        raise ValueError(
            f"{what} returned a config for {step} {round} that clients cannot be sent: {exc}"
        ) from None
    return value if isinstance(value, dict) else {}


def _check_keys(value: Any, what: str, round: str, where: str) -> None:
    if isinstance(value, Mapping):
        for key, entry in value.items():
            if type(key) is not str:
                raise TypeError(
                    f"{what} returned a config for {round} with the key {key!r} "
                    f"({type(key).__name__}){f' in {where}' if where else ''}: keys must be "
                    "strings (clients receive the config as JSON, where 0 becomes '0')"
                )
            _check_keys(entry, what, round, f"{where}.{key}" if where else repr(key))
    elif isinstance(value, list | tuple):
        for index, entry in enumerate(value):
            _check_keys(entry, what, round, f"{where}[{index}]")


def fit_config(loop: Any, round: int) -> Config:
    """The fit config of ``loop``'s strategy for ``round`` (``fit_task_config``), sendable.

    Raises:
        FederationError: from ``loop._fail``, naming the function and the entry,
            for a config no client can be sent (the run stops; its history kept).
    """
    strategy = loop.strategy
    what = strategy.source("fit_config", "on_fit_config")
    return _round_config(loop, strategy.fit_task_config(round), what, round)


def evaluate_config(loop: Any, round: int) -> Config:
    """The evaluate config of ``loop``'s strategy for ``round`` (see :func:`fit_config`)."""
    strategy = loop.strategy
    what = strategy.source("evaluate_config", "on_evaluate_config")
    return _round_config(loop, strategy.evaluate_task_config(round), what, round)


def _round_config(loop: Any, config: Config, what: str, round: int) -> Config:
    try:
        return sendable(config, what, round, loop._step)
    except (TypeError, ValueError) as exc:
        raise loop._fail(str(exc)) from None


def client_configs(
    strategy: Any, kind: str, round: int, base: Config, clients: Sequence[ClientInfo]
) -> dict[int, Config] | None:
    """Each client's config (:meth:`~covey.Strategy.client_task_configs`), sendable.

    A client given no entries of its own shares ``base``, already sendable. A
    config that cannot be sent fails that client alone, as its transport finds
    (one client's entries stop no round), so it is passed on as it is. One whose
    only fault is a key that is no string (``{0: 32}``) is sent, deployed and by
    every backend, as its JSON (``{"0": 32}``, tuples as lists, NumPy scalars as
    numbers): the inline and Ray clients, which could be handed the dict itself,
    get that too, so code that reads it works alike everywhere.
    """
    configs: dict[int, Config] | None = strategy.client_task_configs(kind, round, base, clients)
    if configs is None:
        return None
    what = strategy.source(f"client_{kind}_config", f"on_client_{kind}_config")
    out: dict[int, Config] = {}
    for cid, config in configs.items():
        try:
            out[cid] = config if config is base else sendable(config, what, round)
        except TypeError:  # a key that is no string: sent as JSON makes it one
            out[cid] = _as_sent(config)
        except ValueError:
            out[cid] = config
    return out


def _as_sent(config: Config) -> Config:
    """``config`` as a deployed client reads it; as it is if it cannot be sent (see above)."""
    try:
        value = _wire.loads(_wire.dumps_within(config, _wire.WireLimits()))
    except _wire.WireError:
        return config
    return value if isinstance(value, dict) else config
