"""The DP aggregation step: clip each update, sum, add noise, divide by the expected count.

:func:`dp_step` wraps a strategy's aggregator ``inner``. It takes every
contribution of a round itself, so no reducer ever sees an individual update:
each update is clipped to the L2 norm ``clip`` (or checked, when clients clip),
the clipped updates are summed in float64, Gaussian noise is added to the sum,
and the noisy sum divided by the expected number of clients is handed to
``inner`` as the round's one contribution. Whatever ``inner`` does after its
reducer (FedAdam's server optimizer, momentum) then runs on the private mean.

The noise per round is independent (DP-FedAvg) or the increment of a
tree-aggregation prefix sum (DP-FTRL); adaptive clipping moves ``clip`` after
every round from a noisy count of the updates that were not clipped.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

if TYPE_CHECKING:
    import dp_accounting as dpa
else:
    from covey.privacy._dpa import dpa

from covey.aggregate import (
    Aggregate,
    AggregationError,
    Begin,
    Contribution,
    Dropped,
    End,
    Event,
    Step,
)
from covey.aggregate._base import State, min_contributions
from covey.core._weights import Array, Weights
from covey.privacy import _noise
from covey.privacy._accounting import Accountant, Ledger, round_event
from covey.privacy._clipping import AdaptiveClipping, Clipping

_T = TypeVar("_T")

logger = logging.getLogger("covey")


@dataclass
class Shared:
    """What the selector, the step and the run hook share within one server.

    ``seed`` is the noise seed of the run (None: fresh CSPRNG seeds), set by the
    hook when the run starts; ``population`` is how many clients the Poisson
    selector sampled from in each round; ``warned_delta`` whether the run was
    told that its delta is not below one over that number.
    """

    seed: int | None = None
    started: bool = False
    population: dict[int, int] = field(default_factory=dict)
    warned_delta: bool = False
    thread: int | None = None  # the thread of the run that started last
    running: set[int] = field(default_factory=set)  # the threads with a run going on

    def claim(self) -> None:
        """Make the run starting in this thread the one this strategy serves."""
        self.thread = threading.get_ident()
        self.running.add(self.thread)

    def release(self) -> None:
        """Note that the run of this thread has ended."""
        self.running.discard(threading.get_ident())

    def check(self) -> None:
        """Refuse to go on in a run that another run of this strategy has since replaced.

        The seed and the sampled populations are the strategy's, one run's at a
        time: a second run started meanwhile in another thread (a notebook running
        two simulations at once) has taken them over, and this run's noise and
        sampling would be drawn from its seed.
        """
        me = threading.get_ident()
        if self.thread is not None and self.thread != me and me in self.running:
            raise RuntimeError(
                "this differential-privacy strategy was started by another run in another "
                "thread while this run was going on; its noise seed and sampling belong to "
                "one run at a time: build a strategy of its own for each run that runs at "
                "the same time"
            )


@dataclass(frozen=True)
class Mechanism:
    """The parameters of a DP aggregation, fixed for the whole run."""

    name: str
    noise_multiplier: float
    clip: float
    delta: float
    clipping: Clipping = "server"
    sampling_rate: float | None = None  # None: no sampling (DP-FTRL)
    expected_clients: float | None = None
    adaptive: AdaptiveClipping | None = None
    tree_rounds: int | None = None  # DP-FTRL: rounds per tree (restarts after)
    accountant: Accountant = "rdp"
    target_epsilon: float | None = None

    def ledger(self, rounds: int) -> Ledger:
        """The ledger after ``rounds`` rounds of this mechanism."""
        ledger = Ledger(accountant=self.accountant)
        if rounds == 0:
            return ledger
        if self.tree_rounds is None:
            rate = _present(self.sampling_rate, "the sampling rate")
            return ledger.add(round_event(self.noise_multiplier, rate), rounds)
        full, part = divmod(rounds, self.tree_rounds)
        tree = dpa.SingleEpochTreeAggregationDpEvent
        if full:
            ledger = ledger.add(tree(self.noise_multiplier, self.tree_rounds), full)
        if part:
            ledger = ledger.add(tree(self.noise_multiplier, part))
        return ledger


class DPState(NamedTuple):
    """The DP step's state: the wrapped step's, the rounds accounted, the clip, the round's sum."""

    inner: Any
    rounds: int = 0
    clip: float = 0.0
    params: Weights | None = None
    acc: dict[str, Array] | None = None
    scratch: dict[str, Array] | None = None  # reused within a round for scaled updates
    contributed: int = 0
    unclipped: int = 0
    clipped: tuple[int, ...] = ()
    nonfinite: tuple[int, ...] = ()
    seen: frozenset[int] = frozenset()  # DP-FTRL: who contributed to the current tree
    tree_seed: int | None = None


