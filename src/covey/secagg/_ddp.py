"""Secure aggregation with differential privacy: central DP on the sum, or distributed DP.

Two compositions, both built from the privacy layer's pieces:

* **Central DP on the unmasked sum**: ``secure(central(strategy, clipping="client", ...))``.
  The clients clip their updates before masking; the server unmasks the sum of
  the clipped updates and the DP step of :func:`covey.privacy.central` noises it
  and accounts the round exactly as without secure aggregation.
* **Distributed DP**: ``secure(strategy, noise=Noise(..., clip=, delta=))``. Each
  client clips its update and adds integer noise before masking; the
  :class:`DistributedAccounting` hook adds each round to a ``dp-accounting``
  ledger as the Gaussian mechanism whose noise is that of the clients other
  than the one protected (the accounting of the distributed discrete Gaussian
  of Kairouz, Liu and Steinke; for Skellam an approximation, see
  ``docs/secagg.md``).

References:
    Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for
    Federated Learning with Secure Aggregation", ICML 2021. Agarwal, Kairouz and
    Liu, "The Skellam Mechanism for Differentially Private Federated Learning",
    NeurIPS 2021.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import dp_accounting as dpa
else:
    from covey.privacy._dpa import dpa

from covey.core._history import History, RoundRecord
from covey.core._hooks import stopped_unsaved, unsaved_releases
from covey.privacy import Ledger, PrivacyHook
from covey.privacy._accounting import statement
from covey.privacy._pld import check_accountable
from covey.secagg._dp import Noise
from covey.secagg._ring import scale
from covey.strategies._strategy import Strategy

logger = logging.getLogger("covey")

INFO_KEY = "distributed_dp"


def client_clip(l2_clip: float, size: int, clip_range: float, bits: int) -> float:
    """The L2 bound a client clips to so that its update stays within ``l2_clip`` once rounded.

    Rounding moves each value by less than one quantization unit, so the rounded
    update's norm exceeds the float one by less than ``sqrt(size)`` units.
    """
    bound = l2_clip - math.sqrt(size) / scale(clip_range, bits)
    if not bound > 0:
        raise ValueError(
            f"the DP clip {l2_clip:g} is below the rounding error of {size} values quantized "
            f"with {bits} bits over [-{clip_range:g}, {clip_range:g}]: raise bits or the clip"
        )
    return bound


def clip_update(
    deltas: list[np.ndarray], l2_clip: float, clip_range: float, bits: int
) -> list[np.ndarray]:
    """Scale the update down so that, rounded, its L2 norm is at most ``l2_clip``."""
    size = sum(d.size for d in deltas)
    bound = client_clip(l2_clip, size, clip_range, bits)
    norm = math.sqrt(sum(float(np.vdot(d, d)) for d in deltas))
    if not math.isfinite(norm) or norm <= bound:
        return deltas  # a non-finite value fails in quantize, loudly
    factor = bound / norm * (1.0 - 1e-12)  # float rounding must not step past the bound
    return [d * factor for d in deltas]


class DistributedAccounting:
    """Accounts distributed DP noise round by round (a :class:`covey.core.RunHook`).

    A round whose sum holds the noise of ``k`` clients is one Gaussian mechanism
    of noise multiplier ``sigma * sqrt(k - 1) / sensitivity``: only the noise of
    the ``k - 1`` other clients is counted when protecting one of them, which is
    conservative under the zero-out relation it is stated for (the protected
    client takes part with its update replaced by zeros; see ``docs/secagg.md``).
    No sampling amplification is claimed. Before a round, the run stops if even
    the fewest clients a round may complete with (``min_clients``) would take
    epsilon past the target.

    Args:
        noise: The clients' noise, with its ``clip`` and ``delta``.
        sensitivity: One client's L2 bound in quantized units.
        min_clients: The fewest clients a completed round has.
    """

    def __init__(self, noise: Noise, sensitivity: float, min_clients: int) -> None:
        self.noise = noise
        self.sensitivity = sensitivity
        self.min_clients = min_clients
        self.ledger = Ledger(accountant=noise.accountant)
        self.printed: str | None = None

    @property
    def delta(self) -> float:
        """The delta of the guarantee."""
        if self.noise.delta is None:  # the constructor's caller checked it
            raise RuntimeError("distributed DP accounting without a delta")
        return self.noise.delta

    def event(self, clients: int) -> dpa.DpEvent:
        """The round's event when the sum holds the noise of ``clients`` clients."""
        return dpa.GaussianDpEvent(
            self.noise.sigma * math.sqrt(max(clients - 1, 0)) / self.sensitivity
        )

    def start(self, state: Any, seed: int | None, history: History) -> Any:
        """Restore the ledger of a resumed run (empty for a new one).

        Raises:
            ValueError: The run released rounds without this accounting (it was
                started, or resumed, without distributed DP): no guarantee covers them.
        """
        bare = [
            r.round
            for r in history.rounds
            if r.round >= 1 and r.aggregated and INFO_KEY not in r.aggregate_info
        ]
        if bare:
            shown = ", ".join(map(str, bare[:10])) + (" ..." if len(bare) > 10 else "")
            raise ValueError(
                f"the run being resumed released rounds {shown} without distributed DP "
                "noise, or with noise not accounted (no clip=): a privacy statement of this "
                "run would not cover them. Start a new run with secure(..., noise=...) from "
                "its first round (its initial weights may be this run's model)"
            )
        last = next(
            (
                r.aggregate_info[INFO_KEY]
                for r in reversed(history.rounds)
                if INFO_KEY in r.aggregate_info
            ),
            None,
        )
        entries = () if last is None else Ledger.from_json(last["ledger"]).entries
        self.ledger = Ledger(entries, self.noise.accountant)  # what was spent stays spent
        unsaved = unsaved_releases(history)
        for _ in range(unsaved):
            # The server died, perhaps after unmasking a round it had not saved: that round
            # is done again with the clients' fresh noise, a second release. Charged as one
            # with the fewest clients a round has (the least noise, the most epsilon).
            self.ledger = self.ledger.add(self.event(self.min_clients))
        if unsaved:
            logger.warning(
                "privacy: %s, perhaps after unmasking it: that round, done again, is charged "
                "twice (epsilon %.4g)",
                stopped_unsaved(history),
                self.ledger.epsilon(self.delta),
            )
        return state

    def before_round(self, round: int, state: Any) -> str | None:
        """Stop if the round, with the fewest clients it may have, would pass the target."""
        target = self.noise.target_epsilon
        if target is None:
            return None
        after = self.ledger.add(self.event(self.min_clients)).epsilon(self.delta)
        if after <= target:
            return None
        return (
            f"privacy budget: round {round} would spend epsilon {after:.4g} > target_epsilon "
            f"{target:g} (delta={self.delta:g}); spent so far {self.ledger.epsilon(self.delta):.4g}"
        )

    def after_round(self, record: RoundRecord, state: Any) -> None:
        """Account the round with the noise of the clients in its sum and record the budget."""
        clients = len(record.fit_participants)
        self.ledger = self.ledger.add(self.event(clients))
        eps = self.ledger.epsilon(self.delta)
        record.aggregate_info[INFO_KEY] = {
            "mechanism": self.noise.mechanism,
            "clients": clients,
            "noise_multiplier": self.noise.sigma
            * math.sqrt(max(clients - 1, 0))
            / self.sensitivity,
            "ledger": self.ledger.to_json(),
        }
        record.privacy = {"epsilon": eps, "delta": self.delta}

    def finish(self, history: History, state: Any) -> None:
        """Print the privacy statement."""
        name = "Skellam" if self.noise.mechanism == "skellam" else "discrete Gaussian"
        self.printed = statement(
            mechanism=f"distributed DP under secure aggregation ({name}, sigma="
            f"{self.noise.sigma:g} per client, clip={self.noise.clip:g})",
            unit="one client's update",
            relation="zero-out: replaced by zeros",
            sampling="none claimed",
            epsilon=self.ledger.epsilon(self.delta),
            delta=self.delta,
            accountant=self.noise.accountant,
            rounds=self.ledger.rounds,
            extra=[f"stopped:     {history.stopped_reason}"] if history.stopped_reason else [],
        )
        print(self.printed)


