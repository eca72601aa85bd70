"""Federated datasets: partitioners that split data across clients, and bundled datasets.

Partitioners return one ``int64`` index array per client.

Example:
    >>> from covey.data import dirichlet, load_digits
    >>> data = load_digits(seed=0)
    >>> parts = dirichlet(data.y_train, num_clients=10, alpha=0.5, seed=0)
    >>> x0, y0 = data.client(parts[0])
    >>> len(parts), parts[0].dtype, x0.shape, y0.shape
    (10, dtype('int64'), (119, 64), (119,))
"""

from covey.data._datasets import Dataset, load_breast_cancer, load_digits
from covey.data._partition import dirichlet, iid, natural, shards

__all__ = ["Dataset", "dirichlet", "iid", "load_breast_cancer", "load_digits", "natural", "shards"]
