"""Client-side DP: clip (and for local DP, noise) each update before it leaves the site.

:class:`LocalDP` wraps any client: its update is clipped to L2 norm ``clip`` and
gets Gaussian noise calibrated by the analytic Gaussian mechanism, so the one
upload is (epsilon, delta)-DP at any epsilon; the client keeps its own ledger
and reports what it has spent. :class:`ClipUpdates` only clips, for central DP
with ``clipping="client"``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import dp_accounting as dpa
else:
    from covey.privacy._dpa import dpa

from covey.clients._client import Client, lend
from covey.clients._current import current_task
from covey.core._files import MAX_SETTINGS_BYTES, atomic_write, read_regular
from covey.core._messages import Config, EvaluateResult, FitResult, finite, real, shown
from covey.core._weights import Array, Weights, subtract
from covey.privacy import _noise
from covey.privacy._accounting import Accountant, Ledger
from covey.privacy._pld import check_accountable

logger = logging.getLogger(__name__)


def _analytic_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    # Phi(a - b) - e^eps Phi(-a - b), the second term in log space (large epsilon).
    from scipy import special  # imported on first use: SciPy is slow to import

    return float(special.ndtr(a - b) - math.exp(epsilon + special.log_ndtr(-a - b)))


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The least noise standard deviation making a Gaussian release (epsilon, delta)-DP.

    Solves the exact condition of the analytic Gaussian mechanism,
    ``Phi(D/(2s) - eps s/D) - e^eps Phi(-D/(2s) - eps s/D) <= delta``, for the
    standard deviation ``s`` (``D`` the L2 sensitivity). Unlike the classic bound
    ``D sqrt(2 ln(1.25/delta)) / eps`` it holds for every epsilon, and adds less noise.

    Args:
        epsilon: Target epsilon (> 0).
        delta: Target delta in (0, 1).
        sensitivity: The L2 sensitivity of the released vector.

    Returns:
        The standard deviation, rounded up to within 1e-9 relative.

    References:
        Balle and Wang, "Improving the Gaussian Mechanism for Differential
        Privacy: Analytical Calibration and Optimal Denoising", ICML 2018.
    """
    if not finite(epsilon) or not epsilon > 0:
        raise ValueError(f"epsilon must be a positive number, got {shown(epsilon)}")
    check_delta(delta)
    if not finite(sensitivity) or not sensitivity > 0:
        raise ValueError(f"sensitivity must be a finite number > 0, got {shown(sensitivity)}")

    def excess(log_sigma: float) -> float:
        return _analytic_delta(math.exp(log_sigma), epsilon, sensitivity) - delta

    lo, hi = math.log(sensitivity) - 10.0, math.log(sensitivity) + 10.0
    while excess(lo) < 0:
        lo -= 10.0
    while excess(hi) > 0:
        hi += 10.0
    from scipy import optimize

    root = optimize.brentq(excess, lo, hi, xtol=1e-12, rtol=1e-12)
    sigma = math.exp(root) * (1.0 + 1e-9)
    while _analytic_delta(sigma, epsilon, sensitivity) > delta:
        sigma *= 1.0 + 1e-9
    return sigma


def check_delta(delta: Any) -> None:
    """Refuse a delta that is not a number in (0, 1), naming it."""
    if not real(delta) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be a number in (0, 1), got {shown(delta)}")


def _update(result: FitResult, weights: Weights) -> dict[str, Array]:
    if result.delta is not None:
        return {name: np.asarray(v) for name, v in result.delta.items()}
    if result.weights is None:
        raise TypeError("a FitResult has weights or a delta")
    return subtract(result.weights, weights)


def clip_to(update: Weights, clip: float) -> tuple[dict[str, Array], float]:
    """``update`` scaled so its global L2 norm is at most ``clip``, and its norm before."""
    norm = _noise.norm(update)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {name: np.asarray(v, dtype=np.float64) * scale for name, v in update.items()}, norm


class ClipUpdates(Client):
    """Clip each update to ``config["dp_clip"]`` before it leaves the site.

    For :func:`covey.privacy.central` with ``clipping="client"``.

    Args:
        client: The client to wrap.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def fit(self, weights: Weights, config: Config) -> FitResult:
        """Fit, then clip the update to the clip the server sent.

        Args:
            weights: The global model of the round.
            config: The round's fit config; its ``dp_clip`` (a number > 0) is the clip.
        """
        result = self.client.fit(lend(self.client, weights), config)  # weights used below
        clip = config.get("dp_clip")
        if not isinstance(clip, int | float) or not clip > 0:
            raise ValueError(f"the server sent no valid dp_clip in the fit config: {clip!r}")
        update = _update(result, weights)
        _noise.check_float(update, "ClipUpdates")
        clipped, _ = clip_to(update, float(clip))
        delta = {name: v.astype(update[name].dtype) for name, v in clipped.items()}
        return FitResult(delta=delta, num_examples=result.num_examples, metrics=result.metrics)

    def evaluate(self, weights: Weights, config: Config) -> EvaluateResult:
        """The wrapped client's evaluation.

        Args:
            weights: The model to evaluate.
            config: The round's evaluate config.
        """
        result: EvaluateResult = self.client.evaluate(dict(weights), config)
        return result

    def properties(self) -> dict[str, Any]:
        """The wrapped client's properties."""
        props: dict[str, Any] = self.client.properties()
        return props


