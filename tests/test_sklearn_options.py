"""covey.sklearn refuses, up front and by name, models and options it cannot federate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.cluster import MiniBatchKMeans
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Perceptron, SGDClassifier, SGDRegressor
from sklearn.naive_bayes import GaussianNB, MultinomialNB
from sklearn.neural_network import MLPClassifier, MLPRegressor

import covey
from covey.sklearn import SklearnClient, get_params, initial_params, prime

CLASSES = [0, 1]


def _data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = np.abs(rng.normal(size=(n, 3))) + 2.0 * y[:, None]
    return x, y


OPTIONS: list[tuple[Callable[[], Any], str]] = [
    (lambda: SGDClassifier(early_stopping=True), r"SGDClassifier\(early_stopping=True\)"),
    (lambda: Perceptron(early_stopping=True), r"Perceptron\(early_stopping=True\)"),
    (lambda: MLPClassifier(early_stopping=True), r"MLPClassifier\(early_stopping=True\)"),
    (lambda: SGDClassifier(class_weight="balanced"), r"class_weight='balanced'.*as a dict"),
    (lambda: Perceptron(class_weight="balanced"), r"class_weight='balanced'.*as a dict"),
    (lambda: LogisticRegression(solver="liblinear"), r"liblinear.*ignores warm_start"),
]


@pytest.mark.parametrize(("make", "message"), OPTIONS)
def test_an_option_partial_fit_cannot_train_with_is_refused_up_front(
    make: Callable[[], Any], message: str
) -> None:
    x, y = _data()
    with pytest.raises(ValueError, match=message):
        SklearnClient(make(), x, y, classes=CLASSES)
    with pytest.raises(ValueError, match=message):
        prime(make(), x, y, CLASSES)
    with pytest.raises(ValueError, match=message):
        initial_params(make(), 3, CLASSES)


@pytest.mark.parametrize("make", [lambda: SGDRegressor(early_stopping=True), MLPRegressor])
def test_a_regressor_with_early_stopping_is_refused_when_primed(make: Callable[[], Any]) -> None:
    x, y = _data()
    model = make()
    model.set_params(early_stopping=True)
    with pytest.raises(ValueError, match=r"early_stopping=True\) cannot train federated"):
        prime(model, x, y.astype(float))


def test_balanced_weights_given_as_a_dict_train() -> None:
    x, y = _data()
    model = SGDClassifier(class_weight={0: 1.0, 1: 3.0}, random_state=0)
    client = SklearnClient(model, x, y, classes=CLASSES)
    assert client.fit(initial_params(SGDClassifier(), 3, CLASSES), {"round": 1}).weights


def test_an_lbfgs_mlp_with_early_stopping_primes_and_trains() -> None:
    # lbfgs never stops early (scikit-learn ignores the option): nothing to refuse
    x, y = _data()
    make = lambda: MLPClassifier((4,), solver="lbfgs", early_stopping=True, max_iter=5)  # noqa: E731
    client = SklearnClient(make(), x, y, classes=CLASSES)
    fitted = client.fit(initial_params(make(), 3, CLASSES), {"round": 1})
    assert fitted.weights is not None
    assert fitted.weights["coefs.0"].shape == (3, 4)


@pytest.mark.parametrize(
    "make", [lambda: RandomForestClassifier(n_estimators=2), GaussianNB, MultinomialNB]
)
def test_a_classifier_without_linear_or_mlp_parameters_is_refused(
    make: Callable[[], Any],
) -> None:
    x, y = _data()
    name = type(make()).__name__
    with pytest.raises(TypeError, match=f"linear models.*MLPs.*; {name} has neither"):
        SklearnClient(make(), x, y, classes=CLASSES)
    with pytest.raises(TypeError, match=f"{name} has neither"):
        initial_params(make(), 3, CLASSES)
    with pytest.raises(TypeError, match=f"{name} has neither"):
        prime(make(), x, y, CLASSES)
    with pytest.raises(TypeError, match=f"{name} has neither"):
        get_params(make().fit(x, y))


def test_a_clustering_is_refused_naming_what_is_supported() -> None:
    x, y = _data()
    with pytest.raises(TypeError, match="MiniBatchKMeans has neither"):
        SklearnClient(MiniBatchKMeans(2, n_init=1), x, y, classes=CLASSES)


@pytest.mark.parametrize(
    "make", [lambda: SGDClassifier(loss="log_loss"), LogisticRegression, MLPClassifier]
)
def test_labels_outside_the_classes_are_named_when_the_client_is_built(
    make: Callable[[], Any],
) -> None:
    x, y = _data()
    three = np.arange(len(y)) % 3
    with pytest.raises(ValueError, match=r"y_train holds labels \[2\] that are not among"):
        SklearnClient(make(), x, three, classes=CLASSES)
    with pytest.raises(ValueError, match=r"y_test holds labels \[2\] that are not among"):
        SklearnClient(make(), x, y, classes=CLASSES, x_test=x, y_test=three)
    labels = np.array(["no", "yes"])[y]
    client = SklearnClient(make(), x, labels, classes=["yes", "no"], x_test=x, y_test=labels)
    assert client.classes == ["yes", "no"]


def test_a_pipeline_is_refused_saying_to_federate_its_final_estimator() -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _data()
    with pytest.raises(TypeError, match="Pipeline has neither: federate its final estimator"):
        SklearnClient(make_pipeline(StandardScaler(), SGDClassifier()), x, y, classes=CLASSES)


@pytest.mark.parametrize(
    ("strategy", "named"),
    [
        (lambda: covey.FedProx(proximal_mu=0.1, fraction_evaluate=0.0), "proximal_mu=0.1"),
        (lambda: covey.Scaffold(num_clients=3, fraction_evaluate=0.0), "SCAFFOLD"),
    ],
)
def test_fedprox_and_scaffold_are_refused_rather_than_run_as_fedavg(
    strategy: Callable[[], covey.Strategy], named: str
) -> None:
    x, y = _data(30)

    def client(cid: int) -> SklearnClient:
        part = slice(10 * cid, 10 * cid + 10)
        return SklearnClient(SGDClassifier(random_state=0), x[part], y[part], classes=[0, 1])

    start = initial_params(SGDClassifier(), x.shape[1], [0, 1])
    with pytest.raises(covey.FederationError, match=named):
        covey.simulate(client, 3, 1, strategy(), start)
    plain = covey.simulate(client, 3, 1, covey.FedProx(proximal_mu=0.0), start)  # FedAvg
    assert plain.history.rounds[1].aggregated


def test_an_estimator_class_is_refused_naming_the_instance_to_give() -> None:
    x, y = _data()
    for call in (
        lambda: SklearnClient(SGDClassifier, x, y, classes=CLASSES),
        lambda: initial_params(SGDClassifier, 3, CLASSES),
        lambda: get_params(SGDClassifier),
    ):
        with pytest.raises(
            TypeError, match=r"model is the class SGDClassifier: .* SGDClassifier\(\)"
        ):
            call()


@pytest.mark.parametrize("name", ["x_train", "y_train", "x_test", "y_test"])
def test_data_given_as_a_generator_is_refused_naming_it(name: str) -> None:
    x, y = _data()
    data: dict[str, Any] = {"x_train": x, "y_train": y, "x_test": x, "y_test": y}
    data[name] = (row for row in data[name])
    with pytest.raises(TypeError, match=f"{name} is a generator, an iterator that is used up"):
        SklearnClient(SGDClassifier(), classes=CLASSES, **data)
