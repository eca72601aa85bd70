"""Secure aggregation in simulate(): a client's malformed update is refused by name."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import covey
from covey import FitResult
from covey.compress import Identity, check_applies
from covey.secagg import secure

BAD = {
    "size": ("a", lambda d: np.zeros(5), "'a' has shape (5,), expected (3,)"),
    "shape": ("a", lambda d: np.zeros((1, 3)), "'a' has shape (1, 3), expected (3,)"),
    "dtype": ("a", lambda d: d.astype(np.float32), "'a' has dtype float32, expected float64"),
    "missing": ("a", None, "missing ['a']"),
    "extra": ("zz", lambda d: np.zeros(1), "unexpected ['zz']"),
    "nan": ("b", lambda d: d * np.nan, "'b' has 2 non-finite value(s)"),
}


class Malformed(covey.Client):
    """Client 2 sends a malformed update, as weights or as a delta."""

    def __init__(self, cid: int, bad: str, form: str) -> None:
        self.cid, self.bad, self.form = cid, bad, form

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        update = {k: np.full_like(v, 0.1) for k, v in weights.items()}
        if self.cid == 2:
            name, make, _ = BAD[self.bad]
            if make is None:
                del update[name]
            else:
                update[name] = make(update.get(name, np.zeros(1)))
        if self.form == "delta":
            return FitResult(delta=update, num_examples=10)
        new = {
            k: (weights[k] + v).astype(v.dtype)
            if k in weights and weights[k].shape == v.shape
            else v
            for k, v in update.items()
        }
        return FitResult(weights=new, num_examples=10)


@pytest.mark.parametrize("form", ["weights", "delta"])
@pytest.mark.parametrize("bad", sorted(BAD))
def test_a_malformed_update_fails_that_client_with_the_unsecured_message(
    bad: str, form: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unsigned keys: fine in simulation
        strategy = secure(covey.FedAvg(fraction_evaluate=0.0), clip_range=1.0, bits=16)
    result = covey.simulate(
        lambda cid: Malformed(cid, bad, form),
        num_clients=5,
        rounds=1,
        strategy=strategy,
        initial_weights={"a": np.zeros(3), "b": np.ones(2)},
    )
    record = result.history.rounds[1]
    assert record.fit_participants == [0, 1, 3, 4]
    assert [f.cid for f in record.fit_failures] == [2]
    # Worded as the server refuses a plain update: the client named, no class path.
    assert record.fit_failures[0].error.startswith(f"client 2's {form}")
    assert BAD[bad][2] in record.fit_failures[0].error
    np.testing.assert_allclose(result.weights["a"], 0.1, atol=1e-3)


def test_compression_is_refused_for_a_secured_strategy() -> None:
    """Secure aggregation's masked integers would go uncompressed and uncounted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        strategy = secure(covey.FedAvg(fraction_evaluate=0.0), clip_range=1.0)
    with pytest.raises(ValueError, match="compression does not apply to SecureFedAvg"):
        covey.simulate(
            lambda cid: Malformed(cid, "size", "delta"),
            num_clients=3,
            rounds=1,
            strategy=strategy,
            initial_weights={"a": np.zeros(3), "b": np.ones(2)},
            compression="q8",
        )


@pytest.mark.parametrize("spec", ["none", "NONE"])
def test_compression_none_is_no_compression_for_a_secured_strategy(spec: str) -> None:
    """A sweep over schemes that includes "none" runs its secured combination, as with None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        strategy = secure(covey.FedAvg(fraction_evaluate=0.0), clip_range=1.0)
    check_applies(spec, strategy)  # refused as compression before
    check_applies(Identity(), strategy)
    with pytest.raises(ValueError, match="compression does not apply to SecureFedAvg"):
        check_applies("float16", strategy)


def test_serve_refuses_compression_for_a_secured_strategy() -> None:
    """A served run refuses it as the simulation does, before it listens."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        strategy = secure(covey.FedAvg(fraction_evaluate=0.0), clip_range=1.0)
    with pytest.raises(ValueError, match="compression does not apply to SecureFedAvg"):
        covey.serve(strategy, 1, {"a": np.zeros(3)}, "127.0.0.1:0", insecure=True, compression="q8")


def test_a_fit_metrics_function_of_ones_own_is_refused_as_it_would_never_be_called() -> None:
    """The server sees only the means secure(metrics=...) names: the function would be skipped."""

    def per_client(results: Any) -> dict[str, Any]:
        return {"losses": [m["loss"] for _, m in results]}

    strategy = covey.FedAvg(fraction_evaluate=0.0, fit_metrics=per_client)
    with pytest.raises(ValueError, match=r"fit_metrics .*per_client would never be called"):
        secure(strategy, clip_range=1.0, metrics={"loss": 10.0})
    with warnings.catch_warnings():  # the default fit_metrics and evaluate_metrics are kept
        warnings.simplefilter("ignore", UserWarning)
        secure(covey.FedAvg(evaluate_metrics=per_client), clip_range=1.0)
