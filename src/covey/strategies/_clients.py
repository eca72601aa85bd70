"""Per-client configs: what one client is told on top of what every client of the round is told.

A strategy's ``on_client_fit_config(round, client)`` (or an override of
:meth:`covey.Strategy.client_fit_config`) gives each sampled client entries of
its own: more local epochs for a client with more data, a learning rate or a
task id of its own. :class:`ClientInfo` is how such a function sees a client:
its id, the properties it reported and, deployed, its name. The entries covey
sets itself (``"round"``, ``"extras"``, ``"dp_clip"``, names under ``"covey."``)
are refused there, naming the function, rather than silently replaced.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from covey.core._messages import Config
from covey.strategies._checks import checked_config, name_of

logger = logging.getLogger("covey")


class ClientInfo(NamedTuple):
    """One client as a per-client config function sees it.

    Attributes:
        cid: The client's id (in simulation the ``cid`` its ``client_fn`` got; deployed,
            the id the run gave its name when it first joined).
        properties: What the client reported from :meth:`covey.Client.properties`
            (deployed, merged with ``connect(properties=...)``), read-only; None when
            it did not report them (it failed to, or its reply is still to come).
        name: The client's name when deployed (``connect(name=...)``), else None.

    Example:
        >>> ClientInfo(3, {"num_examples": 120}).properties["num_examples"]
        120
    """

    cid: int
    properties: Mapping[str, Any] | None = None
    name: str | None = None


ClientConfigFn = Callable[[int, ClientInfo], Config]
"""``(round, client) -> dict``: entries for one client's task, on top of the round's config."""

RESERVED = ("round", "extras")
"""Entries the client runtime sets in a fit config itself (``"round"`` in every config)."""

PREFIX = "covey."
"""Entries whose names start so are covey's own (a compressed fit's scheme, say)."""


def client_info(
    cids: Sequence[int],
    properties: Mapping[int, Mapping[str, Any]],
    names: Mapping[int, str],
) -> list[ClientInfo]:
    """The :class:`ClientInfo` of each of ``cids``, in that order, properties read-only."""
    out: list[ClientInfo] = []
    for cid in cids:
        props = properties.get(cid)
        out.append(
            ClientInfo(
                cid, None if props is None else MappingProxyType(dict(props)), names.get(cid)
            )
        )
    return out


def reserved_keys(kind: str, fixed: Collection[str]) -> set[str]:
    """The entries a per-client config of ``kind`` may not set: ``fixed`` and the runtime's."""
    return {*RESERVED, *fixed} if kind == "fit" else {"round"}


def round_config(
    value: Any, what: str, kind: str, round: int, fixed: Collection[str], step: str = "round"
) -> Config:
    """A copy of the ``kind`` config ``what`` returned for ``round``, checked.

    ``step`` is what ``round`` counts in errors: ``"round"``, or an asynchronous
    run's ``"update"``.

    Entries covey sets itself are refused: ``"round"`` set to another value than
    the round (the same value passes: the runtime sets it anyway), ``"extras"``,
    ``fixed`` entries (``"dp_clip"``) and names under ``"covey."`` would be
    replaced or misread silently.

    Raises:
        TypeError: naming ``what``, if it returned no dict.
        ValueError: naming ``what``, the round and the entry.
    """
    config = checked_config(value, what)
    refused = reserved_keys(kind, fixed)
    for key, entry in config.items():
        if key == "round" and type(entry) is int and entry == round:
            continue
        if key in refused or (isinstance(key, str) and key.startswith(PREFIX)):
            said = f" to {entry!r}" if key == "round" else ""
            raise ValueError(
                f"{what} set {key!r}{said} in {step} {round}: covey sets that entry of the "
                f"{kind} config itself"
                + (f" (to {round})" if key == "round" else "")
                + "; give yours another name"
            )
    return config


