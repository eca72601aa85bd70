"""scikit-learn integration: parameters of linear models and MLPs as Weights, and a ready client.

``SGDClassifier``, ``LogisticRegression``, ``MLPClassifier`` (and other linear
classifiers that train on from given parameters, with ``partial_fit`` or
``warm_start``, such as ``Perceptron``) federate in a few lines::

    from sklearn.linear_model import SGDClassifier
    from covey.sklearn import SklearnClient, initial_params

    client_fn = lambda cid: SklearnClient(SGDClassifier(loss="log_loss"), *shards[cid],
                                          classes=[0, 1])
    start = initial_params(SGDClassifier(), num_features=30, classes=[0, 1])

A regressor that trains on with ``partial_fit`` (``SGDRegressor``, also with the
passive-aggressive ``learning_rate="pa1"``, and ``MLPRegressor``) federates the same way, without
classes, reporting the mean squared error as its loss with R^2 and MAE::

    client_fn = lambda cid: SklearnClient(SGDRegressor(), *shards[cid])
    start = initial_params(SGDRegressor(), num_features=10)

``get_params``, ``set_params``, ``initial_params`` and ``prime`` also serve the
other linear regressors (``Ridge``, ``HuberRegressor``, ...), for a client written
by hand. Estimators of other kinds (trees, naive Bayes, clustering, a ``Pipeline``), and options
that cannot train on from the global parameters (``early_stopping``,
``class_weight="balanced"`` with ``partial_fit``, the ``liblinear`` solver),
are refused, naming what to use instead.

scikit-learn is a core dependency of covey, but this subpackage imports it
only where a function needs it.
"""

from covey.sklearn._client import SklearnClient, evaluate_model
from covey.sklearn._params import get_params, initial_params, is_mlp, prime, set_params

__all__ = [
    "SklearnClient",
    "evaluate_model",
    "get_params",
    "initial_params",
    "is_mlp",
    "prime",
    "set_params",
]
