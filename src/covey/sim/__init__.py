"""Simulation: many clients in this process, in worker processes, or in Ray actors."""

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
