"""Partitioners that split a dataset's indices across federated clients.

Every partitioner returns a ``list`` with one ``int64`` index array per client. Unless a
function's docstring says otherwise, each index of the dataset appears in exactly one client's
array, and the indices within a client are sorted in ascending order.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["dirichlet", "iid", "natural", "shards"]

IndexArray = npt.NDArray[np.int64]

# Dir(alpha) draws the same proportions to float64 precision for every alpha beyond ~1e32;
# much larger values overflow the sum of the gamma draws inside ``Generator.dirichlet``
# (every proportion 0, so every example went to the last client).
_MAX_ALPHA = 1e100


def _as_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an ``int`` >= ``minimum`` or raise a clear error."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        result = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, got {type(value).__name__} {value!r}"
        ) from None
    if result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {result}")
    return result


def _as_1d(name: str, values: npt.ArrayLike) -> npt.NDArray[Any]:
    """Return ``values`` as a 1-D array or raise a clear error."""
    if isinstance(values, Iterator):  # np.asarray wraps it in a 0-d object array
        raise TypeError(
            f"{name} must be a 1-D array, got {type(values).__name__}, an iterator: make it "
            "a list or an array first (np.asarray(list(...)))"
        )
    array = np.asarray(values)
    if array.ndim != 1:
        hint = ""
        if array.ndim == 2 and name == "n_or_labels":
            hint = ": give the number of examples, len(x), for a table of features"
        elif array.ndim == 2:
            hint = f": give one column of {name}, e.g. df['label'] of a DataFrame"
        raise ValueError(f"{name} must be a 1-D array, got an array of shape {array.shape}{hint}")
    return array


def _rng(seed: object) -> np.random.Generator:
    """Return ``default_rng(seed)``, or raise an error that names ``seed``."""
    try:
        return np.random.default_rng(seed)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise type(exc)(
            f"seed must be a non-negative integer, got {type(seed).__name__} {seed!r}"
        ) from None


def _unsortable(name: str, values: npt.NDArray[Any], exc: TypeError) -> TypeError:
    """The error for values that cannot be sorted (e.g. ints and strings mixed)."""
    kinds = sorted({type(v).__name__ for v in values.tolist()})
    return TypeError(
        f"{name} must hold values of one sortable type, got {', '.join(kinds)} mixed ({exc})"
    )


def _unique_codes(
    name: str, values: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Return the class number of each value (in sorted order of values) and the class sizes."""
    try:
        _, codes, counts = np.unique(values, return_inverse=True, return_counts=True)
    except TypeError as exc:
        raise _unsortable(name, values, exc) from None
    return codes.reshape(-1), counts


def _finish(parts: list[npt.NDArray[Any]]) -> list[IndexArray]:
    """Sort each client's indices and cast them to ``int64``."""
    return [np.sort(part).astype(np.int64, copy=False) for part in parts]


def iid(
    n_or_labels: int | npt.ArrayLike,
    num_clients: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
) -> list[IndexArray]:
    """Split indices uniformly at random into ``num_clients`` near-equal parts.

    Client sizes differ by at most one. If ``num_clients`` exceeds the number of examples, the
    trailing clients receive empty arrays (as :func:`numpy.array_split` does).

    Args:
        n_or_labels: The number of examples, or a 1-D array (e.g. the labels) whose length is
            the number of examples.
        num_clients: The number of clients, at least 1.
        seed: Seed for :func:`numpy.random.default_rng`.
        shuffle: If ``False``, return ``np.array_split(np.arange(n), num_clients)``: client
            ``k`` gets the ``k``-th contiguous block of indices.

    Returns:
        One sorted ``int64`` index array per client; together they hold every index in
        ``range(n)`` exactly once.
    """
    if isinstance(n_or_labels, int | np.integer) and not isinstance(n_or_labels, bool):
        n = _as_int("n_or_labels", n_or_labels, 0)
    elif np.ndim(n_or_labels) == 0:
        raise TypeError(
            f"n_or_labels must be an integer or a 1-D array, got "
            f"{type(n_or_labels).__name__} {n_or_labels!r}"
        )
    else:
        n = len(_as_1d("n_or_labels", n_or_labels))
    num_clients = _as_int("num_clients", num_clients, 1)
    order = _rng(seed).permutation(n) if shuffle else np.arange(n)
    return _finish(np.array_split(order, num_clients))


