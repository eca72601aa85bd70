"""XGBoost integration: federated gradient-boosted trees by bagging or by cyclic training.

Needs ``pip install 'covey[xgboost]'``; ``import covey`` never imports xgboost,
this subpackage does when it is imported.

The model travels as XGBoost's own JSON serialization inside a fixed-capacity
byte array (see :func:`to_weights`), never as a pickle. Bagging: every client
boosts the global model on its data and the server merges the new trees of all
clients into one booster (:func:`XGBoostBagging`). Cyclic: one client per round
boosts the model in turn (:func:`XGBoostCyclic`)::

    import covey
    from covey.xgboost import XGBoostBagging, XGBoostClient, initial_model

    params = {"objective": "binary:logistic", "base_score": 0.5, "max_depth": 3, "eta": 0.3}
    result = covey.simulate(lambda cid: XGBoostClient(*shards[cid], params),
                            num_clients=5, rounds=10, strategy=XGBoostBagging(),
                            initial_weights=initial_model(params, num_features=30))
"""

from covey.xgboost._client import XGBoostClient, evaluate_booster, initial_model
from covey.xgboost._model import (
    MODEL,
    SIZE,
    booster_from_weights,
    empty_booster,
    from_weights,
    num_trees,
    to_weights,
    xgboost_module,
)
from covey.xgboost._strategy import (
    XGBoostBagging,
    XGBoostCyclic,
    bagging,
    cyclic,
    merge_trees,
    round_robin,
)

xgboost_module()  # a clear ImportError now if XGBoost is missing

__all__ = [
    "MODEL",
    "SIZE",
    "XGBoostBagging",
    "XGBoostClient",
    "XGBoostCyclic",
    "bagging",
    "booster_from_weights",
    "cyclic",
    "empty_booster",
    "evaluate_booster",
    "from_weights",
    "initial_model",
    "merge_trees",
    "num_trees",
    "round_robin",
    "to_weights",
]
