"""A ready :class:`covey.Client` for scikit-learn linear models and MLPs (and regressors)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from covey.clients import Client, proximal_mu
from covey.clients._quiet import ignoring
from covey.clients._roundstate import TrainState
from covey.clients._scaffold import server_control
from covey.core import Config, EvaluateResult, FitResult
from covey.core._qfair import loss_before_fit
from covey.core._weights import Array, Weights
from covey.sklearn._inputs import (
    check_labels,
    class_labels,
    model_kind,
    refuse_one_pass,
    sample_weights,
)
from covey.sklearn._params import features, get_params, is_mlp, prime, set_params
from covey.sklearn._rate import checked_rate, rate_name, set_rate
from covey.sklearn._regress import (
    evaluate_regressor,
    regression_targets,
    regressor_scores,
    train_loss,
)
from covey.sklearn._support import check_epochs, check_kind, check_options, trains_by_fit
from covey.sklearn._trainstate import capture, check, restore
from covey.strategies._metrics import WEIGHT

__all__ = ["SklearnClient", "evaluate_model"]


def evaluate_model(
    model: Any, x: npt.ArrayLike, y: npt.ArrayLike, classes: Sequence[Any] | None = None
) -> tuple[float, dict[str, float]]:
    """The loss and accuracy of a fitted classifier on ``x, y``; a regressor's loss, R^2, MAE.

    A classifier's loss is the log loss when the model gives probabilities
    (``predict_proba``), else the error rate ``1 - accuracy``. A regressor's is
    the mean squared error, with R^2 and the mean absolute error as metrics (over
    several outputs, the mean of each output's).

    Args:
        model: A fitted (or primed and set) classifier or regressor.
        x: Features.
        y: Labels, or a regressor's targets.
        classes: Every class label, so that the log loss is defined when ``y``
            lacks some of them (None: the model's ``classes_``; a regressor's).

    Returns:
        ``(loss, {"accuracy": ...})``, or ``(mse, {"r2": ..., "mae": ...})`` for a
        regressor.
    """
    from sklearn.base import is_regressor
    from sklearn.metrics import accuracy_score, log_loss

    if is_regressor(model):
        return evaluate_regressor(model, features(x), y)
    y_arr = np.asarray(y)
    accuracy = float(accuracy_score(y_arr, model.predict(x)))
    if hasattr(model, "predict_proba"):
        try:
            proba = model.predict_proba(x)
        except AttributeError:  # e.g. SGDClassifier(loss="hinge") has no probabilities
            proba = None
        if proba is not None:
            # the columns of proba follow the model's (sorted) classes_, not the order given
            given = np.unique(np.asarray([] if classes is None else classes))
            labels = list(getattr(model, "classes_", given))
            return float(log_loss(y_arr, proba, labels=labels)), {"accuracy": accuracy}
    return 1.0 - accuracy, {"accuracy": accuracy}


def _refuse_gradient_changes(config: Config) -> None:
    """Refuse FedProx (``mu > 0``) and SCAFFOLD: scikit-learn's training takes no extra gradient.

    Trained as under FedAvg instead, the run would report FedProx's or SCAFFOLD's
    name over FedAvg's numbers (or SCAFFOLD would fail every aggregation).
    """
    mu = proximal_mu(config)
    if mu > 0:
        raise ValueError(
            f"the strategy is FedProx (proximal_mu={mu}), but SklearnClient trains with "
            "scikit-learn's own fit/partial_fit, which cannot add the proximal term: use "
            "covey.FedAvg (FedProx with proximal_mu=0), or a covey.Client whose training "
            "adds covey.clients.proximal_grad"
        )
    if server_control(config) is not None:
        raise ValueError(
            "the strategy is SCAFFOLD, but SklearnClient trains with scikit-learn's own "
            "fit/partial_fit, which cannot add the control-variate correction: use a "
            "covey.Client with covey.clients.ControlVariate (or covey.models.LogisticClient)"
        )


class SklearnClient(Client):
    """Federate a scikit-learn classifier or regressor: a linear model or an MLP.

    Classifiers: ``SGDClassifier``, ``LogisticRegression``, ``Perceptron``,
    ``MLPClassifier``, ...; regressors: ``SGDRegressor``, ``MLPRegressor``
    (scikit-learn's deprecated passive-aggressive models are ``SGDClassifier`` and
    ``SGDRegressor`` with ``penalty=None, learning_rate="pa1"``).

    ``fit`` sets the global parameters into the model and trains locally:
    ``epochs`` calls of ``partial_fit`` (one pass each) for models trained by
    a stochastic solver (``SGDClassifier``, ``SGDRegressor``, ``Perceptron``, an
    MLP with ``solver="sgd"`` or ``"adam"``). A model with a full-batch or
    other solver of its own (``LogisticRegression``, whatever its solver; an
    MLP with ``solver="lbfgs"``) trains by one ``fit`` warm-started from the
    global parameters each round (``warm_start`` is switched on): its
    ``max_iter`` bounds the local work, and ``epochs`` other than 1 (given here
    or in the fit config) is refused, naming ``max_iter``. A model with neither
    ``partial_fit`` nor ``warm_start`` is refused. ``fit`` returns the new
    parameters. ``evaluate`` gives the log loss (or error rate) and accuracy
    on the test data.

    A regressor takes no ``classes``: its targets are finite numbers, one per
    example (or, for an ``MLPRegressor`` with several outputs, one row each).
    ``SGDRegressor`` and ``MLPRegressor`` train on from the global parameters
    with ``partial_fit`` (with ``solver="lbfgs"``, one warm-started ``fit`` of
    up to ``max_iter`` iterations from them); regressors that refit from
    scratch (``Ridge``, ``LinearRegression``) are refused, naming these.
    ``fit`` reports the mean squared error on the training data after training
    as ``train_loss``, and ``evaluate`` the mean squared error as the loss with
    ``{"r2": ..., "mae": ...}`` and the sums ``"r2.moments"`` (per output: the
    squared errors, the targets and their squared deviations from their mean,
    summed). The server's default ``weighted_metrics`` averages the mean squared
    and absolute errors weighted by examples, which are those of the clients'
    test data pooled, and reports the pooled R^2 from the sums: ``r2_score`` of
    all the clients' test data concatenated, not a mean of each client's R^2
    against its own targets' mean.

    The fit config may override ``"epochs"`` and ``"lr"`` per round: the rate
    (a number > 0) is set as ``eta0`` of an SGD-trained linear model under the
    ``"constant"``, ``"invscaling"`` or ``"adaptive"`` schedule, or as an MLP's
    ``learning_rate_init`` (``solver="sgd"`` or ``"adam"``; its optimiser,
    kept between rounds, takes it too), and a round without ``"lr"`` trains at
    the model's own rate. A model with no such rate (``LogisticRegression``,
    ``learning_rate="optimal"``, ``solver="lbfgs"``) fails the fit naming why,
    rather than train at a rate the schedule did not ask for. A model without
    ``partial_fit`` (``LogisticRegression``) needs every class in each
    client's training data; with ``partial_fit`` a client may lack some (an
    MLP's ``warm_start``, which would refuse such a client, is switched off:
    ``partial_fit`` trains on from the global parameters anyway).

    FedProx with ``proximal_mu > 0`` and SCAFFOLD are refused at the first fit:
    scikit-learn's training cannot add their terms to its gradients.

    Estimators other than linear models and MLPs (trees, naive Bayes,
    clustering) are refused here, and so are options with which a model
    cannot train on from the global parameters: ``early_stopping=True`` and
    ``class_weight="balanced"`` on a model trained with ``partial_fit``
    (give the class weights as a dict instead), and
    ``LogisticRegression(solver="liblinear")``, which ignores ``warm_start``.

    ``sample_weight`` (one weight per training example) is passed to every
    ``partial_fit`` (or ``fit``) call and weights ``train_accuracy`` (a
    regressor's ``train_loss``); an estimator whose training method takes no
    ``sample_weight`` is refused here. ``num_examples`` stays the number of
    training examples (not the sum of the weights), so FedAvg weighs clients
    by their example counts whatever scale each client's weights have.
    Evaluation is unweighted.

    Args:
        model: An unfitted estimator, e.g. ``SGDClassifier(loss="log_loss")`` or
            ``SGDRegressor()``.
        x_train: Local training features (an array, a list, a DataFrame or a SciPy
            sparse matrix, not a generator: the client trains on them every round); 0
            rows (an empty partition) make a client whose fit replies 0 examples.
        y_train: Local training labels, or a regressor's targets.
        classes: Every class label of the federation (a client may lack some; a
            label of y_train or y_test outside them is refused). None (or left
            out) for a regressor, and given for a classifier.
        x_test: Local test features (None, with ``y_test`` None: evaluate on
            the training data).
        y_test: Local test labels (or targets), one per row of ``x_test``.
        epochs: ``partial_fit`` passes per round (1 for a model that trains
            by ``fit``: ``LogisticRegression``, an MLP with ``solver="lbfgs"``).
        sample_weight: One finite weight >= 0 per training example, aligned
            with ``y_train`` (None: every example counts once).
        state_path: A file in which the client keeps what its model carries from
            round to round besides the weights (an MLP's optimiser: Adam's moments,
            SGD's velocities; the sample counter ``t_`` that a learning-rate schedule
            and ``average=True``'s running average of ``SGDClassifier`` and
            ``SGDRegressor``, begun from the global parameters each round, read), for
            each of its last three rounds, so that a resumed simulation whose
            ``client_fn`` builds the client again, or a restarted deployed client,
            trains on as the run never stopped (a round sent again starts from the
            state before it). A file that is not this client's (another model's,
            another client's, damaged) is refused, naming it. None keeps it in the model only.
            An MLP's ``loss_curve_``, which scikit-learn grows by one loss a pass,
            keeps the last round's passes only, in the model and in the file, so
            neither grows with the run.

    Example:
        >>> import numpy as np
        >>> from sklearn.linear_model import SGDClassifier, SGDRegressor
        >>> from covey.sklearn import SklearnClient, initial_params
        >>> x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
        >>> client = SklearnClient(SGDClassifier(random_state=0), x, y, classes=[0, 1])
        >>> start = initial_params(SGDClassifier(), 3, [0, 1])
        >>> client.fit(start, {"round": 1}).num_examples
        20
        >>> regressor = SklearnClient(SGDRegressor(random_state=0), x, x @ [1.0, 2.0, 0.5])
        >>> sorted(regressor.fit(initial_params(SGDRegressor(), 3), {"round": 1}).metrics)
        ['train_loss']
    """

    def __init__(
        self,
        model: Any,
        x_train: npt.ArrayLike,
        y_train: npt.ArrayLike,
        classes: Sequence[Any] | None = None,
        x_test: npt.ArrayLike | None = None,
        y_test: npt.ArrayLike | None = None,
        *,
        epochs: int = 1,
        sample_weight: npt.ArrayLike | None = None,
        state_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._state = None if state_path is None else TrainState(state_path)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        self.model = model
        check_kind(model)
        self.classes = model_kind(model, classes)
        refuse_one_pass(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        self.x_train, self.y_train = features(x_train), self._targets(y_train, "y_train")
        if self.x_train.shape[0] != len(self.y_train):
            raise ValueError(
                f"x_train and y_train need the same length, got "
                f"{self.x_train.shape[0]} and {len(self.y_train)}"
            )
        if (x_test is None) != (y_test is None):
            raise ValueError(
                "x_test and y_test go together: give both, or neither to evaluate on the "
                "training data"
            )
        if x_test is None or y_test is None:
            self.x_test, self.y_test = self.x_train, self.y_train
        else:
            self.x_test, self.y_test = features(x_test), self._targets(y_test, "y_test")
            if self.x_test.shape[0] != len(self.y_test):
                raise ValueError(
                    f"x_test and y_test need the same length, got {self.x_test.shape[0]} "
                    f"and {len(self.y_test)}"
                )
        self._check_test_set()
        self.epochs = epochs
        self._by_fit = trains_by_fit(model)  # one warm-started fit a round, no passes
        if self._by_fit:
            if "warm_start" not in model.get_params():
                raise TypeError(
                    f"{type(model).__name__} has neither partial_fit nor warm_start, so it "
                    "cannot train on from the global parameters: use a model with "
                    "partial_fit (SGDClassifier, SGDRegressor, an MLP with solver='adam')"
                )
            check_epochs(model, epochs, "epochs")
            model.set_params(warm_start=True)
        elif is_mlp(model) and model.get_params().get("warm_start"):
            # partial_fit trains on from the parameters set anyway; an MLP's warm_start
            # only makes it refuse local labels that lack one of the classes
            model.set_params(warm_start=False)
        check_options(model)
        method = "fit" if self._by_fit else "partial_fit"
        self.sample_weight = sample_weights(sample_weight, model, method, len(self.y_train))
        self._rate_option, self._no_rate = rate_name(model)
        self._own_rate = None if self._rate_option is None else getattr(model, self._rate_option)
        self._rate_set = False  # a config's "lr" is in the model, not its own rate

    def _targets(self, y: npt.ArrayLike, name: str) -> npt.NDArray[Any]:
        """``y`` checked: a classifier's labels, or a regressor's finite targets."""
        if self.classes is None:
            return regression_targets(y, name, self.model)
        return class_labels(y, name)

    def _check_test_set(self) -> None:
        """Refuse labels outside ``classes``, or test targets of another width than training's."""
        if self.classes is not None:
            if self.y_test is not self.y_train:
                check_labels(self.y_test, self.classes, "y_test")
            check_labels(self.y_train, self.classes, "y_train")
            return
        if self.y_test.shape[1:] != self.y_train.shape[1:]:
            width = [1 if y.ndim == 1 else y.shape[1] for y in (self.y_train, self.y_test)]
            raise ValueError(
                f"y_train has {width[0]} target columns and y_test {width[1]}: give both "
                "the targets of the same outputs"
            )

    def _learning_rate(self, config: Config) -> None:
        """Set the config's ``"lr"`` as the model's rate, or put its own back after one."""
        if "lr" not in config:
            if self._rate_set and self._rate_option is not None:
                set_rate(self.model, self._rate_option, self._own_rate)
                self._rate_set = False
            return
        lr = checked_rate(config["lr"])
        if self._rate_option is None:
            raise ValueError(f"the fit config sets 'lr' ({lr}), but {self._no_rate}")
        set_rate(self.model, self._rate_option, lr)
        self._rate_set = True

    def _capture(self) -> dict[str, Array]:
        """The model's training state, and the rate the last round set in it."""
        state = capture(self.model)
        state["client.rate_set"] = np.asarray(self._rate_set)
        if self._rate_option is not None:
            state["client.rate"] = np.asarray(getattr(self.model, self._rate_option))
        return state

    def _restore(self, state: dict[str, Array]) -> None:
        """Set a state of :meth:`_capture` back, as the client had it after that round."""
        restore(self.model, state)
        self._rate_set = bool(state["client.rate_set"])
        if self._rate_option is not None and "client.rate" in state:
            setattr(self.model, self._rate_option, state["client.rate"].item())

    def _load(self, weights: Weights) -> None:
        # priming reads the data's shape (and, for partial_fit, a pass over some rows):
        # a client without training data primes on its test data
        x, y = (self.x_train, self.y_train) if len(self.y_train) else (self.x_test, self.y_test)
        prime(self.model, x, y, self.classes)
        set_params(self.model, weights)

    def fit(self, weights: Weights, config: Config) -> FitResult:
        """Train locally from ``weights`` and return the new parameters.

        Args:
            weights: The global parameters (read-only arrays).
            config: The round's config; ``"epochs"``, ``"lr"`` and q-FedAvg's
                ``"loss_before_fit"`` are read from it.

        Returns:
            The local parameters (in the dtypes of ``weights``), the number of
            training examples (a count, whatever ``sample_weight`` holds) and
            ``{"train_accuracy": ...}`` (a regressor's ``{"train_loss": ...}``, the
            mean squared error after training; weighted by ``sample_weight``); when
            q-FedAvg asks, also the loss of ``weights`` on the training data (as
            :meth:`evaluate` computes it) under the name it gives. Without
            training data (``x_train`` of 0 rows, an empty partition): ``weights``
            unchanged, ``num_examples=0`` (FedAvg weighs it by 0) and no
            ``train_accuracy`` (``train_loss``); the model is left untouched.
        """
        _refuse_gradient_changes(config)
        epochs = config.get("epochs", self.epochs)
        if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 1:
            raise ValueError(f"config 'epochs' must be an int >= 1, got {epochs!r}")
        if self._by_fit:
            check_epochs(self.model, epochs, "config 'epochs'")
        asked = loss_before_fit(config)  # q-FedAvg: the loss at the received weights
        if not len(self.y_train):  # an empty partition: nothing learnt, weighed by 0
            checked_rate(config.get("lr", 1.0))
            # 0.0 as covey.models.LogisticClient reports it: the update is nothing
            empty: dict[str, Any] = {} if asked is None else {asked: 0.0}
            unchanged = {k: np.array(v) for k, v in weights.items()}
            return FitResult(weights=unchanged, num_examples=0, metrics=empty)
        self._load(weights)
        rnd = config.get("round")  # a config without one: the round after the kept ones
        if rnd is None:
            rnd = 0 if self._state is None else self._state.next_round()
        if self._state is not None:  # one file given to several clients is refused
            self._state.claim("the training state in", "state_path")
        kept = None if self._state is None else self._state.before(int(rnd))
        if kept is not None and self._state is not None:
            check(self.model, kept, self._state.path)  # another model's file is refused
            self._restore(kept)
        self._learning_rate(config)
        before = None
        if asked is not None:
            before, _ = evaluate_model(self.model, self.x_train, self.y_train, self.classes)
        self._train(int(epochs))
        if self._state is not None:
            self._state.keep(int(rnd), self._capture())
        # in the global weights' dtypes (a model trained on float32 features has float32 ones)
        local = get_params(self.model)
        new = {k: v.astype(np.asarray(weights[k]).dtype, copy=False) for k, v in local.items()}
        metrics: dict[str, Any] = self._train_metrics()
        if asked is not None:
            metrics[asked] = before
        return FitResult(weights=new, num_examples=len(self.y_train), metrics=metrics)

    def _train(self, epochs: int) -> None:
        """``epochs`` passes of ``partial_fit``, or one warm-started ``fit``, on the local data."""
        from sklearn.exceptions import ConvergenceWarning

        weighted = {} if self.sample_weight is None else {"sample_weight": self.sample_weight}
        # A few local iterations per round are intended, not a failure to converge.
        with ignoring(ConvergenceWarning):
            if not self._by_fit:
                for _ in range(epochs):
                    self.model.partial_fit(self.x_train, self.y_train, **weighted)
            else:
                self._check_every_class()
                self.model.fit(self.x_train, self.y_train, **weighted)
        if getattr(self.model, "loss_curve_", None):
            # an MLP appends a loss per pass for ever; scikit-learn reads the last one only
            self.model.loss_curve_ = self.model.loss_curve_[-epochs:]

    def _train_metrics(self) -> dict[str, Any]:
        """``train_accuracy``, or a regressor's ``train_loss``, weighted by ``sample_weight``.

        With ``sample_weight``, the sum of the weights goes beside it
        (``"train_accuracy.weight"``), by which the server weighs it (not by the
        examples): the round's value is the weighted one of all clients' data.
        """
        if self.classes is None:
            name = "train_loss"
            value = train_loss(self.model, self.x_train, self.y_train, self.sample_weight)
        else:
            name = "train_accuracy"
            correct = self.model.predict(self.x_train) == self.y_train
            value = float(np.average(correct, weights=self.sample_weight))
        if self.sample_weight is None:
            return {name: value}
        return {name: value, name + WEIGHT: float(self.sample_weight.sum())}

    def _check_every_class(self) -> None:
        if self.classes is None:  # a regressor (an MLP trained with a warm-started fit)
            return
        local = sorted(np.unique(self.y_train).tolist())
        if local != sorted(self.classes):
            raise ValueError(
                f"{type(self.model).__name__} has no partial_fit and retrains on the local "
                f"labels alone, which hold {local} of the federation's classes {self.classes}: "
                "use a model with partial_fit, e.g. SGDClassifier(loss='log_loss'), for "
                "clients that lack a class"
            )

    def evaluate(self, weights: Weights, config: Config) -> EvaluateResult:
        """The loss and accuracy (a regressor's R^2 and MAE) of ``weights`` on the test data.

        Args:
            weights: The global parameters (read-only arrays).
            config: The round's config (unused).

        Returns:
            The log loss (or error rate), the number of examples and the accuracy;
            for a regressor the mean squared error and ``{"r2": ..., "mae": ...}``
            with ``"r2.moments"``, the sums from which the server pools R^2 (left
            out if a prediction is not finite).
            Without test data (``x_test`` of 0 rows, an empty partition): 0
            examples, a NaN loss (weighed by 0) and no metrics.
        """
        if len(self.y_test) == 0:
            return EvaluateResult(loss=float("nan"), num_examples=0, metrics={})
        self._load(weights)
        if self.classes is None:  # with the sums that pool R^2 across the clients
            loss, metrics = regressor_scores(self.model, self.x_test, self.y_test)
        else:
            loss, metrics = evaluate_model(self.model, self.x_test, self.y_test, self.classes)
        return EvaluateResult(loss=loss, num_examples=len(self.y_test), metrics=metrics)
