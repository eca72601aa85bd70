"""A ready :class:`covey.Client` for any PyTorch model: fit and evaluate written once."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from covey.clients import (
    Client,
    ControlVariate,
    proximal_mu,
    torch_add_correction,
    torch_add_proximal_grad,
    torch_snapshot,
    torch_tensors,
)
from covey.clients._scaffold import server_control
from covey.clients._torch import dtypes_named, torch_device, torch_module
from covey.core import Config, EvaluateResult, FitResult
from covey.core._messages import finite
from covey.core._qfair import loss_before_fit
from covey.core._weights import Array, Weights, subtract
from covey.torch._batches import move, split, trained_output
from covey.torch._evaluate import LossMean, evaluate_model, evaluation, summed
from covey.torch._gradients import GradientMean, check_sgd
from covey.torch._local import LocalLayers, local_names
from covey.torch._weights import load_weights, to_weights

__all__ = ["TorchClient", "evaluate_model"]

OptimizerFn = Callable[[Iterable[Any]], Any]
"""``parameters -> torch.optim.Optimizer``, called at the start of every fit."""


def _check_arguments(
    torch: Any, model: Any, loss_fn: Any, optimizer_fn: Any, train_loader: Any, test_loader: Any
) -> None:
    """Refuse the usual slips in :class:`TorchClient`'s arguments, naming what to give."""
    for what, value in (("model", model), ("loss_fn", loss_fn)):
        if isinstance(value, type):
            name = value.__name__
            raise TypeError(f"{what} is the class {name}: give an instance, {name}()")
    if isinstance(optimizer_fn, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer_fn is an optimizer ({type(optimizer_fn).__name__}): give a function of the "
            "parameters that makes one, e.g. lambda params: torch.optim.SGD(params, lr=0.01), "
            "so that the client builds it on its own model"
        )
    data = torch.utils.data
    for name, loader in (("train_loader", train_loader), ("test_loader", test_loader)):
        if isinstance(loader, Iterator):
            raise TypeError(
                f"{name} is a {type(loader).__name__}, an iterator that is used up after "
                "one pass, and the client passes over its data every round: give a "
                "DataLoader or a list of batches"
            )
        if isinstance(loader, data.Dataset) and not isinstance(loader, data.IterableDataset):
            raise TypeError(
                f"{name} is a {type(loader).__name__}, whose items are single examples: give "
                "batches, e.g. DataLoader(dataset, batch_size=32, shuffle=True)"
            )


