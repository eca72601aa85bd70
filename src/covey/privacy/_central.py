"""Central DP: ``covey.privacy.central(strategy, ...)`` returns the DP-FedAvg version of a strategy.

Clients are sampled by Poisson sampling, each update is clipped, the sum gets
Gaussian noise, and the budget is accounted by ``dp-accounting`` round by round
(:class:`PrivacyHook`), stopping the run before a round would exceed
``target_epsilon``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from covey.core._history import History, RoundRecord
from covey.core._hooks import stopped_unsaved, unsaved_releases
from covey.core._messages import finite, shown
from covey.privacy import _noise
from covey.privacy._accounting import (
    Accountant,
    Ledger,
    check_noise_multiplier,
    check_target_epsilon,
    round_event,
    statement,
)
from covey.privacy._clipping import AdaptiveClipping, Clipping
from covey.privacy._pld import check_accountable
from covey.privacy._sampling import poisson_selector, population_check
from covey.privacy._step import DPState, Mechanism, Shared, dp_step
from covey.strategies._names import FLOWER_DP_OPTIONS, a_strategy, flower_keywords
from covey.strategies._strategy import Strategy
from covey.strategies._subclass import replace_strategy

logger = logging.getLogger("covey")

SEEDED_DEPLOYED = (
    "noise_seed is set in a deployed run: its noise and sampling are drawn from that seed, "
    "so whoever knows or guesses it can compute the noise and subtract it from the models "
    "the run releases, which then protect no one; noise_seed is for tests and for "
    "reproducing simulations: leave it out (None) for fresh noise from the operating "
    "system's CSPRNG"
)


class PrivacyHook:
    """Accounts a DP strategy's budget in the round loop (a :class:`covey.core.RunHook`).

    At the start it fixes the noise seed (explicit, else the run's seed in
    simulation, else fresh CSPRNG seeds) and, on resume, restores the rounds
    accounted and the clip from the history; before each round it stops the run
    if the round would take epsilon past ``target_epsilon``; after each round it
    records ``{"epsilon", "delta"}``; at the end it prints the privacy statement.

    Args:
        mech: The mechanism the strategy's DP step runs: its noise, clip, delta,
            sampling, accountant and ``target_epsilon`` fix what each round costs.
        shared: The state the hook shares with the strategy's DP step and selector;
            the hook sets its noise seed when a run starts.
        noise_seed: Seeds the noise and the sampling; None: the run's seed in
            simulation, fresh CSPRNG seeds when deployed. Set, a round a resumed run
            computes again repeats its noise (a warning says so).
        unit: What the guarantee protects, as the privacy statement names it
            (``"one client (all of its data)"``).
        sampling: How clients were sampled, as the statement names it
            (``"Poisson, q=0.1"``).
        relation: The neighbouring datasets the guarantee is stated for: the
            relation the mechanism is accounted under.
    """

    def __init__(
        self,
        mech: Mechanism,
        shared: Shared,
        noise_seed: int | None,
        unit: str,
        sampling: str,
        relation: str = "add or remove one",
    ) -> None:
        self.mech = mech
        self.shared = shared
        self.noise_seed = noise_seed
        self.unit = unit
        self.sampling = sampling
        self.relation = relation
        self._cache: dict[int, float] = {}
        self.printed: str | None = None

    def epsilon(self, rounds: int) -> float:
        """The epsilon spent after ``rounds`` rounds (cached).

        Args:
            rounds: The number of rounds run (the epsilon is at the mechanism's ``delta``).
        """
        if rounds not in self._cache:
            self._cache[rounds] = self.mech.ledger(rounds).epsilon(self.mech.delta)
        return self._cache[rounds]

    def start(self, state: Any, seed: int | None, history: History) -> Any:
        """Fix the noise seed; on resume restore the accounted rounds and the clip.

        Args:
            state: The aggregation chain's state (fresh, or restored on resume).
            seed: The run's seed in simulation; None in a deployed run.
            history: The history so far (empty unless the run resumes).
        """
        self._refuse_repeated_noise(seed, history)
        if seed is None and self.noise_seed is not None:
            logger.warning("privacy: %s", SEEDED_DEPLOYED)
        self.shared.seed = self.noise_seed if self.noise_seed is not None else seed
        self.shared.started = True
        self.shared.claim()
        dp = _dp_state(state)
        tree_seed = dp.tree_seed
        if self.mech.tree_rounds is not None and tree_seed is None:
            tree_seed = _noise.new_seed() if self.shared.seed is None else self.shared.seed
        last = next(
            (r.aggregate_info["dp"] for r in reversed(history.rounds) if "dp" in r.aggregate_info),
            None,
        )
        rounds, clip = 0, dp.clip
        if last is not None:
            rounds = int(last["rounds"])
            if Ledger.from_json(last["ledger"]) != (ours := self.mech.ledger(rounds)):
                raise ValueError(
                    "the run being resumed was accounted with other privacy parameters: "
                    f"its ledger is {last['ledger']}, and this strategy would have accounted "
                    f"its {rounds} rounds as {ours.to_json()}: resume it with the privacy "
                    "parameters it was started with (its history's config names them)"
                )
            clip = float(last.get("next_clip", last["clip"]))
            logger.info("privacy: resuming after %d accounted rounds", rounds)
        if unsaved := self._unsaved_releases(history):
            rounds += unsaved
            logger.warning(
                "privacy: %s, perhaps after sending its model: that round, done again with new "
                "noise, is charged twice%s (epsilon %.4g after %d accounted rounds)",
                stopped_unsaved(history),
                "" if unsaved == 1 else f" for each of the {unsaved} servers that stopped so",
                self.epsilon(rounds),
                rounds,
            )
        if last is None and rounds == 0:
            return dp._replace(tree_seed=tree_seed)
        return dp._replace(rounds=rounds, clip=clip, tree_seed=tree_seed)

    def _refuse_repeated_noise(self, seed: int | None, history: History) -> None:
        """Refuse (DP-FTRL) or warn (``noise_seed``) when a redone round repeats its noise.

        A server that died may have sent round r's model before saving the round;
        the resumed run computes round r again. With DP-FTRL's tree noise or a
        ``noise_seed`` it adds the same noise to updates the clients computed
        again: unless they are the same to the bit, the two models differ by the
        clipped updates alone, noise-free. A ``noise_seed`` is the user's choice
        of reproducible runs (deterministic clients): a warning says the condition.
        """
        if seed is not None or not unsaved_releases(history):
            return
        said = (
            f"{stopped_unsaved(history)}, perhaps after sending its model; resumed, the run "
            "computes that round again and, "
            "with {}, adds the same noise to the clients' new updates: unless they are the "
            "same to the bit, two models of the round differ by the clipped updates alone, "
            "without noise"
        )
        if self.noise_seed is not None:
            logger.warning("privacy: %s", said.format("noise_seed"))
        elif self.mech.tree_rounds is not None:
            raise ValueError(
                said.format("DP-FTRL's tree noise")
                + ". It is not resumed: start a new run from its last saved model (counting "
                "the privacy this run spent, in its history, toward your total); a run "
                "whose clients send the same updates again can be resumed if it was started "
                "with dp_ftrl(noise_seed=...)"
            )

    def _unsaved_releases(self, history: History) -> int:
        """How many rounds a resumed run may have released that its ledger does not count.

        A deployed server sends round r's model (with round r + 1's tasks or round
        r's evaluation) before round r's checkpoint is committed. One that died
        there is resumed from round r - 1 and computes round r again with fresh
        noise: a second release, one for each server that died so since the last saved
        round. Seeded noise (``noise_seed``, or a simulation's
        seed) draws the same noise again, and DP-FTRL's tree noise is seeded by its
        state, so only fresh Gaussian noise is charged again.
        """
        if self.shared.seed is not None or self.mech.tree_rounds is not None:
            return 0
        return unsaved_releases(history)

    def before_round(self, round: int, state: Any) -> str | None:
        """Stop if this round would take epsilon past the target.

        Args:
            round: The number of the round about to run.
            state: The aggregation state, which counts the rounds accounted.
        """
        target = self.mech.target_epsilon
        if target is None:
            return None
        rounds = _dp_state(state).rounds
        after = self.epsilon(rounds + 1)
        if after <= target:
            return None
        return (
            f"privacy budget: round {round} would spend epsilon {after:.4g} > target_epsilon "
            f"{target:g} (delta={self.mech.delta:g}); spent so far {self.epsilon(rounds):.4g}"
        )

    def after_round(self, record: RoundRecord, state: Any) -> None:
        """Record the budget spent so far.

        Args:
            record: The finished round's record; its ``privacy`` is set.
            state: The aggregation state after the round.
        """
        record.privacy = {
            "epsilon": self.epsilon(_dp_state(state).rounds),
            "delta": self.mech.delta,
        }

    def finish(self, history: History, state: Any) -> None:
        """Print the privacy statement.

        Args:
            history: The run's history.
            state: The aggregation state the run ended with.
        """
        self.shared.release()
        rounds = _dp_state(state).rounds
        self.printed = statement(
            mechanism=self.mech.name,
            unit=self.unit,
            sampling=self.sampling,
            epsilon=self.epsilon(rounds),
            delta=self.mech.delta,
            accountant=self.mech.accountant,
            rounds=rounds,
            extra=[f"stopped:     {history.stopped_reason}"] if history.stopped_reason else [],
            relation=self.relation,
            trained=sum("dp" in r.aggregate_info for r in history.rounds),
        )
        print(self.printed)


def _dp_state(state: Any) -> DPState:
    if not isinstance(state, DPState):
        raise TypeError(
            "the privacy hook expects the strategy's aggregator to be the DP step it was "
            f"built with, found a {type(state).__name__} state"
        )
    return state


def _check(
    noise_multiplier: float,
    clip: float | np.floating[Any],
    delta: float,
    target_epsilon: float | None = None,
    expected_clients: float | None = None,
    noise_seed: int | None = None,
) -> None:
    """Refuse bad settings of a DP strategy before any client trains, naming the setting."""
    numbers: list[tuple[str, object]] = [
        ("noise_multiplier", noise_multiplier),
        ("clip", clip),
        ("delta", delta),
    ]
    for name, value in (("target_epsilon", target_epsilon), ("expected_clients", expected_clients)):
        if value is not None:
            numbers.append((name, value))
    for name, number in numbers:
        if isinstance(number, bool) or not isinstance(
            number, int | float | np.integer | np.floating
        ):
            raise ValueError(f"{name} must be a number, got {number!r}")
    if noise_seed is not None and (
        isinstance(noise_seed, bool)
        or not isinstance(noise_seed, int | np.integer)
        or noise_seed < 0
    ):
        raise ValueError(f"noise_seed must be a non-negative int, got {noise_seed!r}")
    check_noise_multiplier(noise_multiplier)
    if not finite(clip) or not clip > 0:  # an int past the largest float too
        raise ValueError(f"clip must be a positive number, got {shown(clip)}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {shown(delta)}")
    if expected_clients is not None and not (finite(expected_clients) and expected_clients > 0):
        raise ValueError(
            f"expected_clients must be a positive number (the divisor of the noisy sum), "
            f"got {shown(expected_clients)}"
        )
    if target_epsilon is not None:
        # Infinity never stops a run: the way to run without a budget is no target.
        check_target_epsilon(target_epsilon)


def refuse_nested(strategy: Strategy, mechanism: str) -> None:
    """Refuse a strategy that one of covey's DP mechanisms already wraps.

    The outer mechanism would replace the inner one's sampling, which the inner
    one's accountant still charges, and clip and noise the round a second time.
    """
    inner = [hook.mech.name for hook in strategy.hooks if isinstance(hook, PrivacyHook)]
    if inner:
        raise ValueError(
            f"{mechanism}: {strategy.name} already has differential privacy ({inner[0]}); "
            "apply only one mechanism, to the strategy without differential privacy"
        )


def refuse_own_sampling(strategy: Strategy, mechanism: str) -> None:
    """Refuse a strategy class whose ``sample`` would pick the clients instead of the mechanism.

    The round loop asks ``strategy.sample`` for each round's clients; the DP
    strategies install a selector that it calls, and account for the sampling
    that selector does. A subclass that overrides ``sample`` would bypass it: the
    clients it picks (the same ones every round, say) would be charged as a
    Poisson draw (or a round-robin), under an epsilon the run never had.
    """
    own = type(strategy).sample
    if own is not Strategy.sample:
        raise ValueError(
            f"{mechanism} picks each round's clients itself, and its epsilon accounts for that "
            f"sampling; {type(strategy).__name__} overrides sample(), which would choose them "
            "instead and make the reported epsilon wrong: remove the override"
        )


@flower_keywords(FLOWER_DP_OPTIONS)
def central(
    strategy: Strategy,
    *,
    noise_multiplier: float,
    clip: float | np.floating[Any],
    delta: float,
    target_epsilon: float | None = None,
    clipping: Clipping = "server",
    adaptive: AdaptiveClipping | bool | None = None,
    accountant: Accountant = "rdp",
    noise_seed: int | None = None,
    expected_clients: float | None = None,
) -> Strategy:
    """User-level DP-FedAvg: the same strategy with Poisson sampling, clipping and noise.

    Each available client takes part in a round independently with probability
    ``strategy.fraction_fit``; each update is clipped to L2 norm ``clip``; the sum
    of clipped updates gets Gaussian noise of standard deviation
    ``noise_multiplier * clip`` and is divided by the expected number of clients
    (``fraction_fit`` times the clients available). Every client counts once,
    whatever its number of examples. The strategy's aggregator then runs on this
    private mean (so a server optimizer such as FedAdam's applies to it).

    Args:
        strategy: Any synchronous strategy.
        noise_multiplier: ``z``, the noise's standard deviation over the clip (see
            :func:`covey.privacy.calibrate`).
        clip: The L2 bound on each update (the initial one with adaptive clipping).
        delta: The delta of the guarantee (below 1 / number of clients).
        target_epsilon: Stop the run before the first round that would exceed it.
        clipping: ``"server"`` (default: clients need no change) or ``"client"``:
            clients clip before upload (see :class:`covey.privacy.ClipUpdates`)
            using ``config["dp_clip"]``; the server still checks the norms. Under
            secure aggregation (``covey.secagg.secure`` around this strategy; the
            other nesting is refused) it must be ``"client"``.
        adaptive: True or an :class:`AdaptiveClipping` to learn the clip.
        accountant: ``"rdp"`` (default) or ``"pld"``.
        noise_seed: Seeds the noise and the sampling (for tests). Without it they
            follow the run's seed in simulation and fresh CSPRNG seeds when deployed.
        expected_clients: Override the divisor (default ``fraction_fit`` times the
            clients available).

    Returns:
        A :class:`~covey.Strategy` named ``"DP-<name>"``.

    Example:
        >>> import covey
        >>> dp = central(covey.FedAvg(fraction_fit=0.1), noise_multiplier=1.0, clip=0.5,
        ...              delta=1e-5, target_epsilon=8.0)

    References:
        McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private
        Recurrent Language Models", ICLR 2018; Andrew et al., "Differentially
        Private Learning with Adaptive Clipping", NeurIPS 2021.
    """
    strategy = a_strategy(strategy)
    _check(noise_multiplier, clip, delta, target_epsilon, expected_clients, noise_seed)
    if strategy.asynchronous:
        raise ValueError("central DP needs synchronous rounds (no buffer_size)")
    refuse_nested(strategy, "central DP")
    if strategy.selector is not None:
        raise ValueError("central DP samples clients itself (Poisson); drop the selector")
    refuse_own_sampling(strategy, "central DP (Poisson sampling)")
    if strategy.fit_round is not None:
        raise ValueError(
            "central DP cannot wrap a strategy with its own fit exchange (such as secure "
            "aggregation's): that exchange is built without the clip, so the clients would not "
            "clip and the DP step would get a mean, not a sum; nest it the other way: "
            "covey.secagg.secure(covey.privacy.central(strategy, clipping='client', ...), ...)"
        )
    if clipping not in ("server", "client"):
        raise ValueError(f"clipping must be 'server' or 'client', got {clipping!r}")
    adapt = AdaptiveClipping() if adaptive is True else adaptive or None
    if adapt is not None and not isinstance(adapt, AdaptiveClipping):
        raise ValueError(f"adaptive must be True or an AdaptiveClipping, got {adaptive!r}")
    if accountant not in ("rdp", "pld"):
        raise ValueError(f"unknown accountant {accountant!r}; choose 'rdp' or 'pld'")
    if adapt is not None and clipping == "client":
        raise ValueError("adaptive clipping needs clipping='server' (the clip changes each round)")
    rate = strategy.fraction_fit
    if not rate > 0.0:
        raise ValueError("central DP needs fraction_fit > 0 (the Poisson sampling rate)")
    check_accountable(
        round_event(float(noise_multiplier), rate),
        accountant,
        f"central DP with noise_multiplier={noise_multiplier:g}",
    )
    if adapt is not None and (adapt.count_stddev is not None or expected_clients is not None):
        # Known now: refused before any client trains, not as round 1 is aggregated.
        adapt.split(float(noise_multiplier), float(expected_clients or 1.0))
    name = "DP-FedAvg" + (" with adaptive clipping" if adapt else "")
    mech = Mechanism(
        name=f"{name} (Gaussian, z={noise_multiplier:g}, clip={clip:g}, {clipping}-side)",
        noise_multiplier=float(noise_multiplier),
        clip=float(clip),
        delta=float(delta),
        clipping=clipping,
        sampling_rate=rate,
        expected_clients=expected_clients,
        adaptive=adapt,
        accountant=accountant,
        target_epsilon=target_epsilon,
    )
    shared = Shared()
    hook = PrivacyHook(
        mech,
        shared,
        noise_seed,
        unit="one client (all of its data)",
        sampling=f"Poisson, q={rate:g}" if rate < 1.0 else "every client, every round",
    )
    return replace_strategy(
        strategy,
        aggregator=dp_step(strategy.aggregator, mech, shared),
        selector=poisson_selector(rate, shared, population_check(mech)),
        # Not through on_fit_config: a subclass that overrides fit_config would drop it.
        fit_config_entries={**strategy.fit_config_entries, "dp_clip": clip}
        if clipping == "client"
        else strategy.fit_config_entries,
        hooks=(*strategy.hooks, hook),
        name=f"DP-{strategy.name}",
        hyperparameters={
            **strategy.hyperparameters,
            "dp": {
                "mechanism": "DP-FedAvg",
                "noise_multiplier": float(noise_multiplier),
                "clip": float(clip),
                "delta": float(delta),
                "target_epsilon": target_epsilon,
                "clipping": clipping,
                "adaptive": None if adapt is None else vars(adapt),
                "accountant": accountant,
                "sampling": "poisson",
                "sampling_rate": rate,
                "noise_seed": "given" if noise_seed is not None else None,
            },
        },
    )
