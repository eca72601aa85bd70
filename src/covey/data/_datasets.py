"""Small datasets bundled with scikit-learn, split into train and test sets (no downloads)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from covey.data._partition import _rng

__all__ = ["Dataset", "load_breast_cancer", "load_digits"]

FloatArray = npt.NDArray[np.float64]
LabelArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset split into train and test sets.

    The arrays are stored as read-only views so that simulated clients cannot modify shared
    data in place (the caller's arrays are left writable); indexing with an index array,
    as :meth:`client` does, returns a writable copy.

    Attributes:
        x_train: Training features, ``float64`` of shape ``(n_train, num_features)``.
        y_train: Training labels, ``int64`` of shape ``(n_train,)``, in ``range(num_classes)``.
        x_test: Test features, ``float64`` of shape ``(n_test, num_features)``.
        y_test: Test labels, ``int64`` of shape ``(n_test,)``, in ``range(num_classes)``.
        num_classes: The number of classes.
        feature_names: One name per feature column, or ``None`` if unknown.
        name: A short name of the dataset, e.g. ``"digits"``.
    """

    x_train: FloatArray
    y_train: LabelArray
    x_test: FloatArray
    y_test: LabelArray
    num_classes: int
    feature_names: tuple[str, ...] | None
    name: str

    def __post_init__(self) -> None:
        for field in ("x_train", "y_train", "x_test", "y_test"):
            view = np.asarray(getattr(self, field)).view()
            view.setflags(write=False)
            object.__setattr__(self, field, view)
        for x, y, split in (
            (self.x_train, self.y_train, "train"),
            (self.x_test, self.y_test, "test"),
        ):
            if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(
                    f"{split} set needs 2-D features and 1-D labels of the same length, got "
                    f"shapes {x.shape} and {y.shape}"
                )

    @property
    def num_features(self) -> int:
        """The number of feature columns."""
        return int(self.x_train.shape[1])

    def client(self, indices: npt.ArrayLike) -> tuple[FloatArray, LabelArray]:
        """Return one client's training examples.

        Args:
            indices: Indices into the training set, e.g. one entry of a partitioner's result,
                or a boolean mask over it. Floats are taken only if they are whole numbers.

        Returns:
            ``(x_train[indices], y_train[indices])``.

        Raises:
            TypeError: ``indices`` are not integers or booleans.
            ValueError: ``indices`` are not one flat array: a client id (``client(3)``
                would give one example's features), a partitioner's whole result or
                nested lists; or a boolean mask of another length than the training set.
        """
        index = _flat_indices(indices, len(self.y_train))
        if index.dtype.kind == "f" and np.all(np.isfinite(index) & (index == np.round(index))):
            index = index.astype(np.int64)  # e.g. [] or [1.0, 2.0]
        elif index.dtype.kind not in "biu":
            shown = index.reshape(-1)[:3].tolist()
            raise TypeError(
                f"indices must be integers or a boolean mask, got {index.dtype} values "
                f"such as {shown}"
            )
        if index.dtype != np.bool_:
            index = index.astype(np.int64, copy=False)
        return self.x_train[index], self.y_train[index]


def _flat_indices(indices: npt.ArrayLike, n: int) -> npt.NDArray[Any]:
    """``indices`` as a 1-D array, or an error naming what was given instead."""
    try:
        index = np.asarray(indices)
    except ValueError:  # arrays of different lengths: a partitioner's whole result
        index = None
    if index is not None and index.ndim == 0:
        raise ValueError(
            f"indices must be a 1-D array of indices into the training set (one client's "
            f"entry of a partitioner's result, e.g. data.client(parts[cid])), got "
            f"{type(indices).__name__} {indices!r}"
        )
    if index is not None and index.dtype.kind == "O":  # e.g. Python ints in an object array
        try:
            index = np.asarray(index.tolist())
        except ValueError:
            index = None
    if index is None or index.ndim != 1:
        shape = "arrays of different lengths" if index is None else f"shape {index.shape}"
        raise ValueError(
            f"indices must be a 1-D array of indices into the training set, got {shape}: "
            + _flat_hint(indices)
        )
    if index.dtype == np.bool_ and len(index) != n:
        raise ValueError(
            f"a boolean mask must have one entry per training example ({n}), got {len(index)}"
        )
    return index