class LocalDP(ClipUpdates):
    """Local DP: every update is clipped and noised on the site, and accounted there.

    Each upload is the clipped update plus N(0, s^2) noise per coordinate, with
    ``s`` from :func:`analytic_gaussian_sigma` for ``(epsilon, delta)`` and the
    sensitivity ``2 * clip`` (any two clipped updates differ by at most that: the
    unit protected is the site's whole dataset, replaced by any other). The client
    keeps a ledger of its releases and reports its spent budget in the fit
    metrics ``dp_epsilon`` and ``dp_delta``, composed over all its rounds.

    Args:
        client: The client to wrap.
        epsilon: Epsilon of each upload.
        delta: Delta of each upload (and of the composed budget reported).
        clip: The L2 bound on the update.
        accountant: ``"pld"`` (default: near exact for a Gaussian, so one upload
            reports its epsilon) or ``"rdp"`` for the composition over rounds.
        seed: Seeds the noise (tests), with the round, the count of this object's
            uploads and, in a covey task, the client's id (clients given one seed
            draw noise of their own); None draws from the operating system's CSPRNG.
        ledger_path: A JSON file keeping the ledger across client objects: read when
            the client is built (if it exists), written before each upload leaves.
            Without it the ledger lives on this object only, so a client built
            again (``client_cache``, a resumed simulation, a restarted site)
            reports what it spent from then on, not in all.

    References:
        Balle and Wang, ICML 2018 (the calibration); Dwork and Roth, "The
        Algorithmic Foundations of Differential Privacy", 2014 (local model).
    """

    def __init__(
        self,
        client: Any,
        *,
        epsilon: float,
        delta: float,
        clip: float,
        accountant: Accountant = "pld",
        seed: int | None = None,
        ledger_path: str | Path | None = None,
    ) -> None:
        super().__init__(client)
        if not finite(clip) or not clip > 0:
            raise ValueError(f"clip must be a positive number, got {shown(clip)}")
        check_delta(delta)
        self.clip = float(clip)
        self.delta = float(delta)
        self.sensitivity = 2.0 * self.clip
        self.sigma = analytic_gaussian_sigma(epsilon, delta, self.sensitivity)
        self.ledger = Ledger(accountant=accountant)
        check_accountable(
            dpa.GaussianDpEvent(self.sigma / self.sensitivity),
            accountant,
            f"LocalDP(epsilon={epsilon:g})",
        )
        self.ledger_path = None if ledger_path is None else Path(ledger_path)
        if self.ledger_path is not None and self.ledger_path.exists():
            self.ledger = read_ledger(self.ledger_path, accountant)
        self.seed = seed
        self._fits = 0

    def spent(self) -> float:
        """The epsilon this client has spent so far, at ``delta``."""
        return self.ledger.epsilon(self.delta)

    def fit(self, weights: Weights, config: Config) -> FitResult:
        """Fit, clip, add the calibrated noise, account the release.

        Args:
            weights: The global model of the round.
            config: The round's fit config (its ``"round"`` seeds the noise stream).
        """
        result = self.client.fit(lend(self.client, weights), config)  # weights used below
        if result.extras:  # data-dependent arrays the noise would not cover
            raise ValueError(
                f"LocalDP sends only the noised update, and the wrapped client's result has "
                f"extras {sorted(result.extras)} it would leave out (a strategy needing them, "
                "such as SCAFFOLD's control variates, cannot run with LocalDP clients)"
            )
        update = _update(result, weights)
        _noise.check_float(update, "LocalDP")
        if not all(np.isfinite(v).all() for v in update.values()):
            # a NaN or inf would pass through the noise and tell the server the update
            # diverged: release noise around zero instead, as for any clipped update
            logger.warning("LocalDP: the local update is not finite; releasing a zero update")
            update = {name: np.zeros_like(v) for name, v in update.items()}
            norm = math.inf
            clipped, _ = clip_to(update, self.clip)
        else:
            clipped, norm = clip_to(update, self.clip)
        self._fits += 1
        # The round is in the stream too: a seeded client built again for each task
        # (client_cache=0, a restarted site) would otherwise draw its first noise
        # every round, and two uploads' difference would carry none.
        rnd = config.get("round")
        rnd = rnd if isinstance(rnd, int) and not isinstance(rnd, bool) and rnd >= 0 else 0
        # So is the client's id: clients given one seed would otherwise add the same
        # noise, which cancels in the difference of two uploads and in their mean.
        task = current_task()
        keys: tuple[int, ...] = (_noise.LOCAL_NOISE, rnd, self._fits)
        if task is not None:
            keys = (_noise.LOCAL_CLIENT_NOISE, rnd, self._fits, task.cid)
        rng = _noise.generator(self.seed, *keys)
        noise = _noise.gaussian(rng, clipped, self.sigma)
        delta = {
            name: (value + noise[name]).astype(update[name].dtype)
            for name, value in clipped.items()
        }
        self.ledger = self.ledger.add(dpa.GaussianDpEvent(self.sigma / self.sensitivity))
        if self.ledger_path is not None:  # charged on disk before the upload leaves
            write_ledger(self.ledger_path, self.ledger)
        metrics = {
            **result.metrics,
            "dp_epsilon": self.spent(),
            "dp_delta": self.delta,
            "dp_clipped": float(norm > self.clip),
        }
        return FitResult(delta=delta, num_examples=result.num_examples, metrics=metrics)


def read_ledger(path: Path, accountant: Accountant, who: str = "LocalDP") -> Ledger:
    """The ledger kept in ``path``, checked entry by entry; an error naming the file."""
    try:
        ledger = Ledger.from_json(json.loads(read_regular(path, MAX_SETTINGS_BYTES)))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{who}: cannot read the privacy ledger {path}: {exc}") from None
    if ledger.accountant != accountant:
        raise ValueError(
            f"{who}: the privacy ledger {path} is accounted with {ledger.accountant!r}, "
            f"not {accountant!r}"
        )
    return ledger


def write_ledger(path: Path, ledger: Ledger) -> None:
    """Keep ``ledger`` in ``path`` (atomically)."""
    atomic_write(path, json.dumps(ledger.to_json()))
