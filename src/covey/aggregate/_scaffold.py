"""SCAFFOLD's server side: the global control variate, broadcast and updated every round."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from covey.aggregate._base import (
    STEPS,
    AggregationError,
    Begin,
    Broadcast,
    Contribution,
    Dropped,
    End,
    Event,
    State,
    Step,
    for_federation,
    innermost,
)
from covey.aggregate._chainrun import withdraws
from covey.aggregate._flat import check_count
from covey.aggregate._order import CLIENT, described, of_kind
from covey.core._weights import Array, Weights, freeze

SERVER_CONTROL = "scaffold_c"
"""The name under which the server control variate ``c`` reaches clients (``config["extras"]``)."""
CLIENT_DELTA = "scaffold_delta_c"
"""The name of the extra in which a client sends ``c_i+ - c_i``."""
APPLIED_ROUND = "scaffold_applied_round"
"""The fit config entry that tells a client the last round whose applied aggregate took
its ``Delta c_i`` (0: none yet), so that it keeps a change of ``c_i`` only once ``c`` has it."""
_CONTROL = "_covey_scaffold_control"


class _ScaffoldState(NamedTuple):
    c: dict[str, Array]
    acc: dict[str, Array] | None = None
    clients: int = 0
    missing: tuple[int, ...] = ()
    # The sum's other buffer: the next change is added into it (see _fold_control).
    spare: dict[str, Array] | None = None


@described
def scaffold(num_clients: int) -> Step:
    """SCAFFOLD's server control variate ``c``: sent to clients, updated from their ``Delta c_i``.

    At ``Begin`` it broadcasts ``c`` (``config["extras"]["scaffold_c"]`` on the
    client). Each contribution must carry ``extras["scaffold_delta_c"]``, the
    change ``c_i+ - c_i`` of the client's own control variate (one that does not
    is left out and listed in ``info["scaffold_missing"]``; if none does, the
    round fails with an AggregationError); it passes on unchanged to the reducer
    that follows, which averages the model updates
    (``chain(scaffold(N), mean(), server_sgd(lr=eta_g))``). At ``End``,
    ``c = c + (1/N) sum_{i in S} Delta c_i``, that is ``|S|/N`` times the mean;
    more than ``N`` contributions in a round show that ``N`` is not the federation's
    size, and the round fails with an AggregationError saying so (a simulation of
    another number of clients is refused before it starts).

    Args:
        num_clients: ``N``, the number of clients in the federation.

    Returns:
        A per-client step that keeps ``c`` in its state; ``info["scaffold_clients"]``
        counts the control-variate updates folded in. A new ``c`` past its dtype's
        range (changes of 1e308) is not taken: ``c`` stays as it was and
        ``info["scaffold_overflow"]`` names its arrays (else every client would
        fail from the next round on, refusing a non-finite ``c``).

    References:
        Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for
        Federated Learning", ICML 2020 (Algorithm 1).
    """
    total = check_count(num_clients, "scaffold num_clients", minimum=1)

    def init(params: Weights) -> State:
        return _ScaffoldState(freeze({k: np.zeros(v.shape, v.dtype) for k, v in params.items()}))

    def update(state: _ScaffoldState, event: Event) -> tuple[State, tuple[Event, ...]]:
        if isinstance(event, Contribution):
            return _fold_control(state, event)
        if isinstance(event, Begin):
            fresh = _ScaffoldState(state.c)
            return fresh, (event, Broadcast(event.round, {SERVER_CONTROL: state.c}))
        if isinstance(event, End):
            info = {**event.info, "scaffold_clients": state.clients}
            if state.missing:
                info["scaffold_missing"] = list(state.missing)
                if state.acc is None:
                    raise AggregationError(
                        f"scaffold: no client sent the {CLIENT_DELTA!r} extra (clients "
                        f"{list(state.missing)[:5]}...); SCAFFOLD clients must report their "
                        "control-variate change with covey.clients.ControlVariate"
                    )
            if state.acc is None:
                return _ScaffoldState(state.c), (End(event.round, info, event.step),)
            if state.clients > total:
                raise AggregationError(
                    f"scaffold: {state.clients} clients sent a control-variate change but "
                    f"num_clients={total}; num_clients must be the number of clients in the "
                    "federation (c moves by 1/num_clients of each change)"
                )
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is kept out below
                c = {
                    k: (v + state.acc[k] / total).astype(v.dtype) if v.dtype.kind == "f" else v
                    for k, v in state.c.items()
                }
            overflow = [k for k, v in c.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
            if overflow:  # c past its dtype's range would fail every client from now on
                info["scaffold_overflow"] = overflow
                return _ScaffoldState(state.c), (End(event.round, info, event.step),)
            return _ScaffoldState(freeze(c)), (End(event.round, info, event.step),)
        return state, (event,)

    step = for_federation(of_kind(Step(init, update), CLIENT, "scaffold()"), total)
    setattr(step.update, _CONTROL, True)
    # A contribution a later step drops leaves no change in c: its client drops it too.
    return withdraws(step)


def tracks_control(step: Step) -> bool:
    """Whether ``step`` is or holds :func:`scaffold` (its clients are told what ``c`` took)."""
    update = innermost(step)
    if getattr(update, _CONTROL, False):
        return True
    return any(tracks_control(inner) for inner in getattr(update, STEPS, ()))


def _fold_control(state: _ScaffoldState, event: Contribution) -> tuple[State, tuple[Event, ...]]:
    """Add a client's control-variate change to the running sum (or note it missing).

    The new sum goes into the state's spare buffer, and the two swap places: the
    sum of the state given stays as it was. A step after this one in the chain
    may refuse the contribution (an AggregationError), and the round loop then
    goes on from the state it gave, whose sum must not hold the refused change;
    once the loop goes on from the new state instead, the old sum is not needed
    again and its buffer takes the next change. The same additions in the same
    order as in one buffer (the same floats), with no copy per contribution: the
    cost is one more float64 buffer of ``c``'s float arrays, from a round's second change.
    """
    dc = event.extras.get(CLIENT_DELTA)
    if dc is None:  # not a SCAFFOLD client: its update is left out
        why = f"it sent no {CLIENT_DELTA!r} extra, its control-variate change (scaffold())"
        return state._replace(missing=(*state.missing, event.cid)), (Dropped(event.cid, why),)
    old, spare = state.acc, state.spare
    if old is None:  # the round's first change: a fresh sum the given state does not hold
        acc = {k: np.zeros(v.shape, np.float64) for k, v in state.c.items()}
        with np.errstate(over="ignore", invalid="ignore"):  # a sum past float64: see End
            for k, a in acc.items():
                if state.c[k].dtype.kind == "f":
                    a += dc[k]
        return state._replace(acc=acc, clients=state.clients + 1), (event,)
    if spare is None:
        spare = {k: np.empty_like(a) for k, a in old.items() if state.c[k].dtype.kind == "f"}
    acc = dict(old)  # the other arrays stay zeros, never written
    with np.errstate(over="ignore", invalid="ignore"):  # a sum past float64: see End
        for k, a in spare.items():
            acc[k] = np.add(old[k], dc[k], out=a)
    spare = {k: old[k] for k in spare}
    return state._replace(acc=acc, clients=state.clients + 1, spare=spare), (event,)
