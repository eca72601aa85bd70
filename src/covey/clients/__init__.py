"""The client side: the :class:`Client` base class, the task runtime, and client helpers.

A client answers tasks (``fit``, ``evaluate``, ``properties`` and any kind
added with :func:`register_task`). :func:`run_task` turns a task into a reply
wherever the client lives, so the same client runs in simulation and deployed.
The FedProx and SCAFFOLD helpers are the client halves of those strategies.
"""

from covey.clients._client import (
    Client,
    ClientFn,
    ClientLike,
    TaskHandler,
    register_task,
    run_task,
    task_kinds,
)
from covey.clients._fedprox import (
    MU_KEY,
    proximal_grad,
    proximal_mu,
    proximal_term,
    torch_add_proximal_grad,
    torch_proximal_term,
    torch_snapshot,
)
from covey.clients._scaffold import (
    CLIENT_DELTA,
    SERVER_CONTROL,
    ControlVariate,
    torch_add_correction,
    torch_tensors,
)

__all__ = [
    "CLIENT_DELTA",
    "MU_KEY",
    "SERVER_CONTROL",
    "Client",
    "ClientFn",
    "ClientLike",
    "ControlVariate",
    "TaskHandler",
    "proximal_grad",
    "proximal_mu",
    "proximal_term",
    "register_task",
    "run_task",
    "task_kinds",
    "torch_add_correction",
    "torch_add_proximal_grad",
    "torch_proximal_term",
    "torch_snapshot",
    "torch_tensors",
]
