"""Distance-based robust rules: Krum, Multi-Krum and Bulyan.

Each client's update gets a score, the sum of squared distances to its
``n - f - 2`` nearest neighbours; updates far from the crowd score high. Krum
keeps the lowest-scoring update, Multi-Krum averages the ``m`` lowest, and
Bulyan selects ``n - 2f`` updates by repeated Krum and then takes a trimmed,
median-centred mean of each coordinate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from covey.aggregate._base import STEPS, AggregationError, Step, innermost, requiring
from covey.aggregate._flat import Vector, check_count, check_switch
from covey.aggregate._order import described
from covey.aggregate._robust import Combined, Matrix, _in_range, buffered


def pairwise_sq_distances(updates: Matrix) -> Matrix:
    """Squared Euclidean distances between the rows of ``updates`` (an ``(n, n)`` matrix).

    Taken from the Gram matrix of the rows minus their coordinate-wise (lower)
    median, a block of columns at a time: distances do not change with the shift,
    and without it updates that share a large common part would lose their
    distances to cancellation (``|x|^2 + |y|^2 - 2 x.y`` errs by about
    ``1e-16 |x|^2``, more than the distance when the rows agree to 8 digits). A
    pair whose norms or product overflow (finite updates near float64's limit,
    which a Byzantine client may send) would get ``inf - inf = NaN``, which argmin
    picks first: such pairs are computed again as ``sum((x_i - x_j)^2)``, which is
    exact for equal rows and at worst ``inf``.
    """
    n, size = updates.shape
    middle = (n - 1) // 2
    step = max(1, _BLOCK // max(n, 1))
    gram = np.zeros((n, n))
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, size, step):
            block = updates[:, start : start + step]
            shifted = block - np.partition(block, middle, axis=0)[middle]
            gram += shifted @ shifted.T
        norms = np.diag(gram).copy()
        dist = norms[:, None] + norms[None, :] - 2.0 * gram
        dist = 0.5 * (dist + dist.T)
        overflowed = ~np.isfinite(dist)  # before clamping: -inf would become 0
        np.maximum(dist, 0.0, out=dist)
        for i, j in zip(*np.nonzero(overflowed), strict=True):
            if i < j:
                diff = updates[i] - updates[j]
                dist[i, j] = dist[j, i] = float(np.dot(diff, diff))
    np.fill_diagonal(dist, 0.0)
    out: Matrix = dist
    return out


_BLOCK = 1 << 20
"""Elements of ``updates`` shifted at once (8 MiB of float64), whatever the model's size."""


def ranking_sq_distances(updates: Matrix) -> Matrix:
    """Squared distances between the rows of ``updates``, all in one scale, to rank them by.

    They are :func:`pairwise_sq_distances` unless one of those is not finite: then
    the updates are first divided by the power of two just above their largest
    finite absolute value (exact above the subnormals), which divides every squared
    distance by the same factor and keeps Krum's order of the scores. Unscaled,
    updates near float64's limit (entries of 1e308, which a Byzantine client may
    send) have every distance at ``inf``, every score ties and argmin takes the
    first update, whoever sent it. A distance left NaN (rows with infinite entries
    in the same place) is ``inf``, never picked first.
    """
    dist = pairwise_sq_distances(updates)
    if np.isfinite(dist).all():
        return dist
    finite = np.isfinite(updates)
    top = float(np.max(np.abs(updates), where=finite, initial=0.0))
    if top > 0.0:
        with np.errstate(invalid="ignore"):
            dist = pairwise_sq_distances(np.ldexp(updates, -int(np.frexp(top)[1])))
    dist[np.isnan(dist)] = np.inf
    return dist


def _finite_choice(scores: Vector, chosen: NDArray[np.integer[Any]], rule: str) -> None:
    if not np.isfinite(scores[chosen]).all():
        raise AggregationError(
            f"{rule}: the updates it would keep are infinitely far from their neighbours "
            "(updates with infinite entries), so no choice among them is better than "
            "another; the global model is left unchanged this round"
        )


def krum_scores(dist: Matrix, neighbours: int) -> Vector:
    """Each row's sum of squared distances to its ``neighbours`` nearest other rows."""
    n = len(dist)
    if n == 1:
        return np.zeros(1)
    k = max(1, min(neighbours, n - 1))
    others = dist + np.diag(np.full(n, np.inf))
    nearest = np.partition(others, k - 1, axis=1)[:, :k]
    scores: Vector = np.sort(nearest, axis=1).sum(axis=1)
    return scores


def _require(n: int, needed: int, rule: str, f: int) -> None:
    if n < needed:
        raise AggregationError(
            f"{rule} with f={f} needs at least {needed} contributions, got {n}; "
            "the global model is left unchanged this round"
        )


@described
def krum(f: int) -> Step:
    """Keep the one update closest to its ``n - f - 2`` nearest neighbours (Krum).

    With ``n`` updates ``x_i``, the score of ``i`` is ``sum ||x_i - x_j||^2`` over
    the ``n - f - 2`` updates ``j != i`` nearest to it; the update with the lowest
    score becomes the round's update. It needs ``n >= 2f + 3``.

    Args:
        f: The number of Byzantine clients to tolerate.

    Returns:
        A reducer step; ``Aggregate.info["selected"]`` is a list holding the
        chosen client id (a list, as Multi-Krum's and Bulyan's are).

    References:
        Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
        Gradient Descent", NeurIPS 2017.
    """
    byzantine = check_count(f, "krum f")

    def combine(updates: Matrix, examples: Vector, cids: list[int]) -> Combined:
        n = len(updates)
        _require(n, 2 * byzantine + 3, "krum", byzantine)
        scores = krum_scores(ranking_sq_distances(updates), n - byzantine - 2)
        best = int(np.argmin(scores))
        _finite_choice(scores, np.array([best]), "krum")
        return updates[best].copy(), {"selected": [cids[best]]}

    need = 2 * byzantine + 3
    why = f"Krum with f={f} needs at least 2f+3 = {need}"
    return requiring(buffered("krum()", combine), need, why)


