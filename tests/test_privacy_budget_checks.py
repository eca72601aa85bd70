"""DP settings no run could keep are refused when the strategy or client is built.

An infinite (or NaN, or negative) target_epsilon would never stop a run, and
distributed DP noise too small for the PLD accountant was refused only when
round 1 was accounted, after its clients trained.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest

import covey
from covey import privacy
from covey.analytics._dp import Budget, calibrate
from covey.secagg import Noise, secure

_BAD_BUDGETS = [float("inf"), float("nan"), -1.0, 0.0, 0, True, "8"]


class _Step(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": np.full(4, 0.001)}, num_examples=3)


def _fedavg(**options: Any) -> covey.Strategy:
    return covey.FedAvg(**{"fraction_evaluate": 0.0, **options})


@pytest.mark.parametrize("target", _BAD_BUDGETS, ids=repr)
def test_central_and_dp_ftrl_refuse_a_target_epsilon_that_is_no_budget(target: Any) -> None:
    settings = {"noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5, "target_epsilon": target}
    with pytest.raises(ValueError, match="target_epsilon must be a number"):
        privacy.central(_fedavg(), **settings)
    with pytest.raises(ValueError, match="target_epsilon must be a number"):
        privacy.dp_ftrl(_fedavg(), tree_rounds=4, **settings)


@pytest.mark.parametrize("target", _BAD_BUDGETS, ids=repr)
def test_distributed_noise_refuses_a_target_epsilon_that_is_no_budget(target: Any) -> None:
    with pytest.raises(ValueError, match=r"target_epsilon must be a number > 0 and finite"):
        Noise("gaussian", 100.0, clip=1.0, delta=1e-5, target_epsilon=target)


@pytest.mark.parametrize("target", _BAD_BUDGETS, ids=repr)
def test_calibration_refuses_a_target_epsilon_that_is_no_budget(target: Any) -> None:
    with pytest.raises(ValueError, match=r"target_epsilon must be a number > 0 and finite"):
        privacy.calibrate(target, 1e-5, 0.1, 10)
    with pytest.raises(ValueError, match=r"epsilon must be a number > 0 and finite"):
        calibrate("laplace", target, 1e-6, 1)


@pytest.mark.parametrize("epsilon", _BAD_BUDGETS, ids=repr)
def test_local_dp_and_analytics_budgets_refuse_an_epsilon_that_is_no_budget(epsilon: Any) -> None:
    with pytest.raises(ValueError, match="epsilon must be a positive number"):
        privacy.LocalDP(_Step(), epsilon=epsilon, delta=1e-5, clip=1.0)
    with pytest.raises(ValueError, match="privacy budget must be a positive number"):
        Budget(epsilon, 1e-6)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0, float("nan"), float("inf"), True, "1e-5"])
def test_a_delta_outside_zero_one_is_refused_wherever_it_is_given(delta: Any) -> None:
    with pytest.raises(ValueError, match="delta must be"):
        privacy.central(_fedavg(), noise_multiplier=1.0, clip=1.0, delta=delta)
    with pytest.raises(ValueError, match="delta must be"):
        privacy.LocalDP(_Step(), epsilon=1.0, delta=delta, clip=1.0)
    with pytest.raises(ValueError, match="delta"):
        Noise("gaussian", 100.0, clip=1.0, delta=delta)
    with pytest.raises(ValueError, match=r"delta must be a number in \(0, 1\)"):
        privacy.epsilon(1.0, 0.1, 10, delta)
    with pytest.raises(ValueError, match="delta must be"):
        Budget(1.0, delta)


def test_distributed_dp_too_fine_for_the_pld_accountant_is_refused_when_built() -> None:
    noise = Noise("gaussian", 2.0, clip=1.0, delta=1e-5, accountant="pld")
    with pytest.raises(
        ValueError,
        match=r"distributed DP with sigma=2 quantized units and clip=1 at 40 bits: "
        r"the PLD accountant cannot account .*accountant='rdp'",
    ):
        secure(_fedavg(min_fit_clients=3), clip_range=1.0, bits=40, noise=noise)


def test_distributed_dp_the_accountant_can_account_still_runs() -> None:
    rdp = Noise("gaussian", 2.0, clip=1.0, delta=1e-5)
    with pytest.warns(UserWarning, match="honest-but-curious"):
        secure(_fedavg(min_fit_clients=3), clip_range=1.0, bits=40, noise=rdp)  # RDP accounts it
    pld = Noise("gaussian", 50.0, clip=1.0, delta=1e-5, accountant="pld")
    with pytest.warns(UserWarning, match="honest-but-curious"):
        strategy = secure(_fedavg(min_fit_clients=3), clip_range=1.0, bits=8, noise=pld)
    result = covey.simulate(lambda cid: _Step(), 3, 1, strategy, {"w": np.zeros(4)}, seed=0)
    spent = (result.history.rounds[-1].privacy or {})["epsilon"]
    assert math.isfinite(spent)
    assert spent > 0


@pytest.mark.parametrize("bad", [True, "1", None], ids=repr)
@pytest.mark.parametrize("name", ["noise_multiplier", "sampling_rate"])
def test_epsilon_and_calibrate_refuse_a_setting_that_is_no_number(name: str, bad: Any) -> None:
    # True was taken as 1 (an epsilon, a multiplier); a string or None raised a bare
    # TypeError from a comparison.
    settings: dict[str, Any] = {"noise_multiplier": 1.0, "sampling_rate": 0.1, name: bad}
    with pytest.raises(ValueError, match=f"{name} must be a number"):
        privacy.epsilon(rounds=10, delta=1e-5, **settings)
    if name == "sampling_rate":
        with pytest.raises(ValueError, match="sampling_rate must be a number"):
            privacy.calibrate(3.0, 1e-5, bad, 10)


@pytest.mark.parametrize("bad", [True, "1", None], ids=repr)
@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("target_quantile", "a number in (0, 1)"),
        ("learning_rate", "a finite number > 0"),
        ("count_stddev", "a finite number > 0"),
    ],
)
def test_adaptive_clipping_refuses_a_setting_that_is_no_number(
    name: str, said: str, bad: Any
) -> None:
    if name == "count_stddev" and bad is None:
        return  # None is count_stddev's default: 0.05 x the clients expected
    with pytest.raises(ValueError, match=re.escape(f"{name} must be {said}, got {bad!r}")):
        privacy.AdaptiveClipping(**{name: bad})


_BIG = 2**1100  # an int past the largest float: it compares, but float() of it overflows


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("noise_multiplier", lambda: privacy.epsilon(_BIG, 0.1, 10, 1e-5)),
        ("sampling_rate", lambda: privacy.epsilon(1.0, _BIG, 10, 1e-5)),
        ("rounds", lambda: privacy.epsilon(1.0, 0.1, _BIG, 1e-5)),
        ("delta", lambda: privacy.epsilon(1.0, 0.1, 10, _BIG)),
        ("target_epsilon", lambda: privacy.calibrate(_BIG, 1e-5, 0.1, 10)),
        ("rounds", lambda: privacy.calibrate(1.0, 1e-5, 0.1, _BIG)),
        ("epsilon", lambda: privacy.analytic_gaussian_sigma(_BIG, 1e-5)),
        ("sensitivity", lambda: privacy.analytic_gaussian_sigma(1.0, 1e-5, _BIG)),
        ("learning_rate", lambda: privacy.AdaptiveClipping(learning_rate=_BIG)),
        ("count_stddev", lambda: privacy.AdaptiveClipping(count_stddev=_BIG)),
        ("clip", lambda: privacy.central(_fedavg(), noise_multiplier=1.0, clip=_BIG, delta=1e-5)),
        (
            "target_epsilon",
            lambda: privacy.central(
                _fedavg(), noise_multiplier=1.0, clip=1.0, delta=1e-5, target_epsilon=_BIG
            ),
        ),
        (
            "expected_clients",
            lambda: privacy.central(
                _fedavg(), noise_multiplier=1.0, clip=1.0, delta=1e-5, expected_clients=_BIG
            ),
        ),
        (
            "tree_rounds",
            lambda: privacy.dp_ftrl(
                _fedavg(), noise_multiplier=1.0, clip=1.0, delta=1e-5, tree_rounds=_BIG
            ),
        ),
        ("a privacy budget", lambda: Budget(_BIG, 1e-6)),
    ],
)
def test_an_int_too_large_for_a_float_is_refused_naming_the_setting(name: str, make: Any) -> None:
    # Before: Python's own OverflowError from deep inside (or 330 digits in the message).
    with pytest.raises(ValueError, match=re.escape(name)) as info:
        make()
    assert "an int too large for a float (1101 bits)" in str(info.value)


def test_a_ledger_event_with_an_int_too_large_for_a_float_is_refused_by_name() -> None:
    event = {"type": "LaplaceDpEvent", "noise_multiplier": _BIG}
    with pytest.raises(ValueError, match="'noise_multiplier' must be a number, 0 or more, got an"):
        privacy.Ledger.from_json({"accountant": "rdp", "entries": [[event, 1]]})


def test_an_analytics_setting_too_large_for_a_float_is_refused_naming_it() -> None:
    from covey.analytics import Policy
    from covey.analytics._options import check_query

    with pytest.raises(ValueError, match=r"epsilon must be .*an int too large for a float"):
        check_query("SELECT COUNT(*) FROM t", epsilon=_BIG)
    with pytest.raises(ValueError, match=r"precision must be .*an int too large for a float"):
        check_query("SELECT COUNT(*) FROM t", precision=_BIG)
    with pytest.raises(ValueError, match=r"max_epsilon must be .*an int too large for a float"):
        Policy(max_epsilon=_BIG)
