"""Per-client steps: they rewrite or drop each ``Contribution`` before the reducer sees it.

``clip_norm`` bounds each update's L2 norm, ``skip_nonfinite`` drops updates
holding NaN or Inf, and ``staleness_weight`` scales asynchronous updates down by
their staleness. Each records the clients it acted on in ``End.info``, which the
reducer copies into the round's ``Aggregate.info``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from covey.aggregate._base import Begin, Contribution, Dropped, End, Event, State, Step
from covey.aggregate._flat import check_positive, finite, needs_params, scaled, sq_norm, update_of
from covey.aggregate._order import CLIENT, described, of_kind
from covey.core._weights import Weights

Rewrite = Callable[[Contribution, Weights], "tuple[Contribution | None, bool]"]
"""``(contribution, params) -> (new contribution or None to drop it, whether to record it)``."""


class _PerClientState(NamedTuple):
    params: Weights | None = None
    noted: list[int] | None = None  # reused within a round: see held
    # How many of noted's entries this state holds. When a later step refuses a
    # contribution, the round goes on from the state before it: an entry noted
    # for the refused one lies past that state's ``held`` and is not its own.
    held: int = 0


def per_client(name: str, key: str, rewrite: Rewrite, dropped: str = "") -> Step:
    """A step that rewrites each contribution and lists the clients it acted on.

    Args:
        name: The step's name, for error messages.
        key: The ``End.info`` key under which the recorded client ids are listed.
        rewrite: ``(contribution, params) -> (contribution or None, record)``.
        dropped: Why a contribution ``rewrite`` turns into None is left out (a
            :class:`~covey.aggregate.Dropped` the round records as the client's failure).

    Returns:
        A per-client step.
    """

    def init(params: Weights) -> State:
        return _PerClientState()

    def update(state: _PerClientState, event: Event) -> tuple[State, tuple[Event, ...]]:
        if isinstance(event, Contribution):
            params = needs_params(state.params, name)
            new, record = rewrite(event, params)
            if record:
                state = _noted(state, event.cid)
            return state, ((Dropped(event.cid, f"{dropped} ({name})"),) if new is None else (new,))
        if isinstance(event, Begin):
            return _PerClientState(event.params, []), (event,)
        if isinstance(event, End):
            info = {**event.info, key: (state.noted or [])[: state.held]}
            return _PerClientState(), (End(event.round, info, event.step),)
        return state, (event,)

    return of_kind(Step(init, update), CLIENT, name)


def _noted(state: _PerClientState, cid: int) -> _PerClientState:
    """``state`` with client ``cid`` noted: appended to the round's list.

    Entries past ``state.held`` were noted for a contribution a later step refused,
    after which the round went on from ``state``: they are dropped first.
    """
    noted = state.noted
    if noted is None:  # an invariant of this module, not an input check
        raise RuntimeError("internal error: state.noted is unset")
    if len(noted) > state.held:
        del noted[state.held :]
    noted.append(cid)
    return _PerClientState(state.params, noted, state.held + 1)


@described
def clip_norm(max_norm: float) -> Step:
    """Scale each client's update down so that its L2 norm is at most ``max_norm``.

    The update ``d = w_k - w`` (all arrays together) becomes
    ``d * min(1, max_norm / ||d||)``; an update already within the bound passes
    unchanged (as weights, if the client sent weights).

    Args:
        max_norm: The bound on each update's global L2 norm.

    Returns:
        A per-client step; ``info["clipped"]`` lists the clients whose update was scaled.

    References:
        McMahan et al., "Learning Differentially Private Recurrent Language
        Models", ICLR 2018 (per-update clipping); Sun et al., "Can You Really
        Backdoor Federated Learning?", 2019 (norm bounding as a defence).
    """
    bound = check_positive(max_norm, "clip_norm max_norm")

    def rewrite(event: Contribution, params: Weights) -> tuple[Contribution | None, bool]:
        delta = update_of(event, params)
        with np.errstate(over="ignore"):
            norm = math.sqrt(sq_norm(delta))
        if norm <= bound:
            return event, False
        if math.isinf(norm):  # finite values whose squared norm overflows: scale them first
            delta, norm = _shrunk(delta)
        return replace(event, weights=None, delta=scaled(delta, bound / norm, params)), True

    return per_client("clip_norm()", "clipped", rewrite)


def _shrunk(delta: Weights) -> tuple[Weights, float]:
    """``delta / top`` (float64) and its norm, ``top`` its largest magnitude: nothing overflows."""
    wide = {k: np.asarray(v, dtype=np.float64) for k, v in delta.items()}
    top = max((float(np.max(np.abs(v))) for v in wide.values() if v.size), default=1.0)
    shrunk = {k: v / top for k, v in wide.items()}
    return shrunk, math.sqrt(sq_norm(shrunk))


@described
def skip_nonfinite() -> Step:
    """Drop every contribution whose update or extras hold a NaN or an infinity.

    Returns:
        A per-client step; ``info["nonfinite"]`` lists the dropped clients.

    References:
        Micikevicius et al., "Mixed Precision Training", ICLR 2018 (updates with
        Inf/NaN are skipped rather than applied).
    """

    def rewrite(event: Contribution, params: Weights) -> tuple[Contribution | None, bool]:
        values = event.weights if event.weights is not None else event.delta
        if values is None:  # an invariant of this module, not an input check
            raise RuntimeError("internal error: values is unset")
        ok = finite(values) and all(finite(extra) for extra in event.extras.values())
        return (event, False) if ok else (None, True)

    why = "its update or extras hold a NaN or an infinity"
    return per_client("skip_nonfinite()", "nonfinite", rewrite, dropped=why)


def polynomial_staleness(exponent: float = 0.5) -> Callable[[int], float]:
    """The staleness discount ``tau -> (1 + tau) ** -exponent``.

    Args:
        exponent: ``a >= 0``; 0.5 gives FedBuff's ``1/sqrt(1 + tau)``, 0 no discount.

    Returns:
        A function from a staleness (int) to a factor in ``(0, 1]``.

    References:
        Xie, Koyejo and Gupta, "Asynchronous Federated Optimization", 2019.
    """
    power = check_positive(exponent, "staleness exponent", allow_zero=True)

    def weight(staleness: int) -> float:
        return float((1.0 + staleness) ** -power)

    return weight


@described
def staleness_weight(fn: Callable[[int], float] | None = None) -> Step:
    """Scale each asynchronous update by a decreasing function of its staleness.

    A contribution computed from a model ``tau`` global updates old has its
    update multiplied by ``s(tau)``; the default ``s(tau) = 1/sqrt(1 + tau)`` is
    FedBuff's. Fresh updates (``s = 1``) pass unchanged.

    Args:
        fn: ``staleness -> factor``, a number from 0 to 1 (default
            :func:`polynomial_staleness` with 0.5).

    Returns:
        A per-client step; ``info["stale"]`` lists the clients whose update was scaled.

    References:
        Nguyen et al., "Federated Learning with Buffered Asynchronous
        Aggregation", AISTATS 2022; Xie, Koyejo and Gupta, "Asynchronous
        Federated Optimization", 2019 (staleness functions).
    """
    if fn is not None and not callable(fn):  # else it fails at the first stale update
        raise TypeError(
            "staleness_weight(fn) takes a function of the staleness tau (an int) to a factor, "
            f"e.g. lambda tau: (1 + tau) ** -0.5, got {type(fn).__name__}"
        )
    weigh = polynomial_staleness(0.5) if fn is None else fn

    def rewrite(event: Contribution, params: Weights) -> tuple[Contribution | None, bool]:
        try:
            given: object = weigh(event.staleness)
        except Exception as exc:  # a bare ZeroDivisionError named neither the function nor tau
            raise ValueError(
                f"the staleness function {getattr(weigh, '__qualname__', weigh)!r} raised "
                f"{type(exc).__name__}: {exc} for client {event.cid}'s update of staleness "
                f"{event.staleness}: it must return a number from 0 to 1 for every staleness "
                "0, 1, 2, ..., e.g. lambda tau: (1 + tau) ** -0.5"
            ) from exc
        factor, wrong = _staleness_factor(given)
        if wrong:
            raise ValueError(
                f"the staleness function {getattr(weigh, '__qualname__', weigh)!r} gave "
                f"{given!r} for staleness {event.staleness}, {wrong}: it must return a number "
                "from 0 to 1 (the weight of a stale update; 1 for a fresh one), e.g. "
                "lambda tau: (1 + tau) ** -0.5"
            )
        if factor == 1.0:
            return event, False
        delta = update_of(event, params)
        return replace(event, weights=None, delta=scaled(delta, factor, params)), True

    return per_client("staleness_weight()", "stale", rewrite)


def _staleness_factor(given: object) -> tuple[float, str]:
    """A staleness function's value as a factor, and what is wrong with it ("" if nothing).

    Any real scalar is taken: a Python or NumPy int or float, or a 0-d array of
    one (what NumPy's functions of a scalar often return). A bool, a string, a
    complex number, an array of several values, NaN, an infinity and a number
    outside 0 to 1 are not.
    """
    if isinstance(given, np.ndarray):
        if given.ndim != 0:
            return math.nan, f"an array of shape {given.shape}, not one number"
        given = given[()]  # the NumPy scalar it holds
    if isinstance(given, bool | np.bool_):
        return math.nan, "a bool, not a number"
    if not isinstance(given, numbers.Real):  # "0.5" and 0.5j are refused, not converted
        return math.nan, f"a {type(given).__name__}, not a real number"
    try:
        factor = float(given)
    except (OverflowError, ValueError):  # an int too large for a float, say
        return math.nan, "out of a float's range"
    if not math.isfinite(factor):
        return factor, "not a finite number"
    if factor < 0:
        return factor, "a negative number"
    if factor > 1:
        return factor, "above 1"
    return factor, ""