@dataclass(frozen=True, slots=True)
class ClippedSum(Contribution):
    """The sum of ``clients`` updates, each clipped to the round's clip on its client.

    A fit exchange that only ever learns the sum (secure aggregation) hands the
    DP step this one contribution in place of the individual updates; the step
    adds it to the round's sum as it is (it cannot clip what it cannot see), so
    it needs ``clipping="client"``. ``delta`` holds the sum.

    Args:
        clients: How many updates ``delta`` sums: each counts as one contribution,
            unclipped, toward the round's count.

    Attributes:
        cid: Not a client's: -1 (secure aggregation's sum) or any id; the step ignores it.
        num_examples: The examples of the ``clients`` summed, in total (the step, which
            weighs every client once, does not read it).
        weights: Unused: a sum has no full weights (leave None).
        delta: The sum of the ``clients`` client-clipped updates (local minus global),
            added to the round's sum as it is; the step refuses the sum without it.
        metrics: Metrics of the sum (the step does not read them).
        staleness: 0: a sum belongs to a synchronous round.
        extras: Unused by the DP step (leave empty).
    """

    clients: int = 0


def _present(value: _T | None, what: str) -> _T:
    """``value``, or a RuntimeError naming what is missing (a broken invariant)."""
    if value is None:
        raise RuntimeError(f"DP step: {what} is missing (was the round begun?)")
    return value


