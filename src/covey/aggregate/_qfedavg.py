"""q-FedAvg: a fair reducer that gives clients with a higher loss more say."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from covey.aggregate._base import (
    Aggregate,
    AggregationError,
    Begin,
    Contribution,
    End,
    Event,
    State,
    Step,
)
from covey.aggregate._flat import (
    NO_EXAMPLES,
    check_positive,
    needs_params,
    no_examples,
    sq_norm,
    to_int,
    update_of,
)
from covey.aggregate._order import REDUCER, described, of_kind
from covey.core._weights import Array, Weights


class _QState(NamedTuple):
    params: Weights | None = None
    acc: dict[str, Array] | None = None  # sum_k F_k^q L d_k (float arrays), sum_k d_k (others)
    h: float = 0.0
    clients: int = 0
    examples: int = 0
    empty: int = 0  # contributions with num_examples=0, left out


@described
def qfedavg(q: float = 0.2, lr: float = 0.1, *, loss_key: str = "loss", eps: float = 1e-10) -> Step:
    """q-FedAvg: weigh each update by the client's loss to the power ``q``.

    Client ``k`` reports ``F_k``, its loss on its training data at the global
    weights it received (before training), in ``metrics[loss_key]``. With
    ``L = 1/lr`` (``lr`` the clients' learning rate), ``Dw_k = L (w - w_k)``,
    ``D_k = F_k^q Dw_k`` and ``h_k = q F_k^(q-1) ||Dw_k||^2 + L F_k^q``, the new
    global weights are ``w - sum_k D_k / sum_k h_k``. ``q = 0`` is FedSGD-like
    averaging; larger ``q`` gives more uniform accuracy across clients. It folds
    each update in as it arrives (memory O(model)); ``eps`` is added to every loss.

    The sums run over the clients that trained: a contribution with
    ``num_examples=0`` (a client with no data, whose update is the model it
    received) takes no part, as in the paper's update, where its ``h_k`` would
    shrink every step. ``Aggregate.info["no_examples"]`` counts those left out;
    a round of nothing else raises an AggregationError at ``End`` (the model is kept).

    The rule applies to the float arrays, which alone make up ``||Dw_k||``.
    Integer and bool arrays (a normalization layer's batch counter, a mask) are
    no weights being learned: they take the clients' mean change, rounded (a
    mask's entry flips when more than half the clients flip it), as under the
    server optimizers. In the rule, a counter that advanced by 50 would shrink
    every float step through ``h_k`` and, scaled by ``1 / sum h_k``, never move.

    Args:
        q: The fairness parameter, ``>= 0``.
        lr: The clients' local learning rate (sets the Lipschitz estimate ``L = 1/lr``).
        loss_key: The metric holding the client's pre-training loss.
        eps: Added to each loss so that ``F^(q-1)`` stays finite.

    Returns:
        A reducer step.

    References:
        Li, Sanjabi, Beirami and Smith, "Fair Resource Allocation in Federated
        Learning", ICLR 2020 (Algorithm 2).
    """
    fairness = check_positive(q, "qfedavg q", allow_zero=True)
    lipschitz = 1.0 / check_positive(lr, "qfedavg lr")
    smooth = check_positive(eps, "qfedavg eps", allow_zero=True)

    def init(params: Weights) -> State:
        return _QState()

    def update(state: _QState, event: Event) -> tuple[State, tuple[Event, ...]]:
        if isinstance(event, Contribution):
            params = needs_params(state.params, "qfedavg()")
            if event.num_examples == 0:  # it trained on nothing: no D_k, no h_k
                return state._replace(empty=state.empty + 1), ()
            loss = _client_loss(event, loss_key)
            delta = update_of(event, params)
            floats = {k: d for k, d in delta.items() if params[k].dtype.kind == "f"}
            fq, h = _client_terms(event.cid, loss, loss_key, smooth, fairness, lipschitz, floats)
            acc = state.acc
            if acc is None:
                acc = {k: np.zeros(v.shape, np.float64) for k, v in params.items()}
            with np.errstate(over="ignore", invalid="ignore"):  # an Inf the loop refuses
                for k, d in delta.items():
                    acc[k] += (fq * lipschitz) * d if k in floats else d
            return state._replace(
                acc=acc,
                h=state.h + h,
                clients=state.clients + 1,
                examples=state.examples + event.num_examples,
            ), ()
        if isinstance(event, Begin):
            return _QState(params=event.params), (event,)
        if isinstance(event, End):
            return _q_end(state, event)
        return state, (event,)

    return of_kind(Step(init, update), REDUCER, "qfedavg()")


def _q_end(state: _QState, event: End) -> tuple[State, tuple[Event, ...]]:
    """The round's aggregate: ``w - sum_k D_k / sum_k h_k`` over the clients that trained."""
    if state.acc is None or state.params is None:
        if state.empty:
            raise no_examples("qfedavg()", state.empty, event.step, event.round)
        return _QState(), ()
    if not state.h > 0.0 or not math.isfinite(state.h):
        raise AggregationError(f"qfedavg: the normalizer sum h_k is {state.h}")
    out = _finish(state.acc, state.params, state.h, state.clients)
    info = dict(event.info)
    if state.empty:
        info[NO_EXAMPLES] = state.empty
    agg = Aggregate(event.round, state.clients, state.examples, delta=out, info=info)
    return _QState(), (agg,)


def _finish(acc: dict[str, Array], params: Weights, h: float, clients: int) -> dict[str, Array]:
    """The round's delta: float sums over ``sum h_k``, the others' mean change rounded."""
    out: dict[str, Array] = {}
    for k, a in acc.items():
        dtype = params[k].dtype
        if dtype.kind == "f":
            out[k] = (a / h).astype(dtype)
        elif dtype.kind == "b":  # the share of clients that flip each entry; a tie keeps it
            out[k] = np.asarray(a / clients > 0.5)
        else:
            out[k] = to_int(a / clients, dtype)
    return out


def _client_terms(
    cid: int, loss: float, loss_key: str, eps: float, q: float, lipschitz: float, delta: Weights
) -> tuple[float, float]:
    """``(F_k^q, h_k)`` of one client, or an AggregationError that refuses that client.

    With ``q = 0``, ``h_k = L`` (the first term vanishes) whatever the loss. A loss
    of 0 with ``eps = 0`` and ``0 < q < 1`` (``F^(q-1)`` infinite), or one so large
    that ``F^q`` overflows, gives the client no finite weight.
    """
    base = loss + eps
    try:
        fq = base**q
        first = 0.0 if q == 0.0 else q * base ** (q - 1.0) * lipschitz**2 * sq_norm(delta)
    except (ZeroDivisionError, OverflowError):
        fq = first = math.inf
    h = first + lipschitz * fq
    if not (math.isfinite(fq) and math.isfinite(h)):
        raise AggregationError(
            f"qfedavg: client {cid} reported {loss_key}={loss}, which with q={q} and "
            f"eps={eps} gives it no finite weight (F^q or h_k overflows"
            + (", or F^(q-1) is infinite: set eps > 0)" if base == 0.0 else ")")
        )
    return fq, h


def _client_loss(event: Contribution, loss_key: str) -> float:
    """The pre-training loss a q-FedAvg client reported, checked."""
    raw = event.metrics.get(loss_key)
    if isinstance(raw, bool) or not isinstance(raw, int | float | np.number):
        raise AggregationError(
            f"qfedavg: client {event.cid} reported no numeric {loss_key!r} metric; "
            "q-FedAvg clients must report their loss at the received weights"
        )
    loss = float(raw)
    if not math.isfinite(loss) or loss < 0:
        raise AggregationError(f"qfedavg: client {event.cid} reported {loss_key}={loss}")
    return loss
