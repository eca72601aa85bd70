"""Simulation: many clients on one machine, in this process or a pool of worker processes."""

from covey.sim._process import ProcessTransport
from covey.sim._simulate import SimulationResult, inline_transport, simulate

__all__ = ["ProcessTransport", "SimulationResult", "inline_transport", "simulate"]
