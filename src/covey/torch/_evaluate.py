"""Evaluating a PyTorch model: the mean loss over a loader, and the accuracy of a classifier."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from covey.clients._torch import dtypes_named, torch_device, torch_module
from covey.torch._batches import move, split

__all__ = ["LossMean", "evaluate_model", "evaluation", "summed"]


def summed(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` sums over a batch (``reduction="sum"``) rather than averaging.

    Raises:
        ValueError: ``loss_fn`` has ``reduction="none"`` (one loss per example).
    """
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction == "none":
        raise ValueError(
            "loss_fn has reduction='none' and gives one loss per example: give a loss "
            "reduced over the batch, reduction='mean' (the default) or 'sum'"
        )
    return reduction == "sum"


def _regression_or_probabilities(loss_fn: Any) -> tuple[bool, bool]:
    """Whether ``loss_fn`` is a regression loss, and whether it takes probabilities."""
    nn = torch_module().nn
    regression = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.GaussianNLLLoss)
    return isinstance(loss_fn, regression), isinstance(loss_fn, nn.BCELoss)


def _kept(loss_fn: Any, y: Any) -> Any:
    """The targets ``loss_fn`` counts (a bool mask), when it ignores some; else None.

    ``CrossEntropyLoss`` and ``NLLLoss`` skip class-index targets equal to their
    ``ignore_index`` (-100 by default: padding) and average over the others.
    """
    torch = torch_module()
    ignored = getattr(loss_fn, "ignore_index", None)
    if type(ignored) is not int or not isinstance(y, torch.Tensor):
        return None
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        return None  # class probabilities, not indices: nothing is ignored
    return y != ignored


class LossMean:
    """The mean loss over batches, each weighed by the targets its loss averaged over."""

    __slots__ = ("counted", "seen", "summed", "total")

    def __init__(self, summed: bool) -> None:
        self.summed = summed  # the loss is a batch's sum, not its mean
        self.total, self.counted, self.seen = 0.0, 0, 0

    def add(self, loss_fn: Any, loss: Any, y: Any) -> Any:
        """Count one batch's ``loss`` (a scalar tensor); the mask of its kept targets, or None."""
        kept = _kept(loss_fn, y)
        n = len(y) if kept is None else int(kept.sum())
        if n:  # every target ignored: the batch's mean is NaN, and counts for nothing
            value = float(loss)
            self.total += value if self.summed else value * n
        self.counted += n
        self.seen += len(y)
        return kept

    def mean(self) -> float | None:
        """The mean loss; None when every target was ignored."""
        return self.total / self.counted if self.counted else None


def _correct(out: Any, y: Any, threshold: float, kept: Any = None) -> int | None:
    """The correct predictions in a batch, or None when it is not a classification.

    Class scores ``(batch, classes)`` with class indices ``(batch,)`` count by argmax;
    one score per example (``(batch, 1)`` or ``(batch,)``) with 0/1 targets (ints,
    floats or bools, of shape ``(batch,)`` or ``(batch, 1)``) counts as positive
    above ``threshold``. Outputs that are not one tensor (a tuple of a model's
    heads, a dict) are not a classification either: only ``loss_fn`` reads them.
    """
    torch = torch_module()
    if not isinstance(out, torch.Tensor) or not isinstance(y, torch.Tensor):
        return None
    if out.ndim == 2 and out.shape[1] > 1:
        if y.ndim == 1 and not y.is_floating_point() and not y.is_complex():
            right = out.argmax(dim=1) == y
            return int((right if kept is None else right & kept).sum())
        return None
    if out.ndim not in (1, 2) or out.numel() != len(y) or y.numel() != len(y):
        return None
    if y.is_complex() or out.is_complex():
        return None
    labels = y.reshape(-1)
    if not bool(((labels == 0) | (labels == 1)).all()):
        return None
    return int(((out.reshape(-1) > threshold) == (labels == 1)).sum())


def evaluate_model(
    model: Any, loss_fn: Callable[[Any, Any], Any], loader: Iterable[Any], device: Any = "cpu"
) -> tuple[float, int, dict[str, float]]:
    """The mean loss of ``model`` over ``loader`` (and its accuracy for classifiers).

    Use it for a central ``evaluate_fn`` on the server as well as in clients.

    The accuracy is reported for two kinds of classifiers: class scores
    ``(batch, classes)`` with class indices ``(batch,)`` as targets (the
    predicted class is the argmax), and binary classifiers with one output
    per example, ``(batch, 1)`` or ``(batch,)``, with 0/1 targets (ints,
    floats or bools, ``(batch,)`` or ``(batch, 1)``). A binary output is taken
    as a logit, as ``torch.nn.BCEWithLogitsLoss`` takes it, and predicts 1
    above 0; with ``torch.nn.BCELoss`` as ``loss_fn`` it is a probability and
    predicts 1 above 0.5. A regression loss (``MSELoss``, ``L1Loss``,
    ``SmoothL1Loss``, ``HuberLoss``, ``GaussianNLLLoss``) gives no accuracy,
    and neither does a loader with any batch that is not a classification
    (outputs that are not one tensor, e.g. a tuple of heads, included).

    Targets the loss ignores (``ignore_index`` of ``CrossEntropyLoss`` or
    ``NLLLoss``, -100 by default: padding) count neither in the mean loss, which
    weighs each batch by the targets its loss averaged over, nor in the accuracy.

    The model evaluates in eval mode and is left in the mode it was in, layer by layer.

    Args:
        model: The ``torch.nn.Module``, already on ``device``.
        loss_fn: ``(outputs, targets) -> scalar tensor``, the mean over a batch
            (or the sum, for a loss with ``reduction="sum"``).
        loader: Batches ``(inputs, targets)``.
        device: Where to move each batch.

    Returns:
        ``(mean loss, number of examples, metrics)``; metrics hold ``"accuracy"``
        for the classifiers above.
    """
    mean, seen, metrics = evaluation(model, loss_fn, loader, device)
    if seen == 0:
        raise ValueError("the data loader gave no examples to evaluate")
    if mean is None:
        raise ValueError("every target the data loader gave is one the loss ignores (ignore_index)")
    return mean, seen, metrics


def evaluation(
    model: Any, loss_fn: Callable[[Any, Any], Any], loader: Iterable[Any], device: Any
) -> tuple[float | None, int, dict[str, float]]:
    """:func:`evaluate_model`'s numbers; the mean loss is None when no target counted."""
    torch = torch_module()
    device = torch_device(device)
    regression, probabilities = _regression_or_probabilities(loss_fn)
    by_sum = summed(loss_fn)
    threshold = 0.5 if probabilities else 0.0
    modes = [(m, m.training) for m in model.modules()]  # each layer's mode, put back after
    model.eval()
    losses, correct = LossMean(by_sum), 0
    classify = not regression
    try:
        with torch.no_grad():
            for batch in loader:
                x, y = move(split(batch), device)
                with dtypes_named(model, x, y):
                    out = model(x)
                    loss = loss_fn(out, y)
                kept = losses.add(loss_fn, loss, y)
                if classify:
                    hits = _correct(out, y, threshold, kept)
                    classify = hits is not None
                    correct += hits or 0
    finally:
        model.train(modes[0][1])
        for module, training in modes:  # a layer kept in another mode than the model's
            module.training = training
    counted = classify and losses.counted > 0
    metrics: dict[str, float] = {"accuracy": correct / losses.counted} if counted else {}
    return losses.mean(), losses.seen, metrics