class TorchClient(Client):
    """Train and evaluate a ``torch.nn.Module`` on local data loaders.

    ``fit`` loads the global weights into the model, trains ``epochs`` passes
    over ``train_loader`` with a fresh optimizer, and returns the update
    (local minus global weights, parameters and buffers alike). When the
    strategy is :func:`covey.FedProx`, the proximal term's gradient
    ``mu (w - w_global)`` is added to every step (see :func:`covey.clients.proximal_mu`);
    with a summed loss (``reduction="sum"``) it is scaled by the batch's size, as the
    loss is, so that every step descends the batch size times FedProx's objective
    whichever the reduction.
    When it is :func:`covey.Scaffold`, the client keeps its control variate ``c_i``
    (a :class:`covey.clients.ControlVariate`), adds ``c - c_i`` to the gradient of
    every trained parameter at every step, and sends its change; the new ``c_i``
    is the mean over the round's steps of the gradients SGD applies (the loss's
    plus its weight decay, ``weight_decay * w``), which is option II of
    Karimireddy et al. for plain SGD and stays the mean gradient under
    momentum. The optimizer must then be a ``torch.optim.SGD`` (another one is
    refused at its first fit, naming it).
    ``evaluate`` returns the mean loss over ``test_loader`` and, for a
    classifier (class scores and class indices, or one logit per example and
    0/1 targets: see :func:`evaluate_model`), the ``"accuracy"``.

    The fit config may override ``"epochs"`` (an int) and ``"lr"`` (a number > 0,
    set as every parameter group's learning rate of the optimizer ``optimizer_fn``
    makes) per round: a learning-rate schedule is ``on_fit_config=lambda round:
    {"lr": ...}``.

    Args:
        model: The model, an instance (a class is refused); its layout defines the
            weights (``state_dict`` order). Batches of floating-point data in
            another dtype (float64 for a float32 model) make ``fit`` and
            ``evaluate`` raise a TypeError naming both dtypes and the fixes.
        loss_fn: ``(outputs, targets) -> scalar tensor``, e.g.
            ``torch.nn.CrossEntropyLoss()``; the mean over a batch (or the sum,
            for a loss with ``reduction="sum"``; ``reduction="none"`` is refused).
        optimizer_fn: ``parameters -> optimizer``, e.g.
            ``lambda p: torch.optim.SGD(p, lr=0.05)``.
        train_loader: Batches ``(inputs, targets)`` to train on: an iterable
            passed over again every round, usually a ``torch.utils.data.DataLoader``
            or a list (a one-pass iterator, such as a generator, is refused).
        test_loader: Batches to evaluate on, re-iterable too (None: evaluate on
            ``train_loader``).
        epochs: Passes over ``train_loader`` per fit.
        device: Where to train, e.g. ``"cpu"`` or ``"cuda:0"``; the model is moved there
            (a CUDA or MPS device this machine lacks is refused with a ValueError).
        scaffold_path: Under SCAFFOLD, a file in which the client keeps ``c_i`` between
            runs (a deployed client that restarts resumes it); None keeps it in memory.
        local: The ``state_dict`` entries the client keeps to itself (personalised
            FL): ``fnmatch`` patterns of their names (``"head.*"``, FedPer) and module
            classes whose every entry is local (``torch.nn.BatchNorm2d``, FedBN).
            ``fit`` and ``evaluate`` load the global model but for these, which keep
            the client's own values (the model's as it was at the client's first task,
            never the server's copy of them, which central DP noises), train them,
            and send a zero update for them: the global model's values stay as they
            were (under SCAFFOLD they take no correction ``c - c_i``, and their ``c_i``
            stays zero: no change of it is sent). An entry that
            picks nothing is refused, naming the model's names.
        local_path: A file the local entries are written to after each of the
            client's last three fits, read back by a client built again (a deployed
            client that restarts, a resumed or cached-out simulated one): a round sent
            again starts from the entries before it. None keeps them in memory only:
            a round sent again to the client as built starts from them as well, but a
            client built again starts its local entries afresh from its model.
            Given without ``local``, it is refused, and so is a file another client
            (another id) wrote: each client needs a file of its own. The server's
            ``evaluate_fn`` judges the global model, whose local entries are the
            initial ones (noised every round under central DP): no client's.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from covey.torch import TorchClient, to_weights
        >>> data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> model = torch.nn.Linear(4, 3)
        >>> client = TorchClient(model, torch.nn.CrossEntropyLoss(),
        ...                      lambda p: torch.optim.SGD(p, lr=0.1),
        ...                      DataLoader(data, batch_size=8))
        >>> result = client.fit(to_weights(model, copy=True), {"round": 1})
        >>> result.num_examples
        32
    """

    def __init__(
        self,
        model: Any,
        loss_fn: Callable[[Any, Any], Any],
        optimizer_fn: OptimizerFn,
        train_loader: Iterable[Any],
        test_loader: Iterable[Any] | None = None,
        *,
        epochs: int = 1,
        device: Any = "cpu",
        scaffold_path: str | os.PathLike[str] | None = None,
        local: Iterable[Any] = (),
        local_path: str | os.PathLike[str] | None = None,
    ) -> None:
        torch = torch_module()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        _check_arguments(torch, model, loss_fn, optimizer_fn, train_loader, test_loader)
        self.device = torch_device(device)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self._summed = summed(loss_fn)
        self.optimizer_fn = optimizer_fn
        self.train_loader = train_loader
        self.test_loader = test_loader if test_loader is not None else train_loader
        self.epochs = epochs
        self._scaffold_path = scaffold_path
        self._control: ControlVariate | None = None
        self._local = LocalLayers(local_names(self.model, local, torch), local_path)

    def _epochs(self, config: Config) -> int:
        epochs = config.get("epochs", self.epochs)
        if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 1:
            raise ValueError(f"config 'epochs' must be an int >= 1, got {epochs!r}")
        return int(epochs)

    def _learning_rate(self, optimizer: Any, config: Config) -> None:
        """Set every parameter group's learning rate to the config's ``"lr"``, if it has one."""
        if "lr" not in config:
            return
        lr = config["lr"]
        if not (finite(lr) and lr > 0):  # an int past the largest float is no rate either
            raise ValueError(f"config 'lr' must be a finite number > 0, got {lr!r}")
        for group in optimizer.param_groups:
            group["lr"] = float(lr)

    def fit(self, weights: Weights, config: Config) -> FitResult:
        """Train from ``weights`` on ``train_loader`` and return the update.

        Args:
            weights: The global model (read-only arrays).
            config: The round's config; ``"epochs"``, ``"lr"``, FedProx's ``"proximal_mu"`` and
                q-FedAvg's ``"loss_before_fit"`` are read from it.

        Returns:
            The delta (local minus global, in the global weights' dtypes), the
            examples seen per epoch and ``{"train_loss": mean loss of the last epoch}``
            (and, when q-FedAvg asks, the mean loss on ``train_loader`` at ``weights``
            under the name it gives). A ``train_loader`` that gives no examples (an
            empty partition) gives a delta of zeros, ``num_examples=0`` (FedAvg weighs
            it by 0) and no ``train_loss``; under SCAFFOLD ``c_i`` is kept.
        """
        torch = torch_module()
        load_weights(self.model, self._local.merged(weights, self.model, config.get("round"), True))
        asked = loss_before_fit(config)  # q-FedAvg: the loss at the received weights
        before = None if asked is None else self._loss_before()
        mu = proximal_mu(config)
        anchor = torch_snapshot(self.model) if mu > 0 else None
        optimizer = self.optimizer_fn(self.model.parameters())
        self._learning_rate(optimizer, config)
        correction, gradients = None, None
        if server_control(config) is not None:  # SCAFFOLD
            correction, gradients = self._scaffold(optimizer, weights, config)
        self.model.train()
        losses = LossMean(self._summed)
        for _ in range(self._epochs(config)):
            losses = LossMean(self._summed)  # the last epoch's
            for batch in self.train_loader:
                x, y = move(split(batch), self.device)
                optimizer.zero_grad()
                with dtypes_named(self.model, x, y):
                    loss = self.loss_fn(trained_output(self.model, x, y, self.train_loader), y)
                    loss.backward()
                if gradients is not None:
                    gradients.add()
                if anchor is not None:  # a summed loss is len(y) times the mean: so is the term
                    torch_add_proximal_grad(self.model, anchor, mu * len(y) if self._summed else mu)
                if correction is not None:
                    torch_add_correction(self.model, correction)
                optimizer.step()
                losses.add(self.loss_fn, loss.detach(), y)
        seen = losses.seen
        if seen == 0:  # an empty partition: nothing learnt, weighed by 0
            asked_loss = {} if asked is None else {asked: before}
            return self._no_examples(weights, asked_loss, gradients is not None)
        with torch.no_grad():
            # in the global model's dtypes, which the server checks the delta against:
            # a float32 model may train from float64 global weights (or bfloat16 from float32)
            local = {
                name: value.astype(weights[name].dtype, copy=False)
                for name, value in to_weights(self.model).items()
            }
            if self._local.names:  # a zero update: their global values stay as they were
                local = {**local, **{n: weights[n] for n in self._local.names}}
            delta = subtract(local, weights)
        self._local.save(self.model, config.get("round"))
        mean = losses.mean()  # None: every target of the epoch was ignored
        metrics: dict[str, Any] = {} if mean is None else {"train_loss": mean}
        if asked is not None:
            metrics[asked] = before
        if gradients is not None and self._control is not None:
            return self._control.fit_result(
                local,
                num_examples=seen,
                steps=max(gradients.steps, 1),
                lr=1.0,  # unused: the new c_i is given
                metrics=metrics,
                full_gradient=self._local.kept_control(gradients.mean(weights), self._control),
            )
        return FitResult(delta=delta, num_examples=seen, metrics=metrics)

    def _scaffold(self, optimizer: Any, weights: Weights, config: Config) -> tuple[Any, Any]:
        """SCAFFOLD's ``c - c_i`` per parameter, and the mean of the gradients SGD applies.

        The local layers are not corrected: they have no global model to drift from,
        and their ``c_i`` stays as it was (no change of it is sent).
        """
        check_sgd(optimizer)
        if self._control is None:
            self._control = ControlVariate(self._scaffold_path)
        correction = torch_tensors(self._control.correction(weights, config), self.model)
        for name in self._local.names:
            if name in correction:  # a buffer has none
                correction[name].zero_()
        return correction, GradientMean(self.model, optimizer, skip=self._local.names)

    def _loss_before(self) -> float:
        """q-FedAvg's loss on ``train_loader`` at the loaded weights; 0.0 without examples.

        0.0 as :class:`covey.models.LogisticClient` reports it: the client's update is
        nothing, so its loss only enters q-FedAvg's normalizer ``sum h_k``.
        """
        mean, seen, _ = evaluation(self.model, self.loss_fn, self.train_loader, self.device)
        if seen == 0:
            return 0.0
        if mean is None:
            raise ValueError(
                "every target train_loader gave is one the loss ignores (ignore_index)"
            )
        return mean

    def _no_examples(self, weights: Weights, metrics: dict[str, Any], scaffold: bool) -> FitResult:
        """The reply of a fit on a ``train_loader`` that gave no examples (an empty partition).

        No change of the weights (nor, under SCAFFOLD, of ``c_i``), ``num_examples=0`` and
        no ``train_loss``: the server weighs it by 0.
        """
        if scaffold and self._control is not None:  # no step taken: c_i is kept
            return self._control.fit_result(
                weights, num_examples=0, steps=0, lr=1.0, metrics=metrics
            )
        return FitResult(delta=subtract(weights, weights), num_examples=0, metrics=metrics)

    def evaluate(self, weights: Weights, config: Config) -> EvaluateResult:
        """The loss (and accuracy for classifiers) of ``weights`` on ``test_loader``.

        Args:
            weights: The global model (read-only arrays).
            config: The round's config (unused).

        Returns:
            The mean loss, the number of examples and ``{"accuracy": ...}`` for
            a classifier (see :func:`evaluate_model`). A ``test_loader`` that
            gives no examples (an empty partition) gives ``num_examples=0``, a
            NaN loss (weighed by 0) and no accuracy.

        Raises:
            ValueError: every target ``test_loader`` gave is one the loss ignores.
        """
        load_weights(
            self.model, self._local.merged(weights, self.model, config.get("round"), False)
        )
        loss, seen, metrics = evaluation(self.model, self.loss_fn, self.test_loader, self.device)
        if seen == 0:
            return EvaluateResult(loss=float("nan"), num_examples=0, metrics={})
        if loss is None:
            raise ValueError("every target test_loader gave is one the loss ignores (ignore_index)")
        return EvaluateResult(loss=loss, num_examples=seen, metrics=metrics)

    def initial_weights(self) -> dict[str, Array]:
        """The model's current weights as owned copies: a starting global model."""
        return to_weights(self.model, copy=True)
