"""Small NumPy models for examples, tests and benchmarks (no framework needed)."""

from covey.models._logistic import (
    LogisticClient,
    logistic_evaluate,
    logistic_grad,
    logistic_init,
    logistic_sgd_epoch,
)

__all__ = [
    "LogisticClient",
    "logistic_evaluate",
    "logistic_grad",
    "logistic_init",
    "logistic_sgd_epoch",
]
