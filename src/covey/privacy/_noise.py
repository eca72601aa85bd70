"""Gaussian noise for DP: seeded reproducibly, or from the operating system's CSPRNG.

A generator is made per use from ``(seed, purpose, ...)``: with a seed the noise
is the same in every run and on every transport; without one it comes from
128 bits of :mod:`secrets`, so nobody (not the server's operator either) can
predict or remove it. Noise is drawn in float64.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np

from covey.aggregate._flat import sq_norm
from covey.aggregate._order import reducer_names
from covey.core._weights import Array, Weights

# Purposes, mixed into the seed so that independent noises never share a stream.
UPDATE_NOISE = 1
COUNT_NOISE = 2
TREE_NOISE = 3
LOCAL_NOISE = 4
LOCAL_CLIENT_NOISE = 5


def new_seed() -> int:
    """A fresh 128-bit seed from the operating system's CSPRNG."""
    return secrets.randbits(128)


def generator(seed: int | None, *keys: int) -> np.random.Generator:
    """A generator for ``keys`` (purpose, round, ...): seeded, or cryptographically fresh.

    Args:
        seed: A non-negative int for reproducible noise, or None for a fresh
            128-bit seed from :mod:`secrets`.
        *keys: Non-negative ints that tell uses of one seed apart.
    """
    base = new_seed() if seed is None else seed
    return np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence([base, *keys])))


def check_float(params: Weights, what: str) -> None:
    """Refuse to noise a model holding a non-floating-point array."""
    bad = [name for name, v in params.items() if np.asarray(v).dtype.kind != "f"]
    if bad:
        raise TypeError(
            f"{what} cannot add noise to non-floating-point arrays {bad}: noising them "
            "would round the noise away; keep integer state out of the model" + _counters(bad)
        )


_TRACKED = "num_batches_tracked"
"""The name of a torch BatchNorm's buffer counting the batches it trained on."""


def _counters(names: list[str]) -> str:
    """How to take torch BatchNorm's integer counters among ``names`` out of a model."""
    counters = [str(n) for n in names if str(n).rpartition(".")[2] == _TRACKED]
    others = [str(n) for n in names if str(n).rpartition(".")[2] != _TRACKED]
    hint = (
        f". {others[0]!r}{' and the like' if len(others) > 1 else ''}: an array every "
        "client builds alike and training leaves as it is (a mask, a table of codes) can "
        "stay apart from the weights; a torch buffer does when registered with "
        "register_buffer(name, tensor, persistent=False), which leaves it out of the "
        "state_dict"
        if others
        else ""
    )
    if not counters:
        return hint
    return hint + (
        f". {counters[0]!r}{' and the like' if len(counters) > 1 else ''} is a torch "
        f"BatchNorm's {_TRACKED} buffer, an integer count of the batches it trained on: "
        f"set m.{_TRACKED} = None on each BatchNorm layer m before taking the model's "
        "weights, which drops it from the state_dict (BatchNorm reads it only with "
        "momentum=None), or build the layers with track_running_stats=False, or use "
        "GroupNorm instead"
    )


def norm(values: Weights) -> float:
    """The L2 norm of all arrays of ``values`` taken together: infinite only if a value is.

    A float64 update past about 1.3e154 squares to infinity; its norm is then taken
    over the values divided by the largest of them, so that it is clipped, not
    dropped as not finite.
    """
    sq = sq_norm(values)
    if math.isfinite(sq) or not all(np.isfinite(v).all() for v in values.values()):
        return math.sqrt(sq)  # NaN or infinity for a value that is
    top = max((float(np.max(np.abs(v), initial=0.0)) for v in values.values()), default=0.0)
    return top * math.sqrt(sq_norm({name: np.divide(v, top) for name, v in values.items()}))


def gaussian(rng: np.random.Generator, like: Weights, std: float) -> dict[str, Array]:
    """Independent N(0, std^2) noise in float64, one array per array of ``like``."""
    return {name: rng.normal(0.0, std, size=np.shape(v)) for name, v in like.items()}


def tree_nodes(step: int) -> list[tuple[int, int]]:
    """The nodes ``(level, index)`` of a binary tree whose sum is the prefix ``1..step``.

    Node ``(l, k)`` covers steps ``k * 2**l + 1 .. (k + 1) * 2**l``.

    Example:
        >>> tree_nodes(6)
        [(2, 0), (1, 2)]

    References:
        Dwork, Naor, Pitassi and Rothblum, "Differential Privacy under Continual
        Observation", STOC 2010; Chan, Shi and Song, "Private and Continual Release
        of Statistics", ICALP 2010.
    """
    nodes: list[tuple[int, int]] = []
    start = 0
    for level in range(max(step.bit_length() - 1, 0), -1, -1):
        if step & (1 << level):
            nodes.append((level, start >> level))
            start += 1 << level
    return nodes


def tree_noise(
    seed: int, tree: int, step: int, like: Weights, std: float
) -> dict[str, Array] | None:
    """The tree-aggregation noise on the prefix sum of steps ``1..step`` of tree ``tree``.

    Each node's noise is drawn from ``(seed, tree, level, index)``, so it is the
    same every time it is asked for: nothing model-sized is kept between rounds.

    Returns:
        The summed noise, or None for step 0 (the empty prefix).
    """
    total: dict[str, Array] | None = None
    for level, index in tree_nodes(step):
        noise = gaussian(generator(seed, TREE_NOISE, tree, level, index), like, std)
        if total is None:
            total = noise
        else:
            for name, value in noise.items():
                total[name] += value
    return total


def refuse_loss_weighted(inner: Any, name: str) -> None:
    """Refuse q-FedAvg under a central DP step, naming why before anything is tried.

    q-FedAvg weighs each client's update by that client's loss; the DP step hands
    its aggregation one private mean a round, which carries no client's loss.

    Raises:
        ValueError: ``inner`` holds the ``qfedavg()`` reducer.
    """
    if "qfedavg()" in reducer_names(inner):
        raise ValueError(
            f"{name} cannot wrap q-FedAvg: q-FedAvg weighs each client's update by that "
            "client's own loss, but central DP hands the aggregation one private mean a "
            "round, which carries no client's loss; the strategy's aggregation cannot run "
            "on the one private mean it receives. Use FedAvg, FedAdam or FedMedian with "
            "central DP, or q-FedAvg without it"
        )