@dataclass(frozen=True)
class _DPAggregation:
    """The DP step's functions; it holds only configuration, never a round's state."""

    inner: Step
    mech: Mechanism
    shared: Shared

    def init(self, params: Weights) -> State:
        _noise.check_float(params, self.mech.name)
        inner = self.inner.init(params)
        self._probe(inner, params)
        return DPState(inner, clip=self.mech.clip)

    def _probe(self, inner: State, params: Weights) -> None:
        """Refuse, before any client trains, an aggregator that cannot take one private mean.

        Each round the inner step gets a single contribution (the noisy mean, with no
        metrics): Krum needs several, q-FedAvg each client's loss. Steps are pure, so a
        dry round on zeros tells, and its state is dropped.
        """
        zeros = {name: np.zeros(np.shape(v), dtype=np.float64) for name, v in params.items()}
        try:
            state, _ = self.inner.update(inner, Begin(0, params))
            state, _ = self.inner.update(state, Contribution(0, 1, delta=zeros))
            self.inner.update(state, End(0, {}))
        except AggregationError as exc:
            raise ValueError(
                f"{self.mech.name}: the strategy's aggregation cannot run on the one private "
                f"mean it receives each round ({exc}); use a mean-based strategy such as "
                "FedAvg, FedAdam or FedMedian"
            ) from None

    def _add_sum(self, state: DPState, event: ClippedSum) -> DPState:
        if self.mech.clipping != "client" or self.mech.tree_rounds is not None:
            raise ValueError(
                f"{self.mech.name} got a sum of updates it cannot clip: summed updates need "
                "DP-FedAvg with clipping='client'"
            )
        acc = _present(state.acc, "the round's sum")
        for name, value in _present(event.delta, "the summed update").items():
            np.add(acc[name], value, out=acc[name])
        n = state.contributed + event.clients
        return state._replace(contributed=n, unclipped=state.unclipped + event.clients)

    def _contribute(self, state: DPState, event: Contribution) -> DPState:
        if isinstance(event, ClippedSum):
            return self._add_sum(state, event)
        params = _present(state.params, "the round's weights")
        acc = _present(state.acc, "the round's sum")
        if self.mech.tree_rounds is not None and event.cid in state.seen:
            return state._replace(clipped=(*state.clipped, -1 - event.cid))
        delta = event.as_delta(params)
        norm = _noise.norm(delta)
        if not math.isfinite(norm):  # NaN or Inf: clipping cannot bound it, so drop it
            return state._replace(nonfinite=(*state.nonfinite, event.cid))
        scale = 1.0 if norm <= state.clip else state.clip / norm
        for name, value in delta.items():
            if scale == 1.0:
                np.add(acc[name], value, out=acc[name])
            else:
                tmp = _present(state.scratch, "the round's buffer")[name]
                np.multiply(value, scale, out=tmp)
                np.add(acc[name], tmp, out=acc[name])
        return state._replace(
            contributed=state.contributed + 1,
            unclipped=state.unclipped + (norm <= state.clip),
            # Rounding can leave a client-clipped update an ulp over: scaled, not noted.
            clipped=(
                state.clipped if norm <= state.clip * (1 + 1e-9) else (*state.clipped, event.cid)
            ),
            seen=state.seen | {event.cid} if self.mech.tree_rounds is not None else state.seen,
        )

    def _expected(self, rnd: int) -> float:
        if self.mech.expected_clients is not None:
            return self.mech.expected_clients
        rate = self.mech.sampling_rate
        if rate is None:  # DP-FTRL: each client once per tree of tree_rounds rounds
            rate = 1.0 / _present(self.mech.tree_rounds, "tree_rounds")
        population = self.shared.population.get(rnd)
        if population is None:
            raise RuntimeError(
                f"{self.mech.name}: round {rnd} was not sampled by the selector it installs; "
                "keep it, or give expected_clients"
            )
        return max(rate * population, 1.0)

    def _check_delta(self, rnd: int) -> None:
        """Warn once a run when delta is not below 1 / the clients sampled from.

        A delta of 1/N allows a mechanism that publishes one of N clients' data
        outright: the guarantee says little, whatever its epsilon.
        """
        population = self.shared.population.get(rnd)
        if self.shared.warned_delta or not population or self.mech.delta * population < 1.0:
            return
        self.shared.warned_delta = True
        logger.warning(
            "%s: delta=%g is not below 1 / %d, one over the clients sampled from in round %d: "
            "the (epsilon, delta) guarantee allows one client's data to be published outright "
            "with probability delta; give a delta well below 1 / number of clients",
            self.mech.name,
            self.mech.delta,
            population,
            rnd,
        )

    def _noise(self, state: DPState, rnd: int, std: float) -> dict[str, Array]:
        acc = _present(state.acc, "the round's sum")
        if self.mech.tree_rounds is None:
            rng = _noise.generator(self.shared.seed, _noise.UPDATE_NOISE, rnd)
            return _noise.gaussian(rng, acc, std)
        seed = _present(state.tree_seed, "the tree's noise seed")
        tree, step = divmod(state.rounds, self.mech.tree_rounds)
        now = _present(_noise.tree_noise(seed, tree, step + 1, acc, std), "the tree noise")
        before = _noise.tree_noise(seed, tree, step, acc, std)
        if before is not None:
            for name, value in before.items():
                now[name] -= value
        return now

    def _end(self, state: DPState, event: End) -> tuple[State, tuple[Event, ...]]:
        params = _present(state.params, "the round's weights")
        acc = _present(state.acc, "the round's sum")
        self.shared.check()
        m = self._expected(event.round)
        z, clip = self.mech.noise_multiplier, state.clip
        new_clip, noisy_fraction = clip, None
        if self.mech.adaptive is not None:
            z, sigma_b = self.mech.adaptive.split(self.mech.noise_multiplier, m)
            rng = _noise.generator(self.shared.seed, _noise.COUNT_NOISE, event.round)
            shifted = state.unclipped - 0.5 * state.contributed + float(rng.normal(0.0, sigma_b))
            noisy_fraction = shifted / m + 0.5
            new_clip = self.mech.adaptive.next_clip(clip, noisy_fraction)
        std = z * clip
        mean: dict[str, Array] = {}
        for name, noise in self._noise(state, event.round, std).items():
            np.add(noise, acc[name], out=noise)  # in place: no model-sized temporaries
            np.multiply(noise, 1.0 / m, out=noise)
            mean[name] = noise.astype(params[name].dtype, copy=False)
        rounds = state.rounds + 1
        info: dict[str, Any] = {
            "mechanism": self.mech.name,
            "clip": clip,
            "noise_std": std,
            "expected_clients": m,
            "clients": state.contributed,
            "clipped": [c for c in state.clipped if c >= 0],
            "nonfinite": list(state.nonfinite),
            "rounds": rounds,
            "ledger": self.mech.ledger(rounds).to_json(),
        }
        if self.mech.tree_rounds is not None:
            info["repeated"] = [-1 - c for c in state.clipped if c < 0]
        if noisy_fraction is not None:
            info["unclipped_fraction"] = noisy_fraction
            info["next_clip"] = new_clip
        inner_state, _ = self.inner.update(state.inner, Contribution(0, 1, delta=mean))
        inner_state, out = self.inner.update(inner_state, End(event.round, dict(event.info)))
        events = tuple(
            Aggregate(
                e.round,
                state.contributed,
                e.num_examples,
                e.weights,
                e.delta,
                {**e.info, "dp": info},
            )
            if isinstance(e, Aggregate)
            else e
            for e in out
        )
        seen = state.seen
        if self.mech.tree_rounds is not None and rounds % self.mech.tree_rounds == 0:
            seen = frozenset()  # a new tree: each client may contribute once more
        self.shared.population.pop(event.round, None)  # only the round in flight is needed
        new = DPState(inner_state, rounds, new_clip, seen=seen, tree_seed=state.tree_seed)
        return new, events

    def update(self, state: DPState, event: Event) -> tuple[State, tuple[Event, ...]]:
        if isinstance(event, Contribution):
            if state.acc is None:
                raise RuntimeError(f"{self.mech.name} got a contribution before Begin")
            after = self._contribute(state, event)
            if after.nonfinite != state.nonfinite:  # dropped: its fit counts as failed
                why = "its update's norm is not finite, so no clip can bound it (central DP)"
                return after, (Dropped(event.cid, why),)
            return after, ()
        if isinstance(event, Begin):
            self._check_delta(event.round)
            if self.mech.adaptive is not None:  # refuse now, not after the clients trained
                self.mech.adaptive.split(self.mech.noise_multiplier, self._expected(event.round))
            inner_state, out = self.inner.update(state.inner, event)
            acc = {
                name: np.zeros(np.shape(v), dtype=np.float64) for name, v in event.params.items()
            }
            fresh = state._replace(
                inner=inner_state,
                params=event.params,
                acc=acc,
                scratch={name: np.empty_like(a) for name, a in acc.items()},
                contributed=0,
                unclipped=0,
                clipped=(),
                nonfinite=(),
            )
            return fresh, out
        if isinstance(event, End):
            return self._end(state, event)
        inner_state, out = self.inner.update(state.inner, event)
        return state._replace(inner=inner_state), out


def dp_step(inner: Step, mech: Mechanism, shared: Shared) -> Step:
    """Wrap ``inner`` so that it only ever sees the clipped, noised mean of a round.

    Args:
        inner: The strategy's aggregator (its reducer sees one contribution a round).
        mech: The mechanism's parameters.
        shared: The run's noise seed and sampled population (see :class:`Shared`).

    Returns:
        A step whose state is a :class:`DPState`. It states no need of its own (see
        :func:`covey.aggregate._base.requiring`): the DP mean is made from any count.

    Raises:
        ValueError: if ``inner`` states that it needs several contributions a round
            (Krum, Bulyan): it gets one, so it could never run. A rule that says
            nothing is tried on one mean when the run starts (``init``).
    """
    _noise.refuse_loss_weighted(inner, mech.name)
    need = min_contributions(inner)
    if need is not None and need[0] > 1:
        raise ValueError(
            f"{mech.name}: the strategy's aggregation cannot run on the one private mean it "
            f"receives each round ({need[1]} clients per round); use a mean-based strategy "
            "such as FedAvg, FedAdam or FedMedian"
        )
    agg = _DPAggregation(inner, mech, shared)
    return Step(agg.init, agg.update)