def called(make: Callable[[int], Any], what: str, round: int, step: str = "round") -> Any:
    """``make(round)``; an error it raises noted with ``what`` and the round, type unchanged."""
    try:
        return make(round)
    except Exception as exc:  # the user's error, told where it came from
        exc.add_note(f"raised by {what} in {step} {round}")
        raise


def option_config(strategy: Any, option: str, round: int) -> Config:
    """What ``strategy``'s ``option`` (``"on_fit_config"``) returns for ``round``, checked.

    Raises:
        TypeError: naming ``option``, if it returned no dict.
        Exception: what the function raised, with a note naming it and the round.
    """
    make = getattr(strategy, option)
    return checked_config(called(make, f"{option} {name_of(make)}", round, strategy._step), option)


def _default(strategy: Any, option: str) -> Any:
    """The value ``option`` has on a strategy not given it (the function making no config)."""
    fields = {f.name: f for f in dataclasses.fields(strategy)}
    return fields[option].default if option in fields else None


@contextmanager
def _noting(strategy: Any, option: str, asked: list[str]) -> Iterator[None]:
    """While it lasts, ``strategy``'s ``option`` notes in ``asked`` that it was called.

    An override may call it through the default method (``super().fit_config(round)``)
    or itself (``self.on_fit_config(round)``): either way it is noted.
    """
    given = getattr(strategy, option)

    @functools.wraps(given)
    def noted(*args: Any) -> Any:
        asked.append(option)
        return given(*args)

    object.__setattr__(strategy, option, noted)
    try:
        yield
    finally:
        object.__setattr__(strategy, option, given)


def made_config(strategy: Any, kind: str, round: int) -> Any:
    """What ``strategy.fit_config(round)`` (``kind="fit"``) or ``evaluate_config`` returns.

    The default method notes the errors of its option's function
    (:func:`option_config`); an error a subclass's override raises is noted here
    with the override's name and the round.
    """
    method = f"{kind}_config"
    option = f"on_{method}"
    what = strategy.source(method, option)
    make = getattr(strategy, method)
    if what == option:
        return make(round)
    given = getattr(strategy, option)
    if given is None or given is _default(strategy, option):
        return called(make, what, round, strategy._step)
    asked: list[str] = []
    with _noting(strategy, option, asked):
        value = called(make, what, round, strategy._step)
    if option not in asked:  # what the option would add would be dropped, unsaid
        dropped(
            f"{what} overrides Strategy.{method}() without calling it, so {option}="
            f"{name_of(given)} given to the strategy is never called: take its entries in "
            f"the override (config = super().{method}(round)), or leave {option} out",
            round,
        )
    return value


_WARNED: set[str] = set()


def dropped(message: str, round: int) -> None:
    """Refuse, in round 1, an override that drops its option; in a later round, warn once.

    An override that drops it only from some round on (``if round > 10: ...``) is
    told of once as that round's config is made, not by stopping a run mid-way.

    Raises:
        ValueError: ``message``, in round 1 (or before).
    """
    if round <= 1:
        raise ValueError(message)
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("from round %d: %s", round, message)


