"""How a :class:`~covey.Strategy` samples clients and describes itself: its methods' bodies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from covey.aggregate._order import describe_step
from covey.strategies._checks import (
    name_of,
    not_among,
    outside_candidates,
    picked_ids,
    selected,
    selects_evaluation,
    too_few_to_sample,
)
from covey.strategies._clients import no_config
from covey.strategies._metrics import weighted_metrics
from covey.strategies._numbers import plain_tree
from covey.strategies._subclass import subclass_options

if TYPE_CHECKING:
    from covey.strategies._strategy import Strategy


def sampled(
    strategy: Strategy, available: Sequence[int], count: int, round: int, seed: int, purpose: int
) -> list[int]:
    """:meth:`Strategy.sample`."""
    if count > len(available):
        raise ValueError(too_few_to_sample(round, count, len(available), strategy.where))
    rng = np.random.default_rng([seed, round, purpose])
    if not isinstance(available, range):  # a range is in order, and not copied
        # The draw indexes the ids: in id order, the same clients are chosen however
        # a transport happens to list them (the order they connected in, say).
        available = sorted(available)
    if strategy.selector is not None and (purpose == 0 or selects_evaluation(strategy.selector)):
        picked = selected(strategy.selector, available, round, rng)
        chosen = sorted(picked_ids(strategy.selector, picked, round))
        unknown = not_among(chosen, available)
        if unknown:
            raise outside_candidates(strategy.selector, unknown, strategy.where, round)
        return chosen
    if count == len(available):
        return sorted(int(c) for c in available)
    picks = rng.choice(len(available), size=count, replace=False)
    # Index the sequence itself: O(count), where np.asarray(range(N)) would be O(N).
    return sorted(int(available[int(i)]) for i in picks)


def described(strategy: Strategy, base: type[Strategy]) -> dict[str, Any]:
    """:meth:`Strategy.describe`; ``base`` is :class:`Strategy`, whose subclasses add their own."""
    options: dict[str, Any] = {
        "fraction_fit": strategy.fraction_fit,
        "min_fit_clients": strategy.min_fit_clients,
        "fraction_evaluate": strategy.fraction_evaluate,
        "min_evaluate_clients": strategy.min_evaluate_clients,
        "min_available_clients": strategy.min_available_clients,
        "accept_failures": strategy.accept_failures,
    }
    if strategy.evaluate_every != 1:  # unrecorded by runs before it, which evaluated every round
        options["evaluate_every"] = strategy.evaluate_every
    if strategy.asynchronous:
        options["buffer_size"] = strategy.buffer_size
        options["max_staleness"] = strategy.max_staleness
    for attr in ("on_fit_config", "on_evaluate_config", "fit_metrics", "evaluate_metrics"):
        fn = getattr(strategy, attr)
        if fn not in (no_config, weighted_metrics):
            options[attr] = name_of(fn)
    for attr in ("on_client_fit_config", "on_client_evaluate_config"):
        if getattr(strategy, attr) is not None:
            options[attr] = name_of(getattr(strategy, attr))
    if strategy.selector is not None:
        options["selector"] = name_of(strategy.selector)
    if strategy.where is not None:
        options["where"] = (
            dict(strategy.where) if isinstance(strategy.where, Mapping) else name_of(strategy.where)
        )
    if type(strategy) is not base:  # a subclass: its class, overrides and own fields
        options.update(subclass_options(strategy, base))
    return {
        "name": strategy.name,
        "hyperparameters": plain_tree(dict(strategy.hyperparameters)),
        "options": options,
        "aggregator": describe_step(strategy.aggregator),
    }
