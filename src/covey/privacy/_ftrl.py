"""DP-FTRL: tree-aggregation noise, for federations whose clients cannot be sampled uniformly.

Privacy amplification by sampling needs each client to be drawn independently
with a known probability, which real fleets rarely allow (devices come when they
are idle, charging and on Wi-Fi). DP-FTRL needs no sampling: the server releases
noisy *prefix sums* of the clipped updates, the noise of each prefix sum being a
sum of O(log t) node noises of a binary tree, so the model after round t carries
noise of standard deviation about ``z * clip * sqrt(log2 t)`` rather than
``z * clip * sqrt(t)``. The accounting is ``dp-accounting``'s tree aggregation
event (RDP), valid when each client contributes at most once per tree; the step
enforces that by ignoring a repeat contribution within a tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from covey.core._messages import plain, shown
from covey.privacy._accounting import MAX_COUNT
from covey.privacy._central import PrivacyHook, _check, refuse_nested, refuse_own_sampling
from covey.privacy._step import Mechanism, Shared, dp_step
from covey.strategies._checks import fit_only
from covey.strategies._names import FLOWER_DP_OPTIONS, a_strategy, flower_keywords
from covey.strategies._strategy import Strategy
from covey.strategies._subclass import replace_strategy


def round_robin(tree_rounds: int, shared: Shared) -> Any:
    """A selector giving each client one round in every ``tree_rounds`` rounds.

    Round ``r`` takes every ``tree_rounds``-th client (in id order) starting at
    position ``(r - 1) % tree_rounds``; no randomness is involved.
    """

    def select(candidates: Sequence[int], round: int, rng: np.random.Generator) -> list[int]:
        shared.check()
        shared.population[round] = len(candidates)
        ordered = sorted(int(c) for c in candidates)
        return ordered[(round - 1) % tree_rounds :: tree_rounds]

    return fit_only(select)


@flower_keywords(FLOWER_DP_OPTIONS)
def dp_ftrl(
    strategy: Strategy,
    *,
    noise_multiplier: float,
    clip: float,
    delta: float,
    tree_rounds: int,
    target_epsilon: float | None = None,
    noise_seed: int | None = None,
    expected_clients: float | None = None,
) -> Strategy:
    """DP-FTRL: the strategy with clipped updates and tree-aggregation noise, no sampling.

    Each round's clipped updates are summed; the server adds the increment of a
    tree-aggregation prefix-sum noise (node noise of standard deviation
    ``noise_multiplier * clip``) and divides by the expected clients per round
    (the clients available over ``tree_rounds``), so the model follows the noisy
    prefix sums of the updates. A tree covers ``tree_rounds`` rounds, then restarts;
    clients are taken round-robin so that each takes part once per tree.

    Args:
        strategy: Any synchronous strategy (its own selector is replaced).
        noise_multiplier: Node noise standard deviation over ``clip``.
        clip: The L2 bound on each update.
        delta: The delta of the guarantee.
        tree_rounds: Rounds per tree (an "epoch": every client once).
        target_epsilon: Stop before the first round that would exceed it.
        noise_seed: Seeds the tree noise (tests); else the run's seed in simulation,
            a fresh CSPRNG seed when deployed.
        expected_clients: Override the divisor.

    Returns:
        A :class:`~covey.Strategy` named ``"DP-FTRL-<name>"``.

    References:
        Kairouz, McMahan, Song, Thakkar, Thakurta and Xu, "Practical and Private
        (Deep) Learning without Sampling or Shuffling", ICML 2021.
    """
    strategy = a_strategy(strategy)
    _check(noise_multiplier, clip, delta, target_epsilon, expected_clients, noise_seed)
    if strategy.asynchronous:
        raise ValueError("DP-FTRL needs synchronous rounds (no buffer_size)")
    refuse_nested(strategy, "DP-FTRL")
    refuse_own_sampling(strategy, "DP-FTRL (round-robin, each client once per tree)")
    if strategy.fit_round is not None:
        raise ValueError(
            "DP-FTRL needs each client's update to clip it and to check that it takes part "
            "once per tree; a strategy with its own fit exchange (such as secure "
            "aggregation's) hides them"
        )
    tree_rounds = plain(tree_rounds)
    if (
        isinstance(tree_rounds, bool)
        or not isinstance(tree_rounds, int)
        or not 1 <= tree_rounds <= MAX_COUNT
    ):
        raise ValueError(
            f"tree_rounds must be a positive int up to 2**63 - 1, got {shown(tree_rounds)}"
        )
    mech = Mechanism(
        name=f"DP-FTRL (tree aggregation, z={noise_multiplier:g}, clip={clip:g})",
        noise_multiplier=float(noise_multiplier),
        clip=float(clip),
        delta=float(delta),
        tree_rounds=tree_rounds,
        expected_clients=expected_clients,
        target_epsilon=target_epsilon,
    )
    shared = Shared()
    hook = PrivacyHook(
        mech,
        shared,
        noise_seed,
        unit="one client (all of its data), at most once per tree",
        sampling=f"none (round-robin, each client once per {tree_rounds} rounds)",
        relation="replace special: replaced by a special (zero) record",
    )
    return replace_strategy(
        strategy,
        aggregator=dp_step(strategy.aggregator, mech, shared),
        selector=round_robin(tree_rounds, shared),
        fraction_fit=1.0 / tree_rounds,
        min_fit_clients=0,
        hooks=(*strategy.hooks, hook),
        name=f"DP-FTRL-{strategy.name}",
        hyperparameters={
            **strategy.hyperparameters,
            "dp": {
                "mechanism": "DP-FTRL",
                "noise_multiplier": float(noise_multiplier),
                "clip": float(clip),
                "delta": float(delta),
                "tree_rounds": tree_rounds,
                "target_epsilon": target_epsilon,
                "noise_seed": "given" if noise_seed is not None else None,
            },
        },
    )