@described
def multi_krum(f: int, m: int | None = None, *, weighted: bool = False) -> Step:
    """Average the ``m`` updates with the lowest Krum scores (Multi-Krum).

    Args:
        f: The number of Byzantine clients to tolerate (needs ``n >= 2f + 3``).
        m: How many updates to average (default ``n - f``; ``m = 1`` is Krum); in
            a round of fewer than ``m + f`` updates, the ``n - f`` best.
        weighted: Average the selected updates weighted by their number of examples
            instead of equally.

    Returns:
        A reducer step; ``Aggregate.info["selected"]`` lists the chosen client ids.

    References:
        Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
        Gradient Descent", NeurIPS 2017.
    """
    byzantine = check_count(f, "multi_krum f")
    keep = None if m is None else check_count(m, "multi_krum m", minimum=1)
    weighted = check_switch(weighted, "multi_krum weighted")

    def combine(updates: Matrix, examples: Vector, cids: list[int]) -> Combined:
        n = len(updates)
        _require(n, 2 * byzantine + 3, "multi_krum", byzantine)
        # Never more than n - f: m past it would average the f it must leave out.
        count = n - byzantine if keep is None else min(keep, n - byzantine)
        scores = krum_scores(ranking_sq_distances(updates), n - byzantine - 2)
        chosen = np.argsort(scores, kind="stable")[:count]
        _finite_choice(scores, chosen, "multi_krum")
        info = {"selected": sorted(cids[i] for i in chosen)}
        if weighted:
            w = examples[chosen]
            if w.sum() == 0.0:
                raise AggregationError("multi_krum: the selected updates have num_examples=0")
            total = float(w.sum())

            def weighted_mean(rows: Matrix, axis: int) -> Vector:
                out: Vector = (w @ rows) / total
                return out

            return _in_range(weighted_mean, updates[chosen], total), info
        return _in_range(np.mean, updates[chosen]), info

    need = 2 * byzantine + 3
    why = f"Multi-Krum with f={f} needs at least 2f+3 = {need}"
    step = requiring(buffered("multi_krum()", combine), need, why)
    if keep is not None:  # a run that can never reach it is warned of as it starts
        setattr(step.update, _KEEPS, (keep, byzantine))
    return step


_KEEPS = "_covey_multi_krum_keeps"


def multi_krum_keeps(step: Step) -> tuple[int, int] | None:
    """``(m, f)`` of the :func:`multi_krum` in ``step`` (a chain's too) given an ``m``; or None."""
    update = innermost(step)
    for part in getattr(update, STEPS, ()):
        found = multi_krum_keeps(part)
        if found is not None:
            return found
    keeps = getattr(update, _KEEPS, None)
    return keeps if isinstance(keeps, tuple) else None


@described
def bulyan(f: int) -> Step:
    """Select ``n - 2f`` updates by repeated Krum, then average each coordinate around its median.

    Selection: Krum is applied to the remaining updates and its choice moved to
    the selection set, ``theta = n - 2f`` times (with at least one neighbour when
    few remain). Aggregation: for every coordinate, the ``beta = theta - 2f``
    selected values closest to the selection's median are averaged. It needs
    ``n >= 4f + 3``.

    Args:
        f: The number of Byzantine clients to tolerate.

    Returns:
        A reducer step; ``Aggregate.info["selected"]`` lists the selected client ids.

    References:
        El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of Distributed
        Learning in Byzantium", ICML 2018.
    """
    byzantine = check_count(f, "bulyan f")

    def combine(updates: Matrix, examples: Vector, cids: list[int]) -> Combined:
        n = len(updates)
        _require(n, 4 * byzantine + 3, "bulyan", byzantine)
        selected = bulyan_select(ranking_sq_distances(updates), byzantine)
        info = {"selected": sorted(cids[i] for i in selected)}
        return bulyan_coordinates(updates[selected], byzantine), info

    need = 4 * byzantine + 3
    why = f"Bulyan with f={f} needs at least 4f+3 = {need}"
    return requiring(buffered("bulyan()", combine), need, why)


def bulyan_select(dist: Matrix, f: int) -> list[int]:
    """Indices of the ``n - 2f`` updates Bulyan's repeated Krum selects, in selection order."""
    n = len(dist)
    remaining = list(range(n))
    selected: list[int] = []
    for _ in range(n - 2 * f):
        sub = dist[np.ix_(remaining, remaining)]
        scores = krum_scores(sub, len(remaining) - f - 2)
        best = int(np.argmin(scores))
        _finite_choice(scores, np.array([best]), "bulyan")
        selected.append(remaining.pop(best))
    return selected


def bulyan_coordinates(chosen: Matrix, f: int) -> Vector:
    """Per coordinate, the mean of the ``len(chosen) - 2f`` values closest to the median.

    Near float64's limit a value's distance to the median may overflow: it is then
    ``inf``, farther than every finite one, as it is.
    """
    beta = len(chosen) - 2 * f
    centre = _in_range(np.median, chosen)
    with np.errstate(over="ignore"):
        gaps = np.abs(chosen - centre)
    order = np.argsort(gaps, axis=0, kind="stable")[:beta]
    return _in_range(np.mean, np.take_along_axis(chosen, order, axis=0))
