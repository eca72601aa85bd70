"""The server side: the round loops and the run store.

:class:`RoundLoop` runs synchronous rounds over a :class:`~covey.transport.Transport`;
:class:`AsyncLoop` runs FedBuff over an :class:`~covey.transport.AsyncTransport`.
Both share one base (state, evaluation, contribution checks, aggregation,
failure records). :class:`RunStore` keeps a deployed run's state on disk so a
server restart resumes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from covey.core._lazy import lazy_exports

if TYPE_CHECKING:  # loaded on first use: the run store imports safetensors
    from covey.server._async import AsyncLoop
    from covey.server._base import EvaluateFn, FederationError, RoundCallback
    from covey.server._cidorder import in_cid_order
    from covey.server._factory import Loop, open_loop, run_config
    from covey.server._state import StateError
    from covey.server._store import RunStore
    from covey.server._sync import RoundLoop

__all__ = [
    "AsyncLoop",
    "EvaluateFn",
    "FederationError",
    "Loop",
    "RoundCallback",
    "RoundLoop",
    "RunStore",
    "StateError",
    "in_cid_order",
    "open_loop",
    "run_config",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "AsyncLoop": "_async",
            "EvaluateFn": "_base",
            "FederationError": "_base",
            "Loop": "_factory",
            "RoundCallback": "_base",
            "RoundLoop": "_sync",
            "RunStore": "_store",
            "StateError": "_state",
            "in_cid_order": "_cidorder",
            "open_loop": "_factory",
            "run_config": "_factory",
        },
    )
