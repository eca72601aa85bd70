"""``secure(strategy)``: federated learning whose server sees only the sum of the updates.

Each sampled client trains as usual; instead of sending its update it turns
it into integers (fixed point over ``[-clip_range, clip_range]`` with ``bits``
bits, pre-scaled by its example count for weighted FedAvg), appends its example
count and its declared numeric metrics, and the vector goes through SecAgg+
(:func:`~covey.secagg.secure_sum`). The server gets the sum, divides, and
hands the aggregation chain one contribution: the (weighted) mean update. So
every server-side step (server momentum, Adam) runs on the unmasked mean,
while steps that need each client's update are refused.

Under central DP (``secure(covey.privacy.central(strategy, clipping="client"))``)
each client clips its update before masking and the DP step gets the unmasked
*sum* to noise; with accounted distributed noise (``Noise(..., clip=, delta=)``)
each client clips and noises it. See :mod:`covey.secagg._ddp`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from covey.aggregate import Begin, Broadcast, Contribution, run_round
from covey.core._messages import Count, Task, plain_count, plain_real
from covey.core._text import clients
from covey.privacy import ClippedSum
from covey.secagg._ddp import client_clip, dp_plan
from covey.secagg._dp import Noise
from covey.secagg._driver import SecAggAbort, secure_sum
from covey.secagg._fit_input import fit_input
from covey.secagg._fit_input import layout as _layout
from covey.secagg._handlers import register_builtin_input
from covey.secagg._options import (
    check_directory,
    check_fit_metrics,
    check_options,
    check_parts,
)
from covey.secagg._params import ThreatModel
from covey.secagg._ring import MAX_BITS, RangeError, ring_bits, scale
from covey.secagg._server_stages import BELOW_THRESHOLD
from covey.strategies._fitround import FitOutcome
from covey.strategies._names import FLOWER_SECAGG_OPTIONS, a_strategy, flower_keywords
from covey.strategies._strategy import Strategy
from covey.strategies._subclass import replace_strategy

_FEW = 20
"""A Poisson draw of fewer clients may stop a secured central-DP round; of more, rarely."""

FIT_INPUT = "covey.secagg.fit"
Reducer = Literal["auto", "weighted_mean", "mean"]
_INDIVIDUAL = {"FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan", "FedRFA", "QFedAvg"}
DEFAULT_THREAT = ThreatModel(corrupt_rate=0.05, dropout_rate=0.15)
_CHECKED_CLIENTS = 1000  # secure() refuses settings whose sum over this many clients would wrap


register_builtin_input(FIT_INPUT, fit_input)


def _probe(strategy: Strategy) -> str | None:
    """Which mean the aggregator computes ("weighted_mean", "mean"), or None if it is neither.

    Runs the chain on a made-up round of three contributions and compares the
    result with the chain fed their weighted or plain mean as one contribution.
    """
    rng = np.random.default_rng(7)
    params = {"w": rng.normal(size=6)}
    deltas = [rng.normal(size=6) * s for s in (0.1, 1.0, 30.0)]
    counts = [3, 7, 19]
    step = strategy.aggregator

    def run(contributions: list[Contribution]) -> np.ndarray | None:
        state = step.init(params)
        state, out = step.update(state, Begin(1, params))
        if any(isinstance(e, Broadcast) for e in out):
            return None
        _, agg = run_round(step, step.init(params), 1, params, contributions)
        return None if agg is None else np.asarray(agg.apply(params)["w"])

    try:
        many = run(
            [
                Contribution(i, n, delta={"w": d})
                for i, (n, d) in enumerate(zip(counts, deltas, strict=True))
            ]
        )
        weighted = np.sum([n * d for n, d in zip(counts, deltas, strict=True)], axis=0) / sum(
            counts
        )
        plain = np.mean(deltas, axis=0)
        one_w = run([Contribution(0, sum(counts), delta={"w": weighted})])
        one_m = run([Contribution(0, sum(counts), delta={"w": plain})])
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError):
        # A step that cannot run on a made-up round of three clients is not a mean.
        return None
    if many is None:
        return None
    if one_w is not None and np.allclose(many, one_w, rtol=1e-9, atol=1e-12):
        return "weighted_mean"
    if one_m is not None and np.allclose(many, one_m, rtol=1e-9, atol=1e-12):
        return "mean"
    return None


@dataclass(frozen=True)
class _Secure:
    """The fit exchange of a secure strategy (a callable stored in ``Strategy.fit_round``)."""

    clip_range: float
    bits: int
    max_examples: int
    weighted: bool
    threat: ThreatModel
    metrics: Mapping[str, float]
    noise: Noise | None
    complete: bool | None
    signed: bool
    l2_clip: float | None = None  # DP: each client clips its rounded update to this L2 norm
    summed: bool = False  # central DP: hand the DP step the sum, not the mean
    min_fit_clients: int = 0  # the loop's rule for a round, applied before unmasking
    accept_failures: bool = True
    directory: Mapping[str, bytes] | None = None  # names' public keys, to check signatures

    def bound(self) -> int:
        top = (1 << (self.bits - 1)) - 1
        return max(top * (self.max_examples if self.weighted else 1), self.max_examples)

    def _needed(self, sampled: int) -> dict[str, Any]:
        """The survivors the round loop accepts, so that a sum it would refuse stays masked."""
        if not self.accept_failures:
            return {"min_survivors": sampled, "shortfall": "and accept_failures=False"}
        needed = min(self.min_fit_clients, sampled)
        return {"min_survivors": needed, "shortfall": f"fewer than min_fit_clients={needed}"}

    def _abort_hint(self, exc: SecAggAbort, sampled: int) -> str:
        """What to set when secure aggregation stopped with ``sampled`` clients (or nothing)."""
        # Too few clients in a Poisson draw: a draw of 20 or more failed otherwise (too
        # many clients, or too wide a sum), where sampling more would not help.
        if exc.stage == "setup" and self.summed and sampled < _FEW:
            return (
                f"; central DP's Poisson draw took {sampled} clients this round: raise "
                f"fraction_fit so that fraction_fit x clients is {_FEW} or more, which makes "
                "such a draw rare (docs/privacy.md)"
            )
        if exc.stage == "setup" and sampled < 2:  # no sum hides a lone update
            return (
                f"; this round sampled {sampled}: set min_fit_clients=2 or more (a "
                "selector of one's own: choose at least 2 clients)"
            )
        if BELOW_THRESHOLD in exc.reason:
            return (
                f"; too few of the {clients(sampled)} sampled stayed through the protocol: "
                f"sample more a round (min_fit_clients={self.min_fit_clients}, fraction_fit), "
                "give them longer (round_timeout), or size the protocol for the dropout "
                "expected with secure(threat=ThreatModel(dropout_rate=...)) (docs/secagg.md)"
            )
        return ""

    def __call__(
        self,
        transport: Any,
        cids: Sequence[int],
        task: Task,
        timeout: float | None,
        configs: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> FitOutcome:
        weights = task.weights
        if weights is None:
            raise ValueError("a fit task carries no weights")
        if not cids and not self.summed:  # a selector's empty choice: no client trains
            return FitOutcome()
        layout = _layout(weights)
        model = sum(size for _, _, size in layout)
        spec = {
            "clip": self.clip_range,
            "bits": self.bits,
            "max_examples": self.max_examples,
            "weighted": self.weighted,
            "metrics": dict(self.metrics),
            "l2_clip": self.l2_clip,
        }
        if self.l2_clip is not None:  # refuse before anyone trains
            client_clip(self.l2_clip, model, self.clip_range, self.bits)
        try:
            res = secure_sum(
                transport,
                cids,
                round=task.round,
                input_kind=FIT_INPUT,
                payload=spec,
                length=model + 1 + 2 * len(self.metrics),
                bound=self.bound(),
                threat=self.threat,
                timeout=timeout,
                weights=weights,
                config=task.config,
                configs=configs,
                noise=self.noise,
                noise_entries=model,
                complete=self.complete,
                signed=self.signed,
                directory=self.directory,
                **self._needed(len(cids)),
            )
        except SecAggAbort as exc:
            error = str(exc) + self._abort_hint(exc, len(cids))
            return FitOutcome(
                failures=tuple(exc.dropped.items()),
                info={"secagg_abort": exc.reason, "secagg_stage": exc.stage},
                error=error,
                refused=tuple(exc.refused.items()),
            )
        total = res.total
        examples = int(total[model])
        denominator = examples if self.weighted else len(res.survivors)
        info: dict[str, Any] = {
            "secagg_degree": res.plan.degree,
            "secagg_threshold": res.plan.threshold,
            "secagg_ring_bits": res.bits,
            "secagg_dropped": sorted(res.dropped),
            "secagg_silent": sorted(res.silent),
            "secagg_suspects": sorted(res.suspects),
            "secagg_seconds": dict(res.seconds),
        }
        failures = tuple({**res.excluded, **res.dropped, **res.silent}.items())
        # No examples at all, weighted: every pre-scaled update was zero. The contribution
        # carries num_examples=0 and the weighted mean refuses it as it refuses such a plain
        # round (an AggregationError: recorded, the model kept, the run goes on). Unweighted
        # (distributed DP), each client's update counts whatever its count: it weighs 1.
        denominator = max(denominator, 1)
        weight = examples if self.weighted else max(examples, 1)
        unit = scale(self.clip_range, self.bits)
        if self.noise is not None:
            # The mean's noise: sqrt(survivors) draws of sigma quantized units, unscaled.
            info["secagg_noise_std"] = (
                self.noise.sigma * math.sqrt(len(res.survivors)) / (unit * denominator)
            )
        # Central DP: the DP step gets the sum of the clipped updates, to noise it itself.
        mean = total[:model].astype(np.float64) / (unit * (1 if self.summed else denominator))
        delta: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape, size in layout:
            part = mean[offset : offset + size].reshape(shape)
            dtype = weights[name].dtype
            # The reducer rounds a delta whose dtype differs from the layer's (integer
            # layers); float layers get their own dtype so the model keeps it.
            keep = dtype.kind == "f" and not self.summed
            delta[name] = part.astype(dtype) if keep else part
            offset += size
        metrics: dict[str, float] = {}
        for i, (name, bound) in enumerate(self.metrics.items()):
            value, count = total[model + 1 + 2 * i], total[model + 2 + 2 * i]
            if count > 0:
                metrics[name] = float(value) / (scale(bound, self.bits) * float(count))
        if self.l2_clip is not None:
            info["secagg_client_clip"] = client_clip(
                self.l2_clip, model, self.clip_range, self.bits
            )
        contribution = (
            ClippedSum(-1, examples, delta=delta, clients=len(res.survivors))
            if self.summed
            else Contribution(-1, weight, delta=delta)
        )
        suspects = tuple((c, f"in secure aggregation: {why}") for c, why in res.suspects.items())
        refused = tuple(res.refused.items())  # each such client is told why
        return FitOutcome(
            (contribution,),
            tuple(res.survivors),
            examples,
            metrics,
            failures,
            info,
            None,
            suspects,
            refused,
        )


@flower_keywords(FLOWER_SECAGG_OPTIONS)
def secure(
    strategy: Strategy,
    *,
    clip_range: float | np.floating[Any],
    bits: int = 16,
    max_examples: Count = 100_000,
    threat: ThreatModel | None = None,
    metrics: Mapping[str, float] | None = None,
    noise: Noise | None = None,
    complete: bool | None = None,
    signed: bool = False,
    reducer: Reducer = "auto",
    directory: Mapping[str, bytes] | None = None,
) -> Strategy:
    """The same strategy with its fit rounds run through secure aggregation (SecAgg+).

    Args:
        strategy: A strategy whose aggregator is a (weighted) mean followed by
            server-side steps, e.g. FedAvg, FedAvgM, FedAdam, FedYogi, FedProx; or
            one made by ``covey.privacy.central(..., clipping="client")``, whose DP
            step then noises the unmasked sum of the client-clipped updates.
        clip_range: Each value of a client's update (delta, or weights minus the
            global weights) must lie in ``[-clip_range, clip_range]``; a value outside
            fails that client loudly (it is never clipped or wrapped silently).
        bits: Fixed-point bits per value over that range (unbiased rounding; error
            below ``clip_range / (2^(bits-1) - 1)`` per value and client).
        max_examples: The largest example count a client may report (weighted
            FedAvg pre-scales by it); a larger one fails that client loudly.
        threat: Fixes the graph's degree and threshold (default: 5% corrupt clients,
            15% dropout, curious server).
        metrics: Numeric fit metrics to aggregate securely, each with the bound of
            its absolute value: their example-weighted means are reported. Other
            metrics are not sent.
        noise: Distributed DP: integer noise (in quantized units of the pre-scaled
            update) each client adds before masking; with its ``clip`` and ``delta``
            each client clips its update to that L2 norm, every client counts once
            (a plain mean) and the noise is accounted round by round.
        complete: Force the complete graph (plain SecAgg) or a sparse one.
        signed: Clients sign their keys with their ``secagg_identity`` (Ed25519),
            as a deployment with mTLS identities should, and sign the survivor
            list before unmasking (the consistency check); without it the
            protocol protects against an honest-but-curious server only. The
            check needs the semi-malicious threat model's threshold: under a
            curious one (a warning says so) a lying server can still split the
            clients into two groups that each reach the threshold.
        directory: With ``signed``, each client name's raw 32-byte Ed25519 public key
            (the directory the clients trust): the server then checks each
            client's signatures itself and leaves out one whose keys do not
            verify, where without it all that client's neighbours abort.
        reducer: ``"auto"`` recognizes the aggregator's mean by running it on a
            made-up round; name it when a server-side step is random (central DP noise).

    Returns:
        A :class:`~covey.Strategy` for the same loop, transports and presets.

    Raises:
        ValueError: For a strategy that needs individual updates (median, Krum, ...),
            an asynchronous one, a ring that cannot hold the sum, DP that needs
            individual updates (server-side clipping, DP-FTRL), or a ``fit_metrics``
            function of one's own, which would never see a client's metrics.

    Example:
        >>> import warnings, covey
        >>> with warnings.catch_warnings(record=True) as said:  # in simulation, keys are unsigned
        ...     warnings.simplefilter("always")
        ...     strategy = secure(covey.FedAvg(), clip_range=1.0, bits=16)
        >>> "honest-but-curious" in str(said[0].message)
        True

    References:
        Bonawitz et al., CCS 2017; Bell et al., CCS 2020.
    """
    strategy = a_strategy(strategy)
    if strategy.asynchronous:
        raise ValueError("secure aggregation needs synchronous rounds, not FedBuff's buffer")
    if strategy.fit_round is not None:
        raise ValueError("the strategy already runs a custom fit exchange")
    check_fit_metrics(strategy.fit_metrics)
    clip_range, max_examples = plain_real(clip_range), plain_count(max_examples)
    check_options(clip_range, max_examples, complete, signed, reducer)
    check_parts(threat, noise, metrics, bits)
    check_directory(directory, signed)
    dp = dp_plan(strategy, noise, clip_range, bits)
    if dp.l2_clip is not None and dp.l2_clip > clip_range:
        raise ValueError(
            f"the DP clip {dp.l2_clip:g} exceeds clip_range {clip_range:g}: a clipped update "
            "could still hold a value outside the range, and that client's failure would tell "
            "the server a fact about its update that the DP guarantee does not cover; choose "
            "clip_range >= clip (raise bits for precision)"
        )
    kind: str | None
    if dp.summed:  # central DP: its step, not a mean, takes the sum
        kind = "sum"
    elif strategy.name in _INDIVIDUAL:
        kind = None
    elif reducer == "auto":
        kind = _probe(strategy)
    else:
        kind = reducer
    if kind is None:
        raise ValueError(
            f"strategy {strategy.name!r} needs individual updates (like median, trimmed mean, "
            "Krum, Bulyan, RFA, q-FedAvg, SCAFFOLD or per-client clipping), which secure "
            "aggregation hides from the server; only a (weighted) mean followed by server-side "
            "steps can be secured (name it with reducer= if a server-side step is random)"
        )
    metric_bounds = {str(k): float(v) for k, v in (metrics or {}).items()}
    fit = _Secure(
        float(clip_range),
        int(bits),
        max_examples,
        kind == "weighted_mean" and dp.l2_clip is None,  # under DP each client counts once
        threat or DEFAULT_THREAT,
        metric_bounds,
        noise,
        complete,
        signed,
        dp.l2_clip,
        dp.summed,
        strategy.min_fit_clients,
        strategy.accept_failures,
        None if directory is None else dict(directory),
    )
    # Fail now, not in round 1, when even a modest federation would overflow the ring.
    try:
        ring_bits(_CHECKED_CLIENTS, fit.bound() + (noise.tail_bound if noise else 0))
    except RangeError:
        need = (_CHECKED_CLIENTS * (fit.bound() + (noise.tail_bound if noise else 0))).bit_length()
        raise RangeError(
            f"secure aggregation with bits={fit.bits} and max_examples={max_examples}"
            + (" and noise" if noise else "")
            + f" needs a {need + 1}-bit ring to sum {_CHECKED_CLIENTS} clients' updates, "
            f"more than {MAX_BITS}: lower bits or max_examples"
        ) from None
    if not signed:
        warnings.warn(
            "secure aggregation without signed keys protects against an honest-but-curious "
            "server only; pass signed=True with client identities in deployment, and a "
            "semi-malicious threat model",
            UserWarning,
            stacklevel=3,  # past flower_keywords: the caller's line
        )
    elif fit.threat.adversary == "curious":
        warnings.warn(
            "signed keys under a curious threat model: its threshold is too low for the "
            "consistency check, so a server that shows two groups of clients different "
            "survivor lists can still learn a client's input; pass "
            "threat=ThreatModel(..., adversary='semi-malicious')",
            UserWarning,
            stacklevel=3,
        )
    settings = {
        "clip_range": fit.clip_range,
        "bits": fit.bits,
        "max_examples": max_examples,
        "mean": kind if fit.weighted or kind != "weighted_mean" else "mean",
        "corrupt_rate": fit.threat.corrupt_rate,
        "dropout_rate": fit.threat.dropout_rate,
        "adversary": fit.threat.adversary,
        "signed": signed,
        "complete": complete,
        "metrics": dict(metric_bounds),
        "noise": None if noise is None else noise.settings(),
        "l2_clip": dp.l2_clip,
    }
    return replace_strategy(
        strategy,
        fit_round=fit,
        hooks=(*strategy.hooks, *dp.hooks),
        name=f"Secure{strategy.name}",
        hyperparameters={**strategy.hyperparameters, "secagg": settings},
    )