class DPPlan(NamedTuple):
    """How secure aggregation composes with the strategy's DP, if any."""

    l2_clip: float | None = None  # each client clips its rounded update to this L2 norm
    summed: bool = False  # the DP step gets the sum (central DP)
    hooks: tuple[Any, ...] = ()  # run hooks to add (distributed DP accounting)


def dp_plan(strategy: Strategy, noise: Noise | None, clip_range: float, bits: int) -> DPPlan:
    """Check that the strategy's DP composes with secure aggregation and say how.

    Args:
        strategy: The strategy being secured.
        noise: The distributed noise, if any.
        clip_range: The range values are quantized over.
        bits: The quantization's bits (with ``clip_range``, the quantized units).

    Raises:
        ValueError: For server-side clipping, adaptive clipping, DP-FTRL, central
            and distributed DP together, or distributed noise so small next to one
            client's quantized sensitivity that the PLD accountant cannot account it.
    """
    unit_scale = scale(clip_range, bits)  # validates bits
    central = next((h for h in strategy.hooks if isinstance(h, PrivacyHook)), None)
    if central is not None:
        mech = central.mech
        if mech.tree_rounds is not None:
            raise ValueError(
                "DP-FTRL needs each client's update (to clip it and to check it takes part "
                "once per tree), which secure aggregation hides from the server"
            )
        if mech.clipping != "client":
            raise ValueError(
                "under secure aggregation the server never sees an individual update, so it "
                "cannot clip one: use covey.privacy.central(..., clipping='client')"
            )
        if noise is not None:
            raise ValueError(
                "choose central DP (the server noises the sum) or distributed DP (noise=, the "
                "clients noise their inputs), not both"
            )
        return DPPlan(l2_clip=mech.clip, summed=True)
    if noise is None or noise.clip is None:
        return DPPlan()
    if strategy.min_fit_clients < 2:
        raise ValueError(
            "distributed DP counts the noise of the other clients in a round: it needs "
            f"min_fit_clients >= 2, got {strategy.min_fit_clients}"
        )
    hook = DistributedAccounting(noise, noise.clip * unit_scale, strategy.min_fit_clients)
    # The fewest clients a round completes with bring the least noise: refused now what the
    # accountant would refuse only when round 1 is accounted, after its clients trained.
    check_accountable(
        hook.event(strategy.min_fit_clients),
        noise.accountant,
        f"distributed DP with sigma={noise.sigma:g} quantized units and clip={noise.clip:g} "
        f"at {bits} bits",
    )
    return DPPlan(l2_clip=noise.clip, hooks=(hook,))
