"""Optional PyTorch support for the client helpers: torch is imported only when used."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from covey.core._extras import MissingExtraError


def torch_module() -> Any:
    """The ``torch`` module, or an ImportError saying how to install it."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            "this helper needs PyTorch: pip install 'covey[torch]' (torch==2.13.0)"
        ) from exc


def named_parameters(module: Any) -> dict[str, Any]:
    """``{name: parameter}`` of a ``torch.nn.Module`` (the names its state_dict uses)."""
    return dict(module.named_parameters())


def as_tensors(values: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (NumPy arrays or tensors) as tensors matching ``like``'s dtype and device.

    NumPy arrays are copied (they may be read-only); tensors already matching are reused.
    """
    torch = torch_module()
    out: dict[str, Any] = {}
    for name, ref in like.items():
        if name not in values:
            raise KeyError(f"no value for parameter {name!r}")
        value = values[name]
        if isinstance(value, torch.Tensor):
            out[name] = value.detach().to(device=ref.device, dtype=ref.dtype)
        else:
            out[name] = torch.tensor(value, dtype=ref.dtype, device=ref.device)
    return out


def snapshot(module: Any) -> dict[str, Any]:
    """Detached copies of a module's parameters, e.g. the global model before local training."""
    torch_module()
    return {name: p.detach().clone() for name, p in named_parameters(module).items()}