def per_client_configs(
    make: Callable[[int, ClientInfo], Any],
    what: str,
    kind: str,
    round: int,
    base: Config,
    clients: Sequence[ClientInfo],
    fixed: Collection[str] = (),
    step: str = "round",
    given: tuple[Any, str] | None = None,
) -> dict[int, Config]:
    """Each client's whole config: ``base`` with the entries ``make(round, client)`` returns.

    Args:
        make: The per-client function (or bound method).
        what: How errors name it, e.g. ``"on_client_fit_config lr_by_size"``.
        kind: ``"fit"`` or ``"evaluate"``.
        round: The round.
        base: The config every client of the round gets (fixed entries included).
        clients: The sampled clients, in the order the function is called.
        fixed: Entries covey adds to every fit config (``Strategy.fit_config_entries``).
        step: What ``round`` counts in errors: ``"round"``, or an asynchronous run's
            ``"update"``.
        given: ``(function, option)`` when ``make`` is a subclass's override and the
            strategy was given that option too: an override that calls the default
            (which calls the option) for none of the round's clients is refused.

    Returns:
        ``{cid: config}``; a client given no entries of its own shares ``base``.

    Raises:
        TypeError: naming ``what``, if it returns anything but a dict with str keys.
        Exception: what ``make`` raises, with a note naming ``what``, the client and round.
        ValueError: naming ``what``, the client and the entry, if it sets one covey sets.
    """
    refused = reserved_keys(kind, fixed)
    out: dict[int, Config] = {}
    asked: list[str] = []  # an override that may call its option for some clients alone
    owner = getattr(make, "__self__", None)
    with nullcontext() if given is None else _noting(owner, given[1], asked):
        for client in clients:
            try:
                made = make(round, client)
            except Exception as exc:  # the user's error, told where it came from
                exc.add_note(f"raised by {what} for client {client.cid} in {step} {round}")
                raise
            own = checked_config(made, what)
            for key in own:
                if not isinstance(key, str):
                    raise TypeError(
                        f"{what} must return a dict keyed by names (str), got key {key!r} "
                        f"for client {client.cid}"
                    )
                if key in refused or key.startswith(PREFIX):
                    raise ValueError(
                        f"{what} set {key!r} for client {client.cid} in {step} {round}: covey "
                        f"sets that entry of the {kind} config itself; give yours another name"
                    )
            out[client.cid] = {**base, **own} if own else base
    if given is not None and clients and not asked:  # what the option adds, dropped unsaid
        fn, option = given
        method = option.removeprefix("on_")
        dropped(
            f"{what} overrides Strategy.{method}() without calling it, so {option}="
            f"{name_of(fn)} given to the strategy is never called: take its entries in the "
            f"override (config = super().{method}(round, client)), or leave {option} out",
            round,
        )
    return out


def has_values(properties: Mapping[str, Any], required: Mapping[str, Any]) -> bool:
    """Whether ``properties`` hold every value of ``required`` (a ``where=`` dict).

    Values compare by ``==``, except that a bool matches only a bool (NumPy's
    included): ``{"gpu": 1}`` does not match a client reporting ``True``, nor
    ``{"gpu": True}`` one reporting ``1``, while an int and a float of equal value
    (``1`` and ``1.0``) match.
    """
    for key, wanted in required.items():
        if key not in properties:
            return False
        got = properties[key]
        if isinstance(got, bool | np.bool_) != isinstance(wanted, bool | np.bool_):
            return False
        if got != wanted:
            return False
    return True


def eligible_ids(
    where: Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None,
    available: Sequence[int],
    properties: Mapping[int, Mapping[str, Any]],
) -> list[int]:
    """The clients of ``available`` that pass ``where``, in the order given (see ``eligible``)."""
    if where is None:
        return list(available)
    out: list[int] = []
    for cid in available:
        props = properties.get(cid)
        if props is None:
            continue
        if isinstance(where, Mapping):
            ok = has_values(props, where)
        else:
            try:
                ok = where(props)
            except (KeyError, TypeError, ValueError):  # e.g. a property it lacks
                ok = False
            except Exception as exc:  # the user's error, told where it came from
                exc.add_note(f"raised by where= {name_of(where)} for client {cid}")
                raise
            try:  # a truth value as Python reads it (None and 0 are false)
                ok = bool(ok)
            except Exception as exc:  # an array of several values has none
                raise TypeError(
                    f"where= {name_of(where)} returned {type(ok).__name__} for client "
                    f"{cid}, which has no truth value: it must return a bool (True if "
                    "the client may take part)"
                ) from exc
        if ok:
            out.append(cid)
    return out


def no_config(round: int) -> Config:
    """The default ``on_fit_config`` and ``on_evaluate_config``: no entries of the strategy's."""
    return {}
