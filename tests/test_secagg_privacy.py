"""Secure aggregation composed with DP: central DP on the unmasked sum, and distributed DP."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import covey
from covey import privacy
from covey.core._hooks import RESUMED_AFTER_CRASH
from covey.secagg import Noise, secure
from covey.secagg._ring import scale

DIM, CLIP_RANGE, BITS = 2000, 1.0, 16
UNIT = 1.0 / scale(CLIP_RANGE, BITS)  # one quantization step


class Fixed(covey.Client):
    """Returns the same small update every round (norm about 0.26, values below 0.01)."""

    def __init__(self, cid: int, zero: bool = False) -> None:
        rng = np.random.default_rng(cid)
        self.update = np.zeros(DIM) if zero else rng.uniform(-0.01, 0.01, DIM)
        self.n = 10 + 7 * cid

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta={"w": self.update}, num_examples=self.n)


def _zeros(cid: int) -> Fixed:
    return Fixed(cid, zero=True)


def _params() -> dict[str, np.ndarray]:
    return {"w": np.zeros(DIM)}


def _fedavg(**options: Any) -> covey.Strategy:
    return covey.FedAvg(**{"fraction_evaluate": 0.0, "min_fit_clients": 0, **options})


def _secure(strategy: covey.Strategy, **kw: Any) -> covey.Strategy:
    with pytest.warns(UserWarning, match="honest-but-curious"):
        return secure(strategy, clip_range=CLIP_RANGE, bits=BITS, **kw)


def _central(rate: float = 1.0, **kw: Any) -> covey.Strategy:
    options: dict[str, Any] = {
        "noise_multiplier": 1.1,
        "clip": 1.0,
        "delta": 1e-5,
        "noise_seed": 3,
        "clipping": "client",
    }
    return privacy.central(_fedavg(fraction_fit=rate), **{**options, **kw})


# -- central DP on the unmasked sum ------------------------------------------------------


def test_secure_central_dp_equals_plain_central_dp_within_the_quantization_error() -> None:
    n, rounds = 20, 2
    plain = covey.simulate(Fixed, n, rounds, _central(), _params(), seed=0)
    safe = covey.simulate(Fixed, n, rounds, _secure(_central()), _params(), seed=0)
    # Same noise seed, same clipped updates: only each client's rounding (below one
    # unit per value) differs, summed over n clients and divided by the n expected.
    np.testing.assert_allclose(safe.weights["w"], plain.weights["w"], atol=rounds * UNIT)
    assert not np.allclose(safe.weights["w"], 0.0, atol=1e-3)  # the noise is there
    for rnd in range(1, rounds + 1):
        a, b = plain.history[rnd], safe.history[rnd]
        assert b.privacy == a.privacy
        assert b.privacy is not None
        assert b.privacy["epsilon"] == privacy.epsilon(1.1, 1.0, rnd, 1e-5)
        assert b.aggregate_info["dp"]["noise_std"] == pytest.approx(1.1)
        assert b.aggregate_info["dp"]["clients"] == n
        assert b.aggregate_info["secagg_client_clip"] < 1.0


def test_secure_central_dp_noise_on_the_sum_has_the_stated_scale() -> None:
    z, clip, n, rate = 1.3, 0.7, 30, 0.5
    dp = _central(rate, noise_multiplier=z, clip=clip)
    result = covey.simulate(_zeros, n, 1, _secure(dp), _params(), seed=0)
    record = result.history[1]
    sampled = record.aggregate_info["dp"]["clients"]
    assert 0 < sampled < n  # Poisson sampling at q=0.5
    assert sorted(record.fit_participants) == sorted(set(record.fit_participants))
    assert len(record.fit_participants) == sampled
    # zero updates: the model is N(0, (z clip)^2) over the expected count q n.
    m = rate * n
    assert record.aggregate_info["dp"]["expected_clients"] == m
    assert np.std(result.weights["w"]) == pytest.approx(z * clip / m, rel=0.06)
    assert (record.privacy or {})["epsilon"] == privacy.epsilon(z, rate, 1, 1e-5)


def test_secure_central_dp_stops_before_exceeding_target_epsilon() -> None:
    z, delta = 1.1, 1e-5
    eps2, eps3 = (privacy.epsilon(z, 1.0, r, delta) for r in (2, 3))
    target = (eps2 + eps3) / 2
    dp = _central(noise_multiplier=z, target_epsilon=target)
    result = covey.simulate(Fixed, 10, 6, _secure(dp), _params(), seed=0)
    assert [r.round for r in result.history.rounds if r.round > 0] == [1, 2]
    assert (result.history.rounds[-1].privacy or {})["epsilon"] == pytest.approx(eps2)
    assert "privacy budget" in (result.history.stopped_reason or "")


def test_secure_central_dp_on_the_process_backend_gives_the_same_model() -> None:
    inline = covey.simulate(Fixed, 6, 1, _secure(_central()), _params(), seed=0)
    spawned = covey.simulate(
        Fixed, 6, 1, _secure(_central()), _params(), seed=0, backend="process", num_workers=2
    )
    # The server's noise follows the noise seed; the clients' rounding differs.
    np.testing.assert_allclose(spawned.weights["w"], inline.weights["w"], atol=2 * UNIT)
    assert spawned.history[1].privacy == inline.history[1].privacy


def test_a_client_update_larger_than_the_clip_is_clipped_before_masking() -> None:
    direction = np.ones(DIM) / math.sqrt(DIM)

    class Big(covey.Client):
        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            return covey.FitResult(delta={"w": 5.0 * direction}, num_examples=1)

    dp = _central(noise_multiplier=1e-9, clip=0.5)
    result = covey.simulate(lambda cid: Big(), 8, 1, _secure(dp), _params(), seed=0)
    # Each update is cut to (a little under) norm 0.5; their sum over 8 expected has norm <= 0.5.
    norm = float(np.linalg.norm(result.weights["w"]))
    assert 0.5 * 0.99 < norm <= 0.5


def test_central_dp_around_secure_aggregation_is_refused() -> None:
    with pytest.raises(ValueError, match=r"nest it the other way: covey\.secagg\.secure"):
        privacy.central(_secure(_fedavg()), noise_multiplier=1.0, clip=1.0, delta=1e-5)
    with pytest.raises(ValueError, match="secure aggregation"):
        privacy.dp_ftrl(
            _secure(_fedavg()), noise_multiplier=1.0, clip=1.0, delta=1e-5, tree_rounds=4
        )


def test_server_side_clipping_and_dp_ftrl_are_refused_under_secure_aggregation() -> None:
    with pytest.raises(ValueError, match="clipping='client'"):
        secure(_central(clipping="server"), clip_range=1.0)
    ftrl = privacy.dp_ftrl(_fedavg(), noise_multiplier=1.0, clip=1.0, delta=1e-5, tree_rounds=4)
    with pytest.raises(ValueError, match="DP-FTRL needs each client's update"):
        secure(ftrl, clip_range=1.0)
    with pytest.raises(ValueError, match="not both"):
        secure(_central(), clip_range=1.0, noise=Noise("gaussian", 100.0))


def test_a_clip_below_the_rounding_error_is_refused_before_anyone_trains() -> None:
    dp = _secure(_central(clip=1e-3))  # sqrt(2000) units of 1/32767 is about 1.4e-3
    with pytest.raises(ValueError, match="below the rounding error"):
        covey.simulate(Fixed, 4, 1, dp, _params(), seed=0)


# -- distributed DP --------------------------------------------------------------------


def _distributed(mechanism: str, sigma: float, **kw: Any) -> Noise:
    return Noise(mechanism, sigma, clip=1.0, delta=1e-5, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mechanism", ["gaussian", "skellam"])
def test_distributed_dp_is_accounted_per_round_with_noise_of_the_stated_scale(
    mechanism: str,
) -> None:
    n, rounds, sigma = 12, 3, 4000.0
    strategy = _secure(_fedavg(min_fit_clients=n), noise=_distributed(mechanism, sigma))
    result = covey.simulate(_zeros, n, rounds, strategy, _params(), seed=0)
    # One client's sensitivity is clip / UNIT quantized units; the round's sum holds
    # the noise of n clients, of which the n - 1 others protect one client.
    z = sigma * math.sqrt(n - 1) * UNIT / 1.0
    for record in result.history.rounds[-rounds:]:
        info = record.aggregate_info["distributed_dp"]
        assert info["clients"] == n
        assert info["noise_multiplier"] == pytest.approx(z)
        assert record.privacy == {
            "epsilon": pytest.approx(privacy.epsilon(z, 1.0, record.round, 1e-5), rel=1e-9),
            "delta": 1e-5,
        }
    # The mean of n zero updates carries noise of std sigma sqrt(n) / n quantized units
    # a round; after `rounds` rounds the model holds `rounds` independent such draws.
    per_round = sigma * math.sqrt(n) / n * UNIT
    assert result.history[1].aggregate_info["secagg_noise_std"] == pytest.approx(per_round)
    assert np.std(result.weights["w"]) == pytest.approx(per_round * math.sqrt(rounds), rel=0.08)
    printed = strategy.hooks[-1].printed  # type: ignore[attr-defined]
    assert "distributed DP under secure aggregation" in printed
    assert f"({result.history[rounds].privacy['epsilon']:.4g}, 1e-05)" in printed  # type: ignore[index]


def test_distributed_dp_resumes_with_the_ledger_of_the_history() -> None:
    n, sigma = 6, 3000.0
    strategy = _secure(_fedavg(min_fit_clients=n), noise=_distributed("gaussian", sigma))
    first = covey.simulate(_zeros, n, 2, strategy, _params(), seed=0)
    hook = strategy.hooks[-1]
    history = covey.History.from_json(first.history.to_json())  # as saved with the run
    hook.start(None, None, history)
    record = covey.core.RoundRecord(round=3, fit_participants=list(range(n)))
    hook.after_round(record, None)
    z = sigma * math.sqrt(n - 1) * UNIT
    assert record.privacy == {
        "epsilon": pytest.approx(privacy.epsilon(z, 1.0, 3, 1e-5), rel=1e-9),
        "delta": 1e-5,
    }


@pytest.mark.parametrize(("crashed", "rounds"), [(True, 4), (False, 3)])
def test_distributed_dp_resumed_after_a_crash_charges_the_round_redone(
    crashed: bool, rounds: int
) -> None:
    n, sigma = 6, 3000.0
    strategy = _secure(_fedavg(min_fit_clients=n), noise=_distributed("gaussian", sigma))
    first = covey.simulate(_zeros, n, 2, strategy, _params(), seed=0)
    hook = strategy.hooks[-1]
    history = covey.History.from_json(first.history.to_json())
    if crashed:  # as a deployed resume marks a run whose server died
        history.config[RESUMED_AFTER_CRASH] = True
    hook.start(None, None, history)
    record = covey.core.RoundRecord(round=3, fit_participants=list(range(n)))
    hook.after_round(record, None)
    z = sigma * math.sqrt(n - 1) * UNIT
    assert record.privacy == {
        "epsilon": pytest.approx(privacy.epsilon(z, 1.0, rounds, 1e-5), rel=1e-9),
        "delta": 1e-5,
    }


def test_distributed_dp_refuses_to_resume_a_run_whose_rounds_had_no_noise() -> None:
    n = 4
    plain = covey.simulate(_zeros, n, 2, _secure(_fedavg(min_fit_clients=n)), _params(), seed=0)
    noisy = _secure(_fedavg(min_fit_clients=n), noise=_distributed("gaussian", 3000.0))
    history = covey.History.from_json(plain.history.to_json())
    # its privacy statement would cover rounds 1 and 2, released without noise
    with pytest.raises(ValueError, match=r"rounds 1, 2 .*without distributed DP"):
        noisy.hooks[-1].start(None, None, history)


def test_distributed_dp_stops_before_exceeding_target_epsilon() -> None:
    n, sigma = 8, 3000.0
    z = sigma * math.sqrt(n - 1) * UNIT
    eps2, eps3 = (privacy.epsilon(z, 1.0, r, 1e-5) for r in (2, 3))
    noise = _distributed("gaussian", sigma, target_epsilon=(eps2 + eps3) / 2)
    strategy = _secure(_fedavg(min_fit_clients=n), noise=noise)
    result = covey.simulate(Fixed, n, 6, strategy, _params(), seed=0)
    assert [r.round for r in result.history.rounds if r.round > 0] == [1, 2]
    assert (result.history.rounds[-1].privacy or {})["epsilon"] == pytest.approx(eps2)
    assert "privacy budget" in (result.history.stopped_reason or "")


def test_distributed_dp_counts_every_client_once() -> None:
    n = 6
    strategy = _secure(_fedavg(min_fit_clients=n), noise=_distributed("gaussian", 2.0))
    assert strategy.hyperparameters["secagg"]["mean"] == "mean"
    plain = covey.simulate(Fixed, n, 1, covey.FedAvg(fraction_evaluate=0.0), _params(), seed=0)
    safe = covey.simulate(Fixed, n, 1, strategy, _params(), seed=0)
    # The plain mean (each client once), not the example-weighted one, within rounding
    # and the tiny noise (sigma = 2 units: 12 deviations at most).
    plain_mean = np.mean([Fixed(c).update for c in range(n)], axis=0)
    np.testing.assert_allclose(safe.weights["w"], plain_mean, atol=(1 + 12 * 2.0) * UNIT)
    assert not np.allclose(plain.weights["w"], plain_mean, atol=1e-6)


def test_accounted_noise_needs_its_parameters() -> None:
    with pytest.raises(ValueError, match="needs its clip"):
        Noise("gaussian", 10.0, delta=1e-5)
    with pytest.raises(ValueError, match="delta"):
        Noise("gaussian", 10.0, clip=1.0)
    with pytest.raises(ValueError, match="sigma >= 2"):
        Noise("skellam", 1.0, clip=1.0, delta=1e-5)
    with pytest.raises(ValueError, match="min_fit_clients >= 2"):
        secure(_fedavg(min_fit_clients=1), clip_range=1.0, noise=_distributed("gaussian", 9.0))


def test_noise_settings_given_as_numpy_numbers_are_taken_and_strings_named() -> None:
    f32: Any = np.float32  # read from a float32 array or config, say
    noise = Noise("gaussian", f32(100.0), clip=f32(1.0), delta=f32(1e-5))
    assert noise.sigma == 100.0
    assert type(noise.clip) is float  # a ledger's events and the run's record hold it
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0, got '100'"):
        Noise("gaussian", "100")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_epsilon must be a number > 0 and finite, got '8'"):
        Noise("gaussian", 100.0, clip=1.0, delta=1e-5, target_epsilon="8")  # type: ignore[arg-type]


def test_the_distributed_dp_statement_names_the_zero_out_relation_it_is_accounted_under(
    capsys: pytest.CaptureFixture[str],
) -> None:
    strategy = _secure(_fedavg(min_fit_clients=4), noise=_distributed("gaussian", 3000.0))
    covey.simulate(Fixed, 4, 1, strategy, _params(), seed=0)
    (unit,) = [line for line in capsys.readouterr().out.splitlines() if "unit:" in line]
    assert "zero-out" in unit
    assert "add or remove" not in unit  # removing the client would remove its noise too
