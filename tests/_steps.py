"""A client, a step and a compression scheme of one's own, for the tests of extensions."""

from __future__ import annotations

from typing import Any

import numpy as np

import covey
from covey.aggregate import Aggregate, AggregationError, Begin, Contribution, End, Event, Step


class Shift(covey.Client):
    """Sends a delta of ones times (cid + 1), over cid + 1 examples."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(
            delta={k: np.full_like(v, self.cid + 1.0) for k, v in weights.items()},
            num_examples=1 + self.cid,
        )


def refuse_client(cid: int) -> Step:
    """A step of one's own refusing ``cid``'s contributions, passing every other event on."""

    def update(state: Any, event: Event) -> tuple[Any, tuple[Event, ...]]:
        if isinstance(event, Contribution) and event.cid == cid:
            raise AggregationError(f"client {cid} is not welcome")
        return state, (event,)

    return Step(lambda params: None, update)


def reporting(info: Any, at: type) -> Step:
    """A step of one's own that sends on ``End`` or ``Aggregate`` with ``info`` as its info."""

    def update(state: Any, event: Any) -> Any:
        if at is End and isinstance(event, End):
            return state, (End(event.round, info=info),)
        if at is Aggregate and isinstance(event, Aggregate):
            out = Aggregate(event.round, 1, 1, delta=event.as_delta(state), info=info)
            return state, (out,)
        if isinstance(event, Begin):
            return dict(event.params), (event,)
        return state, (event,)

    return Step(lambda params: dict(params), update)


class Halving:
    """A compression scheme of one's own: float arrays sent as float16 halves (a toy)."""

    name = "halving"

    def encode(self, delta: Any, rng: Any) -> dict[str, dict[str, np.ndarray]]:
        return {n: {"h": (np.asarray(x) / 2).astype(np.float16).ravel()} for n, x in delta.items()}

    def decode(self, parts: Any, spec: Any) -> dict[str, np.ndarray]:
        return {
            n: (parts[n]["h"].astype(d) * 2).reshape(s)
            for n, s, d in zip(spec.names, spec.shapes, spec.dtypes, strict=True)
        }
