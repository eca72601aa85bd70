"""The batches :class:`~covey.torch.TorchClient` trains and evaluates on."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

__all__ = ["move", "split", "trained_output"]


def move(batch: Any, device: Any) -> Any:
    """``batch`` on ``device``: a tensor moved, a list or tuple item by item, else as it is."""
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, list | tuple):
        return type(batch)(move(b, device) for b in batch)
    return batch


def split(batch: Any) -> tuple[Any, Any]:
    """A batch's ``(inputs, targets)``; a batch that is no such pair is refused, naming it."""
    if not isinstance(batch, list | tuple) or len(batch) != 2:
        got = type(batch).__name__
        if isinstance(batch, list | tuple):  # a list or tuple is fine, of two items
            got = f"a {got} of {len(batch)} item(s)"
        hint = ""
        if hasattr(batch, "shape"):  # the loader is (x, y) itself: it yields x, then y
            hint = (
                ": a loader given as the pair of tensors (x, y) yields x, then y; give "
                "DataLoader(TensorDataset(x, y), batch_size=...) instead"
            )
        raise TypeError(
            f"each batch of the data loader must be a pair (inputs, targets), got {got}{hint}"
        )
    return batch[0], batch[1]


def _count(y: Any) -> str:
    """``"1 example"``, ``"3 examples"``: the examples of a batch of targets ``y``."""
    try:
        n = len(y)
    except TypeError:
        return "one value per channel"
    return f"{n} example" + ("" if n == 1 else "s")


_ONE_VALUE = "Expected more than 1 value per channel when training"
"""The start of torch's error for a batch normalization layer given one value per channel."""


def trained_output(model: Any, x: Any, y: Any, loader: Any) -> Any:
    """``model(x)`` in training mode; a batch too small for batch normalization is named.

    Raises:
        ValueError: the batch has one example (one value per channel) and the model
            normalizes batches (``BatchNorm``), which cannot train on a single value;
            it names the loader's ``batch_size`` and examples when it is a DataLoader,
            and the fixes: ``drop_last=True`` or another ``batch_size``.
    """
    try:
        return model(x)
    except ValueError as exc:
        if not str(exc).startswith(_ONE_VALUE):
            raise
        size, dataset = getattr(loader, "batch_size", None), getattr(loader, "dataset", None)
        total = len(dataset) if isinstance(dataset, Sized) else None
        counts = ""
        if size == 1:
            counts = " (batch_size=1: every batch)"
        elif isinstance(size, int) and size > 0 and total is not None and total % size:
            counts = f" ({total} examples in batches of {size} leave {total % size})"
        raise ValueError(
            f"train_loader gave a batch of {_count(y)}, and the model's batch "
            f"normalization (BatchNorm) cannot train on one value per channel (torch: {exc}); "
            "a DataLoader's last batch holds the examples left over"
            f"{counts}: build train_loader with drop_last=True, or choose a batch_size "
            "that leaves no batch of a single example"
        ) from None