def dirichlet(
    labels: npt.ArrayLike,
    num_clients: int,
    alpha: float,
    *,
    seed: int = 0,
    min_size: int = 1,
    max_retries: int = 100,
) -> list[IndexArray]:
    """Split indices with label skew drawn from a symmetric Dirichlet distribution.

    For every class, client proportions ``p`` are drawn from ``Dir(alpha, ..., alpha)`` and
    the class's shuffled indices are cut into consecutive pieces of those proportions. A class
    of ``n_c`` examples rarely divides exactly, so the cuts are rounded at random (systematic
    sampling): with one uniform offset ``u`` in ``[0, 1)`` per class, the cut after client
    ``k`` falls at ``floor(n_c * (p_0 + ... + p_k) + u)``. Client ``k`` then gets
    ``floor(n_c * p_k)`` or one more example, and exactly ``n_c * p_k`` on average, however
    small the class: an example of a one-example class goes to client ``k`` with probability
    ``p_k``. (Rounding every cut to the nearest integer instead favours the clients in the
    middle: 100,000 one-example classes over 10 clients gave the first and last clients about
    1,500 examples each and the middle ones about 19,000.) Small
    ``alpha`` (e.g. 0.1) gives each client few classes; large ``alpha`` (e.g. 100) approaches
    an IID split (any ``alpha`` above 1e100 draws as 1e100, which is IID up to rounding). The
    whole draw is repeated until every client holds at least ``min_size`` examples, at most
    ``max_retries`` times; the retries stop early once the draws so far have left on average
    50 or more clients under ``min_size`` (many clients with few examples each, e.g. 100,000
    clients of 6 examples at ``alpha=0.5``): a draw leaving none is then all but impossible,
    with a chance of about e^-50 at most. The error names the ``min_size`` that gives a split
    with this seed.

    Args:
        labels: 1-D array of class labels, one per example (any sortable dtype).
        num_clients: The number of clients, at least 1.
        alpha: Dirichlet concentration, a finite number > 0.
        seed: Seed for :func:`numpy.random.default_rng`. The shuffles and proportions come
            from that generator, class by class in sorted label order; the rounding offsets
            from its first child (``Generator.spawn``), one per class in the same order. The
            same seed gives the same split.
        min_size: Minimum number of examples per client, at least 0.
        max_retries: Maximum number of draws before giving up, at least 1.

    Returns:
        One sorted ``int64`` index array per client; together they hold every index of
        ``labels`` exactly once.

    Raises:
        ValueError: On invalid arguments, if ``num_clients * min_size`` exceeds the number of
            examples, or if no draw satisfied ``min_size`` within ``max_retries`` attempts (or
            the draws so far left so many clients short that none would).

    References:
        Hsu, Qi and Brown, 2019. "Measuring the Effects of Non-Identical Data Distribution for
        Federated Visual Classification". arXiv:1909.06335.
    """
    label_array = _as_1d("labels", labels)
    num_clients = _as_int("num_clients", num_clients, 1)
    min_size = _as_int("min_size", min_size, 0)
    max_retries = _as_int("max_retries", max_retries, 1)
    given: object = alpha  # typed float, but called with what a caller has
    if isinstance(given, str | bytes | bool) or not isinstance(given, numbers.Real):
        # "1" would be read as 1 where every other argument refuses text
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__} {alpha!r}")
    alpha_value = float(alpha)
    if not (math.isfinite(alpha_value) and alpha_value > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    n = len(label_array)
    if num_clients * min_size > n:
        raise ValueError(
            f"cannot give each of num_clients={num_clients} clients at least "
            f"min_size={min_size} examples: labels has only {n} examples"
        )

    class_of, class_sizes = _unique_codes("labels", label_array)
    by_class = np.argsort(class_of, kind="stable")
    concentration = np.full(num_clients, min(alpha_value, _MAX_ALPHA))
    rng = _rng(seed)
    (rounding,) = rng.spawn(1)
    client_of = np.empty(n, dtype=np.intp)

    best = 0  # the largest smallest client of a failed draw: that min_size gives a split
    short = 0  # clients left under min_size, summed over the failed draws
    for draw in range(1, max_retries + 1):
        sizes = _dirichlet_draw(rng, rounding, by_class, class_sizes, concentration, client_of)
        smallest = int(sizes.min())
        if smallest >= min_size:
            order = np.argsort(client_of, kind="stable")
            return _finish(np.split(order, np.cumsum(sizes)[:-1]))
        best = max(best, smallest)
        short += int(np.count_nonzero(sizes < min_size))
        if draw < max_retries and short >= _HOPELESS_SHORT * draw:
            raise ValueError(
                f"dirichlet: stopped after {draw} of max_retries={max_retries} draws: they "
                f"left on average {short / draw:.0f} of num_clients={num_clients} clients "
                f"under min_size={min_size} examples (alpha={alpha_value}, {n} examples), so "
                f"a draw that leaves none has a chance of about e^-{short // draw} at most; "
                f"{_remedy(min_size, best)}"
            )

    raise ValueError(
        f"dirichlet: no draw gave every one of num_clients={num_clients} clients at least "
        f"min_size={min_size} examples within max_retries={max_retries} attempts "
        f"(alpha={alpha_value}, {n} examples); increase max_retries, {_remedy(min_size, best)}"
    )


# Each client falls under ``min_size`` in a draw with some chance q, and one client short makes
# the others less likely to be, so a draw leaves none short with a chance of at most about
# exp(-mean), the mean being num_clients * q clients short. Failed draws that left on average
# this many short are stopped: a setting whose draws succeed even once in a million has a mean
# of at most 14 and leaves 50 short with a chance below 1e-12.
_HOPELESS_SHORT = 50


def _remedy(min_size: int, best: int) -> str:
    """What to change after failed draws whose largest smallest client had ``best`` examples."""
    return (
        f"lower min_size from {min_size} to {best} (which gives a split with this seed), "
        f"increase alpha, or lower num_clients"
    )


# Rows of class proportions held at once by one draw: memory stays O(n + num_clients).
_BLOCK_CELLS = 1 << 16


def _dirichlet_draw(
    rng: np.random.Generator,
    rounding: np.random.Generator,
    by_class: npt.NDArray[np.intp],
    class_sizes: npt.NDArray[np.intp],
    concentration: npt.NDArray[np.float64],
    client_of: npt.NDArray[np.intp],
) -> npt.NDArray[np.int64]:
    """Draw one Dirichlet split into ``client_of``; return the number of examples per client.

    For every class in order, its members are shuffled (``rng.permutation``) and its client
    proportions drawn (``rng.dirichlet``); the members are cut into consecutive pieces of
    those proportions, each cut rounded down after adding the class's offset
    (``rounding.random()``). The generators are called exactly as one call per class of each
    would, so a seed gives the same split, but only the draws run class by class: the shuffle
    of a one-example class draws nothing, so a run of them shares one ``rng.dirichlet`` call,
    and the offsets and cuts are drawn and computed for a block of classes at once.
    """
    num_clients = len(concentration)
    num_classes = len(class_sizes)
    offsets = np.concatenate(([0], np.cumsum(class_sizes)[:-1]))
    # Classes whose shuffle draws from the generator (two or more examples): the classes
    # after one of them, up to the next, draw only their proportions, in one call.
    shuffled_classes = np.flatnonzero(class_sizes >= 2)
    block = max(1, _BLOCK_CELLS // num_clients)
    clients = np.arange(num_clients)
    sizes = np.zeros(num_clients, dtype=np.int64)
    for start in range(0, num_classes, block):
        stop = min(start + block, num_classes)
        rows = stop - start
        block_sizes = class_sizes[start:stop]
        first = int(offsets[start])
        # Position of each shuffled member within its class, in class order.
        local = np.zeros(int(block_sizes.sum()), dtype=np.intp)
        proportions = np.empty((rows, num_clients))
        # One group per shuffled class (plus the block's first class), up to the next one.
        lo, hi = np.searchsorted(shuffled_classes, [start, stop])
        starts = np.union1d([start], shuffled_classes[lo:hi])
        ends = np.append(starts[1:], stop)
        for i, j in zip(starts.tolist(), ends.tolist(), strict=True):
            size = int(class_sizes[i])
            if size >= 2:
                at = int(offsets[i]) - first
                local[at : at + size] = rng.permutation(size)
            proportions[i - start : j - start] = rng.dirichlet(concentration, size=j - i)
        members = by_class[np.repeat(offsets[start:stop], block_sizes) + local]
        totals = block_sizes[:, None]
        offset = rounding.random((rows, 1))
        cuts = np.floor(np.cumsum(proportions, axis=1)[:, :-1] * totals + offset).astype(np.intp)
        cuts = np.clip(cuts, 0, totals)
        counts = np.diff(cuts, axis=1, prepend=np.zeros_like(totals), append=totals)
        client_of[members] = np.repeat(np.tile(clients, rows), counts.ravel())
        sizes += counts.sum(axis=0)
    return sizes


def shards(
    labels: npt.ArrayLike,
    num_clients: int,
    shards_per_client: int = 2,
    *,
    seed: int = 0,
) -> list[IndexArray]:
    """Split indices into label-sorted shards, the pathological non-IID split of FedAvg.

    Indices are shuffled, stably sorted by label, and cut into ``num_clients *
    shards_per_client`` contiguous shards of near-equal size (sizes differ by at most one).
    Each client receives ``shards_per_client`` shards chosen at random without replacement, so
    its labels come from at most ``shards_per_client`` contiguous runs of the sorted labels.

    Args:
        labels: 1-D array of class labels, one per example (any sortable dtype).
        num_clients: The number of clients, at least 1.
        shards_per_client: Shards given to each client, at least 1.
        seed: Seed for :func:`numpy.random.default_rng`.

    Returns:
        One sorted ``int64`` index array per client; together they hold every index of
        ``labels`` exactly once.

    Raises:
        ValueError: On invalid arguments or if there are more shards than examples.

    References:
        McMahan, Moore, Ramage, Hampson and Agüera y Arcas, 2017. "Communication-Efficient
        Learning of Deep Networks from Decentralized Data". AISTATS. arXiv:1602.05629.
    """
    label_array = _as_1d("labels", labels)
    num_clients = _as_int("num_clients", num_clients, 1)
    shards_per_client = _as_int("shards_per_client", shards_per_client, 1)
    num_shards = num_clients * shards_per_client
    n = len(label_array)
    if num_shards > n:
        raise ValueError(
            f"num_clients * shards_per_client = {num_clients} * {shards_per_client} = "
            f"{num_shards} shards is more than the {n} examples in labels"
        )
    rng = _rng(seed)
    shuffled = rng.permutation(n)
    try:
        order = shuffled[np.argsort(label_array[shuffled], kind="stable")]
    except TypeError as exc:
        raise _unsortable("labels", label_array, exc) from None
    shard_list = np.array_split(order, num_shards)
    assignment = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return _finish([np.concatenate([shard_list[s] for s in row]) for row in assignment])


def natural(ids: npt.ArrayLike) -> list[IndexArray]:
    """Split indices by a natural id column, one client per distinct id.

    Use it for datasets with a natural federation, e.g. a writer id in FEMNIST or a user id.

    Args:
        ids: 1-D array holding the id of each example (any sortable dtype).

    Returns:
        One sorted ``int64`` index array per distinct id, in sorted id order (the order of
        ``np.unique(ids)``); together they hold every index of ``ids`` exactly once. An empty
        ``ids`` gives an empty list.
    """
    id_array = _as_1d("ids", ids)
    if len(id_array) == 0:
        return []
    client_of, counts = _unique_codes("ids", id_array)
    order = np.argsort(client_of, kind="stable")
    return _finish(np.split(order, np.cumsum(counts)[:-1]))
