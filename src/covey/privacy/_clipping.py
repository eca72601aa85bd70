"""Where updates are clipped, and adaptive clipping: the clip follows a quantile of the norms."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from covey.core._messages import finite, real, shown

Clipping = Literal["server", "client"]
"""Where updates are clipped: by the server (default) or by each client before upload."""


@dataclass(frozen=True)
class AdaptiveClipping:
    """Adaptive clipping: the clip follows a quantile of the update norms.

    After each round ``clip <- clip * exp(-learning_rate * (b - target_quantile))``,
    where ``b`` is the noisy fraction of updates whose norm was at most ``clip``.

    Args:
        target_quantile: The quantile of update norms the clip should track.
        learning_rate: The geometric step size.
        count_stddev: The noise on the count of unclipped updates; None gives
            ``0.05 * expected_clients``. Its privacy cost is taken from the update
            noise, so the pair costs exactly one Gaussian with ``noise_multiplier``.

    References:
        Andrew, Thakkar, McMahan and Ramaswamy, "Differentially Private Learning
        with Adaptive Clipping", NeurIPS 2021.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float | None = None

    def __post_init__(self) -> None:
        if not real(self.target_quantile) or not 0.0 < self.target_quantile < 1.0:
            raise ValueError(
                f"target_quantile must be a number in (0, 1), got {self.target_quantile!r}"
            )
        if not finite(self.learning_rate) or not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be a finite number > 0, got {shown(self.learning_rate)}"
            )
        if self.count_stddev is not None and (
            not finite(self.count_stddev) or not self.count_stddev > 0
        ):
            raise ValueError(
                f"count_stddev must be a finite number > 0, got {shown(self.count_stddev)}"
            )

    def next_clip(self, clip: float, noisy_fraction: float) -> float:
        """The clip after a round whose noisy fraction of unclipped updates was ``noisy_fraction``.

        Args:
            clip: The round's clip (an L2 norm).
            noisy_fraction: The noised fraction of the round's updates whose norm was
                at most ``clip``; the clip moves geometrically toward ``target_quantile``.

        Raises:
            ValueError: if the geometric step takes the clip past what a float holds
                (to infinity, or to 0, where it would stay): a learning rate far too
                large for the noise on the count.
        """
        exponent = -self.learning_rate * (noisy_fraction - self.target_quantile)
        new = clip * math.exp(exponent) if exponent < 709.0 else math.inf
        if not 0.0 < new < math.inf:
            raise ValueError(
                f"adaptive clipping: the next clip, {clip:g} x exp({exponent:.4g}) (learning_rate "
                f"{self.learning_rate:g}, noisy unclipped fraction {noisy_fraction:.4g}, "
                f"target_quantile {self.target_quantile:g}), is {new:g}, which no update could be "
                "clipped to: lower learning_rate (0.2 is usual)"
            )
        return new

    def split(self, noise_multiplier: float, expected: float) -> tuple[float, float]:
        """``(update noise multiplier, count stddev)`` whose pair costs ``noise_multiplier``.

        Args:
            noise_multiplier: The run's noise multiplier, shared by the update and the count.
            expected: The clients expected a round; ``count_stddev`` defaults to 0.05 of it.

        Raises:
            ValueError: if ``noise_multiplier`` is not below twice the count's stddev.
        """
        sigma_b = self.count_stddev if self.count_stddev is not None else 0.05 * expected
        if noise_multiplier >= 2.0 * sigma_b:
            given = (
                ""
                if self.count_stddev is not None
                else f"; count_stddev is by default 0.05 x the {expected:g} clients expected "
                "a round"
            )
            raise ValueError(
                f"adaptive clipping needs noise_multiplier < 2 * count_stddev "
                f"({noise_multiplier} >= {2.0 * sigma_b:g}{given}): raise count_stddev or "
                "sample more clients per round"
            )
        return (noise_multiplier**-2 - (2.0 * sigma_b) ** -2) ** -0.5, sigma_b
