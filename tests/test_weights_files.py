"""A model's weights saved with the safetensors library, as the docs say, load back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file


def test_sklearn_params_saved_to_a_file_load_back_untransposed(tmp_path: Path) -> None:
    # Before, get_params kept LogisticRegression's Fortran-ordered coef_, and
    # safetensors.numpy.save_file stored it transposed (same shape), silently.
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from covey.sklearn import get_params, prime, set_params

    x, y = load_iris(return_X_y=True)
    trained = LogisticRegression(max_iter=300).fit(x, y)
    params = get_params(trained)
    assert all(a.flags.c_contiguous for a in params.values())
    save_file(params, tmp_path / "model.safetensors")
    loaded = load_file(tmp_path / "model.safetensors")
    assert np.array_equal(loaded["coef"], trained.coef_)
    assert np.array_equal(loaded["intercept"], trained.intercept_)
    fresh = LogisticRegression()
    prime(fresh, x[:3], y[:3], classes=[0, 1, 2])
    set_params(fresh, loaded)
    assert np.array_equal(fresh.predict_proba(x), trained.predict_proba(x))


def test_torch_weights_of_transposed_tensors_saved_to_a_file_load_back(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from covey.torch import load_weights, to_weights

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():  # a tied or transposed parameter: not contiguous
        model.weight = torch.nn.Parameter(torch.arange(6.0).reshape(3, 2).t())
        model.register_buffer("scale16", torch.arange(6.0).reshape(3, 2).t().to(torch.bfloat16))
    weights = to_weights(model, copy=True)
    assert all(a.flags.c_contiguous for a in weights.values())
    save_file(weights, tmp_path / "model.safetensors")
    loaded = load_file(tmp_path / "model.safetensors")
    assert np.array_equal(loaded["weight"], model.weight.detach().numpy())
    assert np.array_equal(loaded["scale16"], model.scale16.float().numpy())
    other = torch.nn.Linear(3, 2)
    other.register_buffer("scale16", torch.zeros(2, 3, dtype=torch.bfloat16))
    load_weights(other, loaded)
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(other.scale16, model.scale16)
