"""The grid of dp-accounting's PLD accountant: its step, and the noise too small for it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import dp_accounting as dpa
else:
    from covey.privacy._dpa import dpa

PLD_DEFAULT = 1e-4
"""dp-accounting's default grid step for privacy losses."""

_PLD_POINTS = 2_000_000
"""The most grid points one mechanism's privacy loss distribution is given."""

_PLD_MAX_INTERVAL = 600.0
"""The coarsest PLD grid step: dp-accounting takes ``exp`` of it, which overflows past 709."""


def pld_interval(event: dpa.DpEvent) -> float:
    """The PLD grid step for ``event``: the default, coarser only for very little noise.

    A Gaussian mechanism of noise multiplier ``z`` spreads its privacy loss over
    about ``1 / z**2 + 20 / z`` (a Laplace one of parameter ``b`` over ``2 / b``),
    and the accountant lays a grid of that span over the default step of 1e-4:
    at ``z = 0.005`` (an epsilon near 1,000) that would be 10**10 points (150 GB),
    so the step grows to keep at most :data:`_PLD_POINTS`. It only ever adds to
    the epsilon reported (the grid rounds losses up), by at most a step per
    composition, which is small next to an epsilon that large.

    Raises:
        ValueError: for noise so small (a Gaussian multiplier below about 3e-5,
            an epsilon above a billion) that the step would pass
            :data:`_PLD_MAX_INTERVAL`; the RDP accountant still accounts it.
    """
    leaves = list(_leaves(event))
    span = max((_loss_span(leaf) for leaf in leaves), default=0.0)
    interval = max(PLD_DEFAULT, span / _PLD_POINTS)
    if interval > _PLD_MAX_INTERVAL:  # dp-accounting's grid arithmetic would overflow
        leaf = max(leaves, key=_loss_span)
        raise ValueError(
            f"the PLD accountant cannot account a {type(leaf).__name__} with noise multiplier "
            f"{leaf.noise_multiplier:g} (too little noise: an epsilon in the billions); "
            "use accountant='rdp', or add more noise"
        )
    return interval


def check_accountable(event: dpa.DpEvent, accountant: Literal["rdp", "pld"], what: str) -> None:
    """Refuse, before anything is released, an event ``accountant`` cannot account.

    Raises:
        ValueError: naming ``what`` (the mechanism as the user set it up) when the
            PLD accountant is asked for noise too small for its grid.
    """
    if accountant != "pld":
        return
    try:
        pld_interval(event)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _leaves(event: dpa.DpEvent) -> Iterator[dpa.DpEvent]:
    if isinstance(event, dpa.SelfComposedDpEvent | dpa.PoissonSampledDpEvent):
        yield from _leaves(event.event)
    elif isinstance(event, dpa.ComposedDpEvent):
        for inner in event.events:
            yield from _leaves(inner)
    else:
        yield event


def _loss_span(event: dpa.DpEvent) -> float:
    if isinstance(event, dpa.GaussianDpEvent) and event.noise_multiplier > 0:
        z = float(event.noise_multiplier)
        return 1.0 / z**2 + 20.0 / z
    if isinstance(event, dpa.LaplaceDpEvent) and event.noise_multiplier > 0:
        return 2.0 / float(event.noise_multiplier)
    return 0.0
