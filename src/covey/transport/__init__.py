"""Transports: the seam between the round loop and wherever clients live."""

from covey.transport._base import Transport
from covey.transport._memory import MemoryTransport

__all__ = ["MemoryTransport", "Transport"]
