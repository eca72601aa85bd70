"""`load_digits` reads scikit-learn's bundled table without importing scikit-learn.

Importing it (SciPy and pandas with it) cost every process of a project made by
``covey new`` a second or more: each client, each server, each refused run.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import covey.data._datasets as datasets_module
from covey.data import load_digits


def test_reading_the_digits_imports_no_scikit_learn() -> None:
    code = (
        "import sys\n"
        "import covey.data\n"
        "data = covey.data.load_digits()\n"
        "assert data.x_train.shape == (1438, 64), data.x_train.shape\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'pandas'})\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"


@pytest.mark.parametrize("seed", [0, 7])
def test_the_digits_are_scikit_learns_split_as_before(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn import datasets

    ours = load_digits(seed=seed, test_fraction=0.25)
    # The same split of what scikit-learn's own loader gives: the loader before.
    monkeypatch.setattr(datasets_module, "_digits", datasets.load_digits)
    theirs = load_digits(seed=seed, test_fraction=0.25)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        mine, other = getattr(ours, field), getattr(theirs, field)
        assert mine.dtype == other.dtype
        np.testing.assert_array_equal(mine, other)
    assert ours.num_classes == theirs.num_classes == 10
    assert ours.feature_names == theirs.feature_names
    assert ours.feature_names is not None
    assert ours.feature_names[:2] == ("pixel_0_0", "pixel_0_1")


def test_without_the_file_scikit_learns_loader_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    data = load_digits()
    assert data.x_train.shape == (1438, 64)
    assert data.feature_names is not None
    assert len(data.feature_names) == 64
