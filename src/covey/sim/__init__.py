"""Simulation: many clients in this process, in worker processes, or in Ray actors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from covey.core._lazy import lazy_exports

if TYPE_CHECKING:  # loaded on first use: a worker process needs none of them
    from covey.sim._clock import ClientClock, ClockedTransport
    from covey.sim._inline import inline_transport
    from covey.sim._process import ProcessTransport
    from covey.sim._ray import RayTransport
    from covey.sim._simulate import SimulationResult, simulate
    from covey.sim._state import ClientState

__all__ = [
    "ClientClock",
    "ClientState",
    "ClockedTransport",
    "ProcessTransport",
    "RayTransport",
    "SimulationResult",
    "inline_transport",
    "simulate",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "ClientClock": "_clock",
            "ClientState": "_state",
            "ClockedTransport": "_clock",
            "ProcessTransport": "_process",
            "RayTransport": "_ray",
            "SimulationResult": "_simulate",
            "inline_transport": "_inline",
            "simulate": "_simulate",
        },
    )
