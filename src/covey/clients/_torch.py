"""Optional PyTorch support for the client helpers: torch is imported only when used."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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


def torch_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` this machine has, or a ValueError saying what to give.

    ``torch.device("cuda")`` is accepted on a machine without CUDA; only moving a
    tensor there fails, with an AssertionError that names neither the argument
    nor the fix. Checked here for CUDA and MPS (the backends torch can tell are
    missing); other device types are left to torch.
    """
    torch = torch_module()
    if not isinstance(device, str | int | torch.device) or isinstance(device, bool):
        raise TypeError(
            f"device must be a str such as 'cpu' or 'cuda:0', or a torch.device, got "
            f"{type(device).__name__} {device!r}"
        )
    try:
        out = torch.device(device)
    except RuntimeError as exc:
        if isinstance(device, int) and device >= 0:  # torch's "Cannot access accelerator"
            raise ValueError(
                f"device {device!r} is the index of an accelerator (a CUDA device, 'cuda:"
                f"{device}'), and this machine has none, or torch was built without one: "
                "covey trains on 'cpu', 'cuda:N' or 'mps'; give device='cpu'"
            ) from None
        raise ValueError(
            f"device {device!r} is not a torch device ({exc}): give e.g. 'cpu' or 'cuda:0'"
        ) from None
    if out.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (out.index or 0) >= count:
            fix = (
                f"it has {count} CUDA device(s): give an index below {count}"
                if count
                else "it has no CUDA device, or torch was built without CUDA: give device='cpu'"
            )
            raise ValueError(f"device {device!r} is not available on this machine: {fix}")
    if out.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {device!r} is not available: this machine (or torch build) has no MPS "
            "support; give device='cpu'"
        )
    return out


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


def _float_dtype(module: Any) -> Any:
    """The dtype of ``module``'s first floating-point parameter or buffer; None if it has none."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _floats(value: Any) -> list[Any]:
    """The floating-point tensors in ``value``: a tensor, or a list, tuple or dict of them."""
    torch = torch_module()
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for v in value for t in _floats(v)]
    return []


#: The Tensor and Module method that casts to each floating-point dtype.
_CASTS = {
    "torch.float16": "half",
    "torch.bfloat16": "bfloat16",
    "torch.float32": "float",
    "torch.float64": "double",
}


def _fixes(data: list[str], model: Any) -> str:
    """How to make data of the dtypes ``data`` and a model of dtype ``model`` agree."""
    to_data = _CASTS.get(str(model))
    fix = (
        f"convert the data, .{to_data}() on the tensors"
        if to_data
        else f"convert the data, .to({model}) on the tensors"
    )
    if "torch.float64" in data and to_data:
        fix += f" (NumPy arrays are float64: torch.from_numpy(x).{to_data}())"
    to_model = _CASTS.get(data[0]) if len(data) == 1 else None
    if to_model:
        fix += f", or the model, model.{to_model}()"
    if to_model == "double":
        fix += " (or torch.set_default_dtype(torch.float64) before building it)"
    return fix


def dtype_mismatch(module: Any, inputs: Any, targets: Any) -> str | None:
    """Say which of a batch's floating-point tensors differ from ``module``'s dtype; else None.

    The fixes named are the casts between the two dtypes: ``.half()`` on the data of a
    float16 model, ``model.float()`` for float32 data, say.
    """
    want = _float_dtype(module)
    if want is None:
        return None
    for what, value in (("inputs", inputs), ("targets", targets)):
        other = sorted({str(t.dtype) for t in _floats(value) if t.dtype != want})
        if other:
            return (
                f"the batch's {what} are {' and '.join(other)}, the model's weights {want}, and "
                f"torch computes a layer in one dtype: {_fixes(other, want)}"
            )
    return None


@contextmanager
def dtypes_named(module: Any, inputs: Any, targets: Any) -> Iterator[None]:
    """Run a step of ``module`` on a batch; torch's error for a batch of another dtype is named.

    Raises:
        TypeError: the step raised torch's RuntimeError about dtypes, and the batch
            holds floating-point tensors of a dtype other than the model's (float64
            data for a float32 model, say); the original error is its ``__cause__``.
        ValueError: the step's backward pass failed and no parameter of the model
            requires a gradient (every layer frozen).
    """
    try:
        yield
    except RuntimeError as exc:
        if "require grad" in str(exc) and not any(p.requires_grad for p in module.parameters()):
            raise ValueError(
                "every parameter of the model has requires_grad=False, so fit has nothing "
                "to train: unfreeze the layers to train (p.requires_grad_(True)), or judge "
                "the model without training it on the server (covey.torch.evaluate_model, "
                f"simulate(rounds=0, evaluate_fn=...)) (torch: {exc})"
            ) from exc
        message = dtype_mismatch(module, inputs, targets) if "type" in str(exc).lower() else None
        if message is None:
            raise
        raise TypeError(f"{message} (torch: {exc})") from exc
