"""SCAFFOLD's local steps in :class:`covey.torch.TorchClient`: SGD only, and the new ``c_i``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from covey.clients._torch import torch_module
from covey.core._weights import Array, Weights

__all__ = ["GradientMean", "check_sgd"]


def check_sgd(optimizer: Any) -> None:
    """Refuse an optimizer other than SGD under SCAFFOLD (the paper's local steps)."""
    torch = torch_module()
    if not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(
            f"SCAFFOLD needs SGD local steps, but optimizer_fn gave an optimizer of type "
            f"{type(optimizer).__name__}: give torch.optim.SGD (momentum and weight decay "
            "are fine)"
        )


class GradientMean:
    """The mean over a fit's steps of the gradients SGD applies: SCAFFOLD's new ``c_i``.

    Each step's gradient is the local loss's plus SGD's weight decay
    (``weight_decay * w``, from the parameter's group of ``optimizer``), the
    full gradient of the objective the optimizer descends. With plain SGD the mean
    equals option II's ``c_i - c + (x - y) / (K lr)`` (the corrected steps' mean
    minus the correction); unlike that formula it stays the mean gradient under
    momentum, which moves ``y`` by more than ``K lr`` times it.
    """

    def __init__(self, model: Any, optimizer: Any, skip: Iterable[str] = ()) -> None:
        torch = torch_module()
        skipped = set(skip)  # the local layers: their c_i is not learnt
        self.params = {
            n: p for n, p in model.named_parameters() if p.requires_grad and n not in skipped
        }
        decay = {
            id(p): float(group.get("weight_decay", 0.0))
            for group in optimizer.param_groups
            for p in group["params"]
        }
        self.decay = {n: decay.get(id(p), 0.0) for n, p in self.params.items()}
        # half precision sums in float32; float64 is not on every device (MPS)
        wide = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
        self.sums = {
            n: torch.zeros_like(p, dtype=wide.get(p.dtype, p.dtype)) for n, p in self.params.items()
        }
        self.steps = 0

    def add(self) -> None:
        """Add the gradients ``backward()`` left and the weight decay, before the correction.

        Every trained parameter decays at every step, with a gradient or without:
        the correction gives each one a gradient, and SGD then decays it.
        """
        torch = torch_module()
        with torch.no_grad():
            for name, p in self.params.items():
                if p.grad is not None:
                    grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
                    self.sums[name].add_(grad)
                if self.decay[name]:
                    self.sums[name].add_(p.detach(), alpha=self.decay[name])
        self.steps += 1

    def mean(self, weights: Weights) -> dict[str, Array]:
        """The mean gradient per entry of ``weights`` (zeros for buffers and frozen ones)."""
        out: dict[str, Array] = {}
        for name, value in weights.items():
            total = self.sums.get(name)
            if total is None or self.steps == 0:
                out[name] = np.zeros(value.shape, value.dtype)
            else:
                out[name] = (total / self.steps).cpu().numpy().astype(value.dtype)
        return out
