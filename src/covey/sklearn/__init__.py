"""scikit-learn integration: parameters of linear models and MLPs as Weights, and a ready client.

``SGDClassifier``, ``LogisticRegression``, ``MLPClassifier`` (and other linear
classifiers with ``coef_`` and ``intercept_``) federate in a few lines::

    from sklearn.linear_model import SGDClassifier
    from covey.sklearn import SklearnClient, initial_params

    client_fn = lambda cid: SklearnClient(SGDClassifier(loss="log_loss"), *shards[cid],
                                          classes=[0, 1])
    start = initial_params(SGDClassifier(), num_features=30, classes=[0, 1])

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
