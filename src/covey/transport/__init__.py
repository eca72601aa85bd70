"""Transports: the seam between the round loop and wherever clients live.

:class:`Transport` (one exchange of tasks and replies per call) is what the
synchronous loop drives; :class:`AsyncTransport` (submit one task, take replies
as they come) is what the FedBuff loop drives. :class:`MemoryTransport` runs
clients in this process; :class:`SimulatedAsyncTransport` adds a virtual clock
with simulated client speeds. The gRPC transports are in :mod:`covey.transport.grpc`.
"""

from typing import TYPE_CHECKING

from covey.core._lazy import lazy_exports
from covey.transport._async import AsyncTransport, Durations, SimulatedAsyncTransport
from covey.transport._base import Transport
from covey.transport._memory import MemoryTransport

if TYPE_CHECKING:
    from covey.transport import grpc as grpc  # a subpackage, not in __all__

__all__ = [
    "AsyncTransport",
    "Durations",
    "MemoryTransport",
    "SimulatedAsyncTransport",
    "Transport",
]

if not TYPE_CHECKING:  # covey.transport.grpc, imported when first read: gRPC is slow to import
    __getattr__, __dir__ = lazy_exports(__name__, {}, ["grpc"])