def _flat_hint(indices: object) -> str:
    """How to pass the indices meant by ``indices``, which are not one flat array."""
    if isinstance(indices, tuple) and len(indices) == 1 and np.ndim(indices[0]) == 1:
        # np.where(mask) and np.nonzero(mask) give a tuple of one array per dimension
        return (
            "a tuple of one array, as np.where(mask) or np.nonzero(mask) return: pass "
            "np.flatnonzero(mask), or the boolean mask itself"
        )
    return (
        "a partitioner returns one array per client, so pass one of them (data.client(parts[cid]))"
    )


def _check_fraction(test_fraction: float) -> float:
    try:
        value = float(test_fraction)
    except (TypeError, ValueError):
        raise TypeError(
            f"test_fraction must be a number, got {type(test_fraction).__name__} {test_fraction!r}"
        ) from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    return value


def _split(
    y: LabelArray, test_fraction: float, seed: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Return shuffled train and test indices, stratified by label."""
    rng = _rng(seed)
    is_test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        num_test = round(test_fraction * len(members))
        is_test[rng.choice(members, size=num_test, replace=False)] = True
    train = rng.permutation(np.flatnonzero(~is_test))
    test = rng.permutation(np.flatnonzero(is_test))
    return train, test


def _build(
    bunch: Any,
    *,
    test_fraction: float,
    seed: int,
) -> tuple[FloatArray, LabelArray, FloatArray, LabelArray, int, tuple[str, ...] | None]:
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = _split(y, _check_fraction(test_fraction), seed)
    names = getattr(bunch, "feature_names", None)
    feature_names = None if names is None else tuple(str(n) for n in names)
    num_classes = len(bunch.target_names)
    return x[train], y[train], x[test], y[test], num_classes, feature_names


def _digits() -> Any:
    """scikit-learn's digits, read from the file it bundles without importing scikit-learn.

    Importing it (SciPy and pandas with it) takes a second or more of every process
    that reads the digits: each client and server of a project made by ``covey new``.
    The table is read as ``sklearn.datasets.load_digits`` reads it; without the file
    (another layout, scikit-learn missing), that function is called.
    """
    import gzip
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    try:
        spec = importlib.util.find_spec("sklearn")
    except ValueError:  # sys.modules["sklearn"] is None: importing it is blocked
        spec = None
    found = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(found[0], "datasets", "data", "digits.csv.gz") if found else None
    if path is None or not path.is_file():
        from sklearn import datasets

        return datasets.load_digits()
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return SimpleNamespace(
        data=data[:, :-1],
        target=data[:, -1].astype(int, copy=False),
        feature_names=[f"pixel_{row}_{col}" for row in range(8) for col in range(8)],
        target_names=np.arange(10),
    )


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load the 8x8 handwritten digits dataset bundled with scikit-learn (1797 images).

    Args:
        test_fraction: Fraction of each class held out for the test set, in (0, 1).
        seed: Seed for :func:`numpy.random.default_rng`, used to shuffle and split.

    Returns:
        A :class:`Dataset` with 64 pixel features scaled to [0, 1] (divided by 16) and
        10 classes.
    """
    x_train, y_train, x_test, y_test, num_classes, names = _build(
        _digits(), test_fraction=test_fraction, seed=seed
    )
    return Dataset(
        x_train=x_train / 16.0,
        y_train=y_train,
        x_test=x_test / 16.0,
        y_test=y_test,
        num_classes=num_classes,
        feature_names=names,
        name="digits",
    )


def load_breast_cancer(
    *, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True
) -> Dataset:
    """Load the Wisconsin breast cancer dataset bundled with scikit-learn (569 examples).

    Args:
        test_fraction: Fraction of each class held out for the test set, in (0, 1).
        seed: Seed for :func:`numpy.random.default_rng`, used to shuffle and split.
        standardize: If ``True``, scale both sets with the training set's per-feature mean
            and standard deviation (a constant feature is only centred).

    Returns:
        A :class:`Dataset` with 30 features and 2 classes (0 = malignant, 1 = benign).
    """
    from sklearn import datasets

    x_train, y_train, x_test, y_test, num_classes, names = _build(
        datasets.load_breast_cancer(),
        test_fraction=test_fraction,
        seed=seed,
    )
    if standardize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0.0] = 1.0
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        feature_names=names,
        name="breast_cancer",
    )
