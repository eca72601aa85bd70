"""FedProx on the client: the proximal term ``mu/2 ||w - w_global||^2`` and its gradient.

The :func:`covey.FedProx` strategy sends ``proximal_mu`` in every fit config;
a client adds the proximal term's gradient ``mu (w - w_global)`` to each local
gradient, which keeps local models near the global one on heterogeneous data.
With ``mu = 0`` training is exactly FedAvg's.

NumPy::

    mu = fedprox.proximal_mu(config)
    for batch in batches:
        grads = fedprox.proximal_grad(loss_grad(w, batch), w, weights, mu)
        w = {k: w[k] - lr * grads[k] for k in w}

PyTorch (``torch`` is imported only when these are called)::

    global_params = fedprox.torch_snapshot(model)      # after loading the weights
    loss = criterion(model(x), y) + fedprox.torch_proximal_term(model, global_params, mu)
    loss.backward()
    # or, after loss.backward():  fedprox.torch_add_proximal_grad(model, global_params, mu)

The local loss ``F_k`` is a mean over examples. A loss summed over the batch
(``reduction="sum"``) is the batch size times it, so give the torch helpers
``mu * len(batch)`` to keep the term in proportion (:class:`covey.torch.TorchClient`
does).

References:
    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.clients._torch import as_tensors, named_parameters, snapshot, torch_module
from covey.core._messages import Config
from covey.core._weights import Array, Weights

__all__ = [
    "MU_KEY",
    "proximal_grad",
    "proximal_mu",
    "proximal_term",
    "torch_add_proximal_grad",
    "torch_proximal_term",
    "torch_snapshot",
]

MU_KEY = "proximal_mu"
"""The fit-config key under which :func:`covey.FedProx` sends ``mu``."""


def proximal_mu(config: Config, default: float = 0.0) -> float:
    """The proximal weight ``mu`` the server sent (``default`` if it sent none).

    Args:
        config: The config a client's ``fit`` received.
        default: The value when the strategy is not FedProx.

    Returns:
        ``float(config["proximal_mu"])``, checked to be finite and ``>= 0``.

    Raises:
        TypeError: The entry is not a number (a string, a bool, None).
        ValueError: The entry is negative, NaN or infinite.
    """
    where = f"fit config entry {MU_KEY!r}" if MU_KEY in config else f"{MU_KEY} default"
    value = config.get(MU_KEY, default)
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{where} must be a finite number >= 0 (FedProx's proximal weight), "
            f"got {type(value).__name__} {value!r}; send it as a float, e.g. 0.01"
        )
    mu = float(value)
    if not np.isfinite(mu) or mu < 0:
        raise ValueError(
            f"{where} must be a finite number >= 0 (FedProx's proximal weight), "
            f"got {value!r}; use 0 for plain FedAvg training"
        )
    return mu


def proximal_term(weights: Weights, global_weights: Weights, mu: float) -> float:
    """``mu/2 ||w - w_global||^2`` over the floating-point arrays.

    Half-precision differences are squared in float32 and summed in float64: in float16 a sum
    of squares past 65504 overflows to inf.

    Args:
        weights: The client's current weights.
        global_weights: The round's global weights, with every floating-point name
            of ``weights`` (integer and bool arrays are left out).
        mu: The proximal weight (the fit config's ``proximal_mu``).
    """
    total = 0.0
    for name, w in weights.items():
        if w.dtype.kind != "f":
            continue
        d = np.ravel(w - global_weights[name])
        if d.dtype.itemsize < 4:
            total += float(np.sum(np.square(d, dtype=np.float32), dtype=np.float64))
        else:
            total += float(np.dot(d, d))
    return 0.5 * mu * total


def proximal_grad(
    grads: Weights, weights: Weights, global_weights: Weights, mu: float
) -> dict[str, Array]:
    """``grads + mu (w - w_global)``: a local gradient plus the proximal term's.

    Args:
        grads: The local loss's gradient, by parameter name.
        weights: The current local weights.
        global_weights: The global weights the round started from.
        mu: The proximal weight (see :func:`proximal_mu`).

    Returns:
        New arrays, one per name in ``grads``; ``mu = 0`` returns equal values.
    """
    out: dict[str, Array] = {}
    for name, g in grads.items():
        w = weights[name]
        if mu == 0.0 or w.dtype.kind != "f":
            out[name] = np.array(g, copy=True)
        else:
            # asarray: arithmetic on 0-d arrays gives NumPy scalars, which are no weights.
            term = (mu * (w - global_weights[name])).astype(g.dtype, copy=False)
            out[name] = np.asarray(g + term)
    return out


def torch_snapshot(module: Any) -> dict[str, Any]:
    """Detached copies of a ``torch.nn.Module``'s parameters: the global model of the round.

    Args:
        module: The ``torch.nn.Module``, with the round's global weights loaded.
    """
    return snapshot(module)


def torch_proximal_term(module: Any, global_params: Mapping[str, Any], mu: float) -> Any:
    """``mu/2 ||w - w_global||^2`` as a differentiable tensor, to add to the local loss.

    Args:
        module: The ``torch.nn.Module`` being trained.
        global_params: The global parameters by name: tensors (see
            :func:`torch_snapshot`) or NumPy arrays (copied on every call).
        mu: The proximal weight (times the batch size with a loss summed over
            the batch).

    Returns:
        A scalar tensor.
    """
    torch = torch_module()
    params = named_parameters(module)
    anchors = as_tensors(global_params, params)
    half = (torch.float16, torch.bfloat16)
    term: Any = 0.0
    for name, p in params.items():
        d = p - anchors[name]
        # Half precision is squared and summed in float32: in float16 a sum past 65504 is inf.
        term = term + torch.sum((d.float() if d.dtype in half else d) ** 2)
    return 0.5 * mu * term


def torch_add_proximal_grad(module: Any, global_params: Mapping[str, Any], mu: float) -> None:
    """Add ``mu (w - w_global)`` to every trained parameter's ``.grad`` (call after ``backward()``).

    Frozen parameters (``requires_grad=False``) are left without a gradient: given
    one, even of zeros, an optimizer's weight decay or momentum would move them.
    A sparse gradient (``nn.Embedding(sparse=True)``) becomes dense, as the
    term's gradient is (an optimizer for sparse gradients only, ``SparseAdam``,
    then refuses it).

    Args:
        module: The ``torch.nn.Module`` being trained.
        global_params: The global parameters by name (tensors or NumPy arrays).
        mu: The proximal weight (times the batch size with a loss summed over
            the batch).
    """
    if mu == 0.0:
        return
    torch = torch_module()
    params = named_parameters(module)
    anchors = as_tensors(global_params, params)
    with torch.no_grad():
        for name, p in params.items():
            if not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = mu * (p.detach() - anchors[name])
            elif p.grad.is_sparse:  # nn.Embedding(sparse=True): the term reaches every row
                p.grad = torch.add(mu * (p.detach() - anchors[name]), p.grad)
            else:
                p.grad.add_(p.detach() - anchors[name], alpha=mu)
