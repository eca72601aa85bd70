"""Distributed DP: integer noise each client adds to its input before masking.

Each of ``n`` clients adds independent noise of standard deviation ``sigma``
(in quantized units), so the unmasked sum carries noise of deviation
``sigma * sqrt(n)`` and the server never holds a noise-free sum. Two
mechanisms are sum-friendly on the integers:

* ``"skellam"``: the difference of two Poisson(``sigma^2 / 2``) draws; a sum of
  Skellam variables is Skellam, so the total is exactly Skellam with variance
  ``n sigma^2``.
* ``"gaussian"``: the discrete Gaussian ``N_Z(0, sigma^2)``, sampled exactly by
  rejection from a discrete Laplace (Canonne, Kamath and Steinke); the sum is
  close to a discrete Gaussian of variance ``n sigma^2``.

The generator is seeded from the OS's CSPRNG. A draw beyond ``tail_bound`` (12
deviations, probability below 2^-100) is refused so the ring's width, which
counts on it, holds.

References:
    Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially Private
    Federated Learning", NeurIPS 2021. Kairouz, Liu and Steinke, "The Distributed
    Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation",
    ICML 2021. Canonne, Kamath and Steinke, "The Discrete Gaussian for
    Differential Privacy", NeurIPS 2020.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from covey.core._messages import Real, plain, real
from covey.privacy._accounting import Accountant, check_target_epsilon

Mechanism = Literal["skellam", "gaussian"]
TAIL_SIGMAS = 12
MIN_ACCOUNTED_SIGMA = 2.0


@dataclass(frozen=True)
class Noise:
    """Integer noise every client adds before masking.

    Args:
        mechanism: ``"skellam"`` or ``"gaussian"`` (discrete Gaussian).
        sigma: Each client's noise standard deviation, in quantized units.
        clip: With it the noise is accounted: each client clips its update to this
            L2 norm (in the model's units) before quantizing, so one client's
            sensitivity is ``clip`` times the quantization scale.
        delta: The delta of the accounted guarantee (needed with ``clip``).
        target_epsilon: Stop the run before the first round that would exceed it.
        accountant: ``"rdp"`` (default) or ``"pld"``.

    Example:
        >>> noise = Noise("gaussian", sigma=2000.0, clip=1.0, delta=1e-5, target_epsilon=8.0)
    """

    mechanism: Mechanism
    sigma: float
    clip: float | None = None
    delta: float | None = None
    target_epsilon: float | None = None
    accountant: Accountant = "rdp"

    if TYPE_CHECKING:  # NumPy numbers are taken (as the Python numbers they are, as kept)

        def __init__(
            self,
            mechanism: Mechanism,
            sigma: Real,
            clip: Real | None = None,
            delta: Real | None = None,
            target_epsilon: Real | None = None,
            accountant: Accountant = "rdp",
        ) -> None: ...

    def __post_init__(self) -> None:
        for name in ("sigma", "clip", "delta", "target_epsilon"):  # np.float32(1.0) as 1.0
            object.__setattr__(self, name, plain(getattr(self, name)))
        if self.mechanism not in ("skellam", "gaussian"):
            raise ValueError(f"mechanism must be 'skellam' or 'gaussian', got {self.mechanism!r}")
        if not (real(self.sigma) and math.isfinite(self.sigma)) or self.sigma < 0:
            raise ValueError(f"sigma must be a finite number >= 0, got {self.sigma!r}")
        if self.clip is None:
            if self.delta is not None or self.target_epsilon is not None:
                raise ValueError("accounted noise (delta=, target_epsilon=) needs its clip=")
            return
        if not (real(self.clip) and math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a positive finite number, got {self.clip!r}")
        if not real(self.delta) or not 0.0 < self.delta < 1.0:
            raise ValueError(f"accounted noise needs delta in (0, 1), got {self.delta!r}")
        if self.target_epsilon is not None:
            check_target_epsilon(self.target_epsilon)
        if self.accountant not in ("rdp", "pld"):
            raise ValueError(f"accountant must be 'rdp' or 'pld', got {self.accountant!r}")
        if self.sigma < MIN_ACCOUNTED_SIGMA:
            raise ValueError(
                f"accounted noise needs sigma >= {MIN_ACCOUNTED_SIGMA} quantized units (the "
                f"sum-of-noises approximation it is accounted with), got {self.sigma!r}"
            )

    def settings(self) -> dict[str, Any]:
        """The parameters, for the strategy's hyperparameters."""
        return {
            "mechanism": self.mechanism,
            "sigma": self.sigma,
            "clip": self.clip,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "accountant": self.accountant,
        }

    @property
    def tail_bound(self) -> int:
        """The largest noise magnitude a client may add."""
        return math.ceil(TAIL_SIGMAS * self.sigma)

    def sample(self, size: int) -> np.ndarray:
        """``size`` independent draws as int64.

        Args:
            size: The number of draws (0 gives an empty array).
        """
        rng = np.random.Generator(np.random.Philox(np.frombuffer(os.urandom(16), np.uint64)))
        if self.sigma == 0:
            return np.zeros(size, dtype=np.int64)
        if self.mechanism == "skellam":
            mu = self.sigma**2 / 2
            out = rng.poisson(mu, size).astype(np.int64) - rng.poisson(mu, size).astype(np.int64)
        else:
            out = discrete_gaussian(self.sigma, size, rng)
        if size and int(np.abs(out).max()) > self.tail_bound:
            raise OverflowError("a noise draw exceeded its tail bound (probability < 2^-100)")
        return out


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Exact draws of the discrete Gaussian ``P[x] ~ exp(-x^2 / (2 sigma^2))`` on the integers.

    Rejection sampling from the discrete Laplace with scale ``t = floor(sigma) + 1``,
    vectorized: propose a batch, keep the accepted, repeat for the rest.
    """
    t = math.floor(sigma) + 1
    out = np.empty(0, dtype=np.int64)
    q = 1.0 - math.exp(-1.0 / t)
    while out.size < size:
        need = size - out.size
        batch = 2 * need + 16
        y = rng.geometric(q, batch).astype(np.int64) - rng.geometric(q, batch).astype(np.int64)
        accept = rng.random(batch) < np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2))
        out = np.concatenate([out, y[accept][:need]])
    return out
