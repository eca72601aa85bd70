"""Central DP: noise scale, clipping, the budget stop, adaptive clipping, composition, resume."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey import privacy
from covey.aggregate import (
    Contribution,
    chain,
    clip_norm,
    krum,
    run_round,
    server_adam,
    trimmed_mean,
)
from covey.aggregate._base import Aggregate
from covey.core import RoundRecord
from covey.privacy import _noise
from covey.privacy._central import PrivacyHook
from covey.privacy._clipping import AdaptiveClipping
from covey.privacy._step import DPState, Mechanism, Shared, dp_step
from covey.sim import SimulationResult

DIM = 4000


class Fixed(covey.Client):
    """Returns the same update every round."""

    def __init__(self, update: dict[str, np.ndarray]) -> None:
        self.update = update

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta=self.update, num_examples=10)


def _zeros(cid: int) -> Fixed:
    return Fixed({"w": np.zeros(DIM)})


def _params() -> dict[str, np.ndarray]:
    return {"w": np.zeros(DIM)}


def _strategy(**options: Any) -> covey.Strategy:
    return covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=0, **options)


def test_zero_updates_get_noise_of_the_stated_scale() -> None:
    z, clip, n = 1.3, 0.7, 20
    dp = privacy.central(
        _strategy(fraction_fit=1.0), noise_multiplier=z, clip=clip, delta=1e-5, noise_seed=3
    )
    result = covey.simulate(_zeros, n, 1, dp, _params())
    noise = result.weights["w"]
    # sum of zeros + N(0, (z clip)^2), divided by the expected count n.
    assert np.std(noise) == pytest.approx(z * clip / n, rel=0.05)
    assert abs(np.mean(noise)) < 5 * z * clip / n / math.sqrt(DIM)
    record = result.history[1]
    assert record.aggregate_info["dp"]["noise_std"] == pytest.approx(z * clip)
    assert record.privacy == {"epsilon": privacy.epsilon(z, 1.0, 1, 1e-5), "delta": 1e-5}


def test_huge_updates_are_clipped_to_clip() -> None:
    clip, n = 0.5, 8
    direction = np.ones(DIM) / math.sqrt(DIM)
    dp = privacy.central(
        _strategy(fraction_fit=1.0), noise_multiplier=1e-9, clip=clip, delta=1e-5, noise_seed=0
    )
    result = covey.simulate(
        lambda cid: Fixed({"w": 1e6 * (cid + 1) * direction}), n, 1, dp, _params()
    )
    # Every update is cut to norm `clip`; their sum over the expected count n has norm clip.
    assert np.linalg.norm(result.weights["w"]) == pytest.approx(clip, rel=1e-6)
    assert result.history[1].aggregate_info["dp"]["clipped"] == list(range(n))


def test_poisson_sampling_takes_each_client_with_probability_q() -> None:
    shared = Shared(seed=11)
    select = privacy.poisson_selector(0.3, shared)
    rng = np.random.default_rng(0)
    counts = [len(select(list(range(1000)), r, rng)) for r in range(1, 21)]
    assert np.mean(counts) == pytest.approx(300, rel=0.05)
    assert len(set(counts)) > 1  # the number sampled varies: Poisson, not fixed-size
    assert shared.population[5] == 1000


class _Ids(Sequence[int]):
    """Client ids ``0 .. n - 1`` that count how many were read."""

    def __init__(self, n: int) -> None:
        self.n, self.read = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> Any:
        self.read += 1
        return range(self.n)[index]

    def __iter__(self) -> Iterator[int]:
        self.read += self.n
        return iter(range(self.n))


def test_poisson_sampling_reads_only_the_candidates_it_takes() -> None:
    # It zipped every candidate with its draw in Python: 0.36 s a round at 1,000,000
    # clients to take a dozen. The draws are the same; only those taken are read.
    shared = Shared(seed=11)
    select = privacy.poisson_selector(0.001, shared)
    rng = np.random.default_rng(0)
    ids = _Ids(100_000)
    chosen = select(ids, 3, rng)
    expected = select(list(range(100_000)), 3, rng)
    assert chosen == expected
    assert 50 < len(chosen) < 200
    assert ids.read == len(chosen)
    assert all(type(c) is int for c in chosen)


def test_run_stops_before_exceeding_target_epsilon(tmp_path: Path) -> None:
    z, q, delta = 1.0, 0.5, 1e-5
    eps = [privacy.epsilon(z, q, t, delta) for t in range(1, 6)]
    target = (eps[2] + eps[3]) / 2  # three rounds fit, the fourth would exceed it
    dp = privacy.central(
        _strategy(fraction_fit=q), noise_multiplier=z, clip=1.0, delta=delta, target_epsilon=target
    )
    result = covey.simulate(_zeros, 10, 10, dp, _params(), run_dir=tmp_path)
    history = result.history
    assert [r.round for r in history.rounds] == [0, 1, 2, 3]
    assert history.stopped_reason is not None
    assert "round 4" in history.stopped_reason
    assert "target_epsilon" in history.stopped_reason
    spent = [r.privacy["epsilon"] for r in history.rounds[1:] if r.privacy]
    assert spent == pytest.approx(eps[:3])
    assert max(spent) <= target
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["stopped_reason"] == history.stopped_reason
    assert saved["rounds"][3]["privacy"]["epsilon"] == pytest.approx(eps[2])
    assert covey.History.from_json((tmp_path / "history.json").read_text()) == history


def test_a_privacy_statement_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    dp = privacy.central(_strategy(fraction_fit=0.5), noise_multiplier=1.0, clip=1.0, delta=1e-5)
    covey.simulate(_zeros, 4, 2, dp, _params())
    out = capsys.readouterr().out
    assert "Privacy statement" in out
    assert "Poisson, q=0.5" in out
    assert "one client" in out
    assert f"({privacy.epsilon(1.0, 0.5, 2, 1e-5):.4g}, 1e-05)" in out


def test_adaptive_clipping_converges_to_the_target_quantile() -> None:
    rng = np.random.default_rng(0)
    m, dim = 200, 5
    quantile = 0.3
    # Norms uniform on [0, 10]: the 0.3-quantile is 3.
    mech = Mechanism(
        name="test",
        noise_multiplier=1.0,
        clip=0.1,
        delta=1e-5,
        sampling_rate=1.0,
        expected_clients=m,
        adaptive=AdaptiveClipping(target_quantile=quantile, learning_rate=0.2),
    )
    step = dp_step(chain(covey.aggregate.weighted_mean()), mech, Shared(seed=1))
    params = {"w": np.zeros(dim)}
    state = step.init(params)
    clips = []
    for rnd in range(1, 151):
        norms = rng.uniform(0, 10, m)
        dirs = rng.normal(size=(m, dim))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        contributions = [Contribution(k, 1, delta={"w": norms[k] * dirs[k]}) for k in range(m)]
        state, _ = run_round(step, state, rnd, params, contributions)
        assert isinstance(state, DPState)
        clips.append(state.clip)
    assert np.mean(clips[-30:]) == pytest.approx(3.0, rel=0.1)


def test_adaptive_clipping_splits_the_noise() -> None:
    z_update, sigma_b = AdaptiveClipping().split(1.0, 100)
    assert sigma_b == pytest.approx(5.0)
    assert z_update == pytest.approx((1.0 - 1.0 / 100) ** -0.5)
    with pytest.raises(ValueError, match="count_stddev"):
        AdaptiveClipping().split(1.0, 10)


def test_adaptive_clipping_with_too_little_count_noise_is_refused_before_clients_train() -> None:
    # It was refused only as round 1 was aggregated, once every sampled client had trained.
    with pytest.raises(ValueError, match=r"noise_multiplier < 2 \* count_stddev \(1.0 >= 0.8\)"):
        privacy.central(
            covey.FedAvg(fraction_fit=0.5),
            noise_multiplier=1.0,
            clip=1.0,
            delta=1e-5,
            adaptive=AdaptiveClipping(count_stddev=0.4),
        )
    fits: list[int] = []

    class Counted(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            fits.append(1)
            return covey.FitResult(weights=dict(weights), num_examples=1)

    strategy = privacy.central(
        covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.0),
        noise_multiplier=1.0,
        clip=1.0,
        delta=1e-5,
        adaptive=True,
    )
    with pytest.raises(ValueError, match=r"by default 0\.05 x the 5 clients expected a round"):
        covey.simulate(lambda cid: Counted(), 10, 2, strategy, {"w": np.zeros(2)}, progress=False)
    assert fits == []


def _hand_mean(contribs: list[np.ndarray], clip: float, z: float, m: float, seed: int, rnd: int):
    total = np.zeros(DIM)
    for d in contribs:
        total += d * min(1.0, clip / np.linalg.norm(d))
    noise = _noise.gaussian(
        _noise.generator(seed, _noise.UPDATE_NOISE, rnd), {"w": total}, z * clip
    )
    return (total + noise["w"]) / m


def test_central_composes_with_fedadam_like_the_math_by_hand() -> None:
    rng = np.random.default_rng(1)
    updates = [rng.normal(size=DIM) * s for s in (0.001, 1.0, 5.0)]
    mech = Mechanism(
        name="t",
        noise_multiplier=0.8,
        clip=1.0,
        delta=1e-5,
        sampling_rate=0.5,
        expected_clients=2.0,
    )
    adam = chain(covey.aggregate.weighted_mean(), server_adam(eta=0.1))
    step = dp_step(adam, mech, Shared(seed=5))
    params = {"w": rng.normal(size=DIM)}
    state = step.init(params)
    contribs = [Contribution(k, 100 * (k + 1), delta={"w": u}) for k, u in enumerate(updates)]
    _, got = run_round(step, state, 1, params, contribs)
    # By hand: the private mean, then FedAdam's server step on it as the only update.
    mean = _hand_mean(updates, 1.0, 0.8, 2.0, 5, 1)
    _, want = run_round(adam, adam.init(params), 1, params, [Contribution(0, 1, delta={"w": mean})])
    assert isinstance(got, Aggregate)
    assert isinstance(want, Aggregate)
    np.testing.assert_allclose(got.apply(params)["w"], want.apply(params)["w"], rtol=1e-12)
    assert got.info["dp"]["clipped"] == [1, 2]


def test_central_composes_with_a_robust_reducer_and_drops_nonfinite_updates() -> None:
    updates = {0: np.ones(DIM), 1: np.full(DIM, np.nan), 2: -np.ones(DIM)}
    robust = covey.Strategy(
        aggregator=chain(trimmed_mean(0.2), server_adam(eta=0.05)),
        fraction_fit=1.0,
        min_fit_clients=0,
        fraction_evaluate=0.0,
    )
    dp = privacy.central(robust, noise_multiplier=0.5, clip=1.0, delta=1e-5, noise_seed=2)
    result = covey.simulate(lambda cid: Fixed({"w": updates[cid]}), 3, 2, dp, _params())
    info = result.history[2].aggregate_info
    assert [f.cid for f in result.history[2].fit_failures] == [1]  # the loop refuses NaN
    assert info["dp"]["clients"] == 2
    assert np.all(np.isfinite(result.weights["w"]))
    assert result.history[2].privacy is not None
    # The reducer runs on the private mean: the same run with a plain mean is the same model.
    plain = covey.Strategy(
        aggregator=chain(covey.aggregate.mean(), server_adam(eta=0.05)),
        fraction_fit=1.0,
        min_fit_clients=0,
        fraction_evaluate=0.0,
    )
    same = privacy.central(plain, noise_multiplier=0.5, clip=1.0, delta=1e-5, noise_seed=2)
    again = covey.simulate(lambda cid: Fixed({"w": updates[cid]}), 3, 2, same, _params())
    np.testing.assert_allclose(again.weights["w"], result.weights["w"], rtol=1e-12)


def test_same_seed_same_model_and_no_seed_deployed_differs() -> None:
    def run(seed: int, noise_seed: int | None) -> np.ndarray:
        dp = privacy.central(
            _strategy(fraction_fit=0.5),
            noise_multiplier=1.0,
            clip=1.0,
            delta=1e-5,
            noise_seed=noise_seed,
        )
        return covey.simulate(_zeros, 10, 2, dp, _params(), seed=seed).weights["w"]

    np.testing.assert_array_equal(run(0, None), run(0, None))  # the run's seed in simulation
    assert not np.array_equal(run(0, None), run(1, None))
    np.testing.assert_array_equal(run(0, 9), run(1, 9))  # an explicit noise seed wins
    # Deployed without a seed: fresh CSPRNG noise, never the same twice.
    shared = Shared(seed=None)
    a = _noise.gaussian(_noise.generator(shared.seed, 1, 1), {"w": np.zeros(10)}, 1.0)
    b = _noise.gaussian(_noise.generator(shared.seed, 1, 1), {"w": np.zeros(10)}, 1.0)
    assert not np.array_equal(a["w"], b["w"])


def test_a_strategy_started_by_a_run_in_another_thread_stops_the_first_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The noise seed and sampled populations are the strategy's, one run's at a time.

    A second run of the same strategy object, started in another thread while the
    first was going on, took them over: the first run drew its noise and its
    sampling from the second one's seed, without a word, or failed later saying
    its round "was not sampled by the selector it installs".
    """
    dp = privacy.central(_strategy(fraction_fit=0.5), noise_multiplier=1.0, clip=1.0, delta=1e-5)
    other: list[SimulationResult] = []

    def start_another(record: RoundRecord) -> None:
        if record.round == 1:  # a notebook's second cell, run while the first still runs
            thread = threading.Thread(
                target=lambda: other.append(covey.simulate(_zeros, 10, 2, dp, _params(), seed=1))
            )
            thread.start()
            thread.join(120)

    with pytest.raises(RuntimeError, match="started by another run in another thread"):
        covey.simulate(_zeros, 10, 3, dp, _params(), seed=0, on_round=start_another)
    assert [r.round for r in other[0].history.rounds] == [0, 1, 2]  # the second run is whole
    # One run after the other, in any thread, each has the strategy to itself.
    again = covey.simulate(_zeros, 10, 2, dp, _params(), seed=1)
    np.testing.assert_array_equal(again.weights["w"], other[0].weights["w"])
    hook = dp.hooks[-1]
    assert isinstance(hook, PrivacyHook)
    assert hook.shared.running == set()  # no run of it is going on any more
    capsys.readouterr()


def test_client_side_clipping() -> None:
    big = np.full(DIM, 10.0)
    dp = privacy.central(
        _strategy(fraction_fit=1.0),
        noise_multiplier=1e-9,
        clip=2.0,
        delta=1e-5,
        clipping="client",
        noise_seed=0,
    )
    result = covey.simulate(lambda cid: privacy.ClipUpdates(Fixed({"w": big})), 4, 1, dp, _params())
    assert np.linalg.norm(result.weights["w"]) == pytest.approx(2.0, rel=1e-6)
    assert result.history[1].aggregate_info["dp"]["clipped"] == []  # clients clipped already
    with pytest.raises(ValueError, match="adaptive"):
        privacy.central(
            _strategy(),
            noise_multiplier=1.0,
            clip=1.0,
            delta=1e-5,
            clipping="client",
            adaptive=True,
        )


def test_integer_arrays_and_bad_settings_are_refused() -> None:
    dp = privacy.central(_strategy(), noise_multiplier=1.0, clip=1.0, delta=1e-5)
    with pytest.raises(TypeError, match="non-floating-point"):
        dp.aggregator.init({"w": np.zeros(3), "steps": np.zeros(1, dtype=np.int64)})
    with pytest.raises(ValueError, match="noise_multiplier"):
        privacy.central(_strategy(), noise_multiplier=0.0, clip=1.0, delta=1e-5)
    # taken, and the run died after round 1 in dp-accounting's arithmetic with a bare
    # OverflowError (1e200) or ZeroDivisionError (1e-170)
    for z in (1e200, 1e-170):
        said = re.escape(f"noise_multiplier must be a number from 1e-12 to 1e+12, got {z!r}")
        with pytest.raises(ValueError, match=said):
            privacy.central(_strategy(), noise_multiplier=z, clip=1.0, delta=1e-5)
        with pytest.raises(ValueError, match=said):
            privacy.epsilon(noise_multiplier=z, sampling_rate=0.1, rounds=10, delta=1e-5)
        with pytest.raises(ValueError, match=said):
            privacy.dp_ftrl(_strategy(), noise_multiplier=z, clip=1.0, delta=1e-5, tree_rounds=4)
    with pytest.raises(ValueError, match="synchronous"):
        privacy.central(
            covey.FedBuff(buffer_size=2, fraction_evaluate=0.0),
            noise_multiplier=1.0,
            clip=1.0,
            delta=1e-5,
        )


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"expected_clients": 0}, "expected_clients must be a positive"),
        ({"expected_clients": -3.0}, "expected_clients must be a positive"),
        ({"accountant": "rpd"}, "unknown accountant 'rpd'"),
        ({"adaptive": "yes"}, "adaptive must be True or an AdaptiveClipping"),
        ({"noise_multiplier": True}, "noise_multiplier must be a number"),
        ({"clip": "1"}, "clip must be a number"),
        ({"noise_seed": -1}, "noise_seed must be a non-negative int"),
        ({"noise_seed": 1.5}, "noise_seed must be a non-negative int"),
        ({"target_epsilon": "3"}, "target_epsilon must be a number"),
        ({"expected_clients": True}, "expected_clients must be a number"),
    ],
)
def test_bad_central_settings_are_refused_at_once(settings: dict[str, object], match: str) -> None:
    kwargs: dict[str, Any] = {"noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5, **settings}
    with pytest.raises(ValueError, match=match):
        privacy.central(_strategy(), **kwargs)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: covey.Krum(f=1, fraction_fit=0.5, min_fit_clients=0), r"needs at least 2f\+3 = 5"),
    ],
)
def test_an_aggregator_that_cannot_take_the_private_mean_is_refused_before_training(
    make: Any, why: str
) -> None:
    trained: list[int] = []

    class Counting(covey.Client):
        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            trained.append(1)
            return covey.FitResult(delta={"w": np.ones(3)}, num_examples=1)

        def evaluate(self, weights: covey.Weights, config: dict[str, Any]) -> covey.EvaluateResult:
            return covey.EvaluateResult(loss=0.0, num_examples=1)

    def run() -> None:  # a rule that states its need is refused by central() itself
        dp = privacy.central(make(), noise_multiplier=1.0, clip=1.0, delta=1e-5, noise_seed=0)
        covey.simulate(lambda cid: Counting(), 10, 2, dp, {"w": np.zeros(3)})

    with pytest.raises(ValueError, match=f"cannot run on the one private mean.*{why}"):
        run()
    assert trained == []


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: covey.Krum(f=1), "Krum with f=1 needs at least 2f+3 = 5 clients per round"),
        (lambda: covey.MultiKrum(f=0), "Multi-Krum with f=0 needs at least 2f+3 = 3"),
        (lambda: covey.Bulyan(f=1), "Bulyan with f=1 needs at least 4f+3 = 7"),
        (
            lambda: covey.Strategy(aggregator=chain(clip_norm(1.0), krum(1), server_adam())),
            "Krum with f=1 needs at least 2f+3 = 5",
        ),
    ],
)
@pytest.mark.parametrize("wrap", ["central", "dp_ftrl"])
def test_a_rule_that_needs_several_updates_is_refused_when_the_dp_strategy_is_made(
    make: Any, why: str, wrap: str
) -> None:
    # The DP step hands the rule one private mean a round, so the rule's need is never
    # met: deployed, the server used to listen and open its run folder before saying so.
    settings: dict[str, Any] = {"noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}
    strategy = make()
    if wrap == "central":
        strategy = dataclasses.replace(strategy, fraction_fit=0.5, min_fit_clients=0)
    else:
        settings["tree_rounds"] = 2
    with pytest.raises(ValueError, match=f"cannot run on the one private mean.*{re.escape(why)}"):
        getattr(privacy, wrap)(strategy, **settings)


@pytest.mark.parametrize("wrap", ["central", "dp_ftrl"])
def test_qfedavg_under_central_dp_is_refused_naming_the_conflict_first(wrap: str) -> None:
    # It used to be refused with "client 0 reported no numeric 'loss' metric", which
    # sent users looking for a bug in their client's metrics.
    settings: dict[str, Any] = {"noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}
    strategy = covey.QFedAvg(fraction_fit=0.5, min_fit_clients=0)
    if wrap == "dp_ftrl":
        settings["tree_rounds"] = 2
    with pytest.raises(ValueError, match=r"^DP-[^:]+ cannot wrap q-FedAvg: q-FedAvg weighs") as e:
        getattr(privacy, wrap)(strategy, **settings)
    assert "numeric 'loss'" not in str(e.value)
    assert "q-FedAvg without it" in str(e.value)


def test_resume_restores_the_ledger_from_the_history() -> None:
    dp = privacy.central(_strategy(fraction_fit=0.5), noise_multiplier=1.0, clip=1.0, delta=1e-5)
    first = covey.simulate(_zeros, 10, 3, dp, _params())
    hook = dp.hooks[-1]
    history = covey.History.from_json(first.history.to_json())  # as saved with the run
    fresh = dp.aggregator.init(_params())
    state = hook.start(fresh, None, history)
    assert state.rounds == 3
    hook.after_round(covey.core.RoundRecord(round=4), state)
    other = privacy.central(_strategy(fraction_fit=0.5), noise_multiplier=2.0, clip=1.0, delta=1e-5)
    # both ledgers named: what the run spent, and what the strategy given would count
    with pytest.raises(ValueError, match=r"other privacy parameters.*1\.0.*this strategy.*2\.0"):
        other.hooks[-1].start(other.aggregator.init(_params()), None, history)


def test_the_dp_step_itself_drops_nonfinite_updates() -> None:
    mech = Mechanism(
        name="t", noise_multiplier=1.0, clip=1.0, delta=1e-5, sampling_rate=1.0, expected_clients=2
    )
    step = dp_step(chain(covey.aggregate.weighted_mean()), mech, Shared(seed=0))
    params = {"w": np.zeros(3)}
    bad = Contribution(1, 1, delta={"w": np.array([np.inf, 0.0, 0.0])})
    _, out = run_round(step, step.init(params), 1, params, [Contribution(0, 1, delta=params), bad])
    assert out is not None
    assert out.info["dp"]["nonfinite"] == [1]
    assert np.all(np.isfinite(out.apply(params)["w"]))
    state, _ = step.feed(step.init(params), covey.aggregate.Begin(1, params))
    _, dropped = step.feed(state, bad)  # the round records the client's fit as failed
    assert dropped == (
        covey.aggregate.Dropped(
            1, "its update's norm is not finite, so no clip can bound it (central DP)"
        ),
    )


def test_adaptive_clipping_with_too_few_clients_fails_before_training() -> None:
    dp = privacy.central(
        _strategy(fraction_fit=0.5), noise_multiplier=3.0, clip=1.0, delta=1e-5, adaptive=True
    )
    with pytest.raises(ValueError, match="count_stddev"):
        covey.simulate(_zeros, 10, 1, dp, _params())


def test_the_dp_settings_are_recorded_in_the_history_config() -> None:
    dp = privacy.central(
        _strategy(fraction_fit=0.5), noise_multiplier=1.1, clip=0.3, delta=1e-5, noise_seed=4
    )
    history = covey.simulate(_zeros, 4, 1, dp, _params()).history
    again = covey.History.from_json(history.to_json())
    settings = again.config["strategy"]["hyperparameters"]["dp"]
    assert settings["noise_multiplier"] == 1.1
    assert settings["clip"] == 0.3
    assert settings["sampling_rate"] == 0.5
    assert settings["noise_seed"] == "given"  # the seed itself is not written down
    assert again.config["strategy"]["name"] == "DP-FedAvg"


@pytest.mark.slow
def test_a_run_accounted_with_pld() -> None:
    dp = privacy.central(
        _strategy(fraction_fit=0.5), noise_multiplier=1.0, clip=1.0, delta=1e-5, accountant="pld"
    )
    history = covey.simulate(_zeros, 6, 2, dp, _params()).history
    spent = history[2].privacy
    assert spent is not None
    assert spent["epsilon"] == pytest.approx(
        privacy.epsilon(1.0, 0.5, 2, 1e-5, accountant="pld"), rel=1e-9
    )
    assert spent["epsilon"] < privacy.epsilon(1.0, 0.5, 2, 1e-5)  # tighter than RDP


@pytest.mark.parametrize(("delta", "warned"), [(0.25, 1), (1e-5, 0)])
def test_a_delta_not_below_one_over_the_clients_is_warned_of_once(
    caplog: pytest.LogCaptureFixture, delta: float, warned: int
) -> None:
    dp = privacy.central(_strategy(fraction_fit=1.0), noise_multiplier=1.0, clip=1.0, delta=delta)
    with caplog.at_level("WARNING", logger="covey"):
        covey.simulate(_zeros, 4, 2, dp, _params())
    said = [r for r in caplog.records if "is not below 1 / 4" in r.getMessage()]
    assert len(said) == warned


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"learning_rate": math.inf}, "learning_rate must be a finite number > 0"),
        ({"count_stddev": math.inf}, "count_stddev must be a finite number > 0"),
    ],
)
def test_an_infinite_adaptive_clipping_setting_is_refused(
    settings: dict[str, float], match: str
) -> None:
    # an infinite step or count noise sends the clip to 0 or infinity after a round
    with pytest.raises(ValueError, match=match):
        AdaptiveClipping(**settings)


def test_a_bad_dp_ftrl_noise_seed_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="noise_seed must be a non-negative int"):
        privacy.dp_ftrl(
            _strategy(), noise_multiplier=1.0, clip=1.0, delta=1e-5, tree_rounds=4, noise_seed=-2
        )


class _Evaluates(Fixed):
    def evaluate(self, weights: covey.Weights, config: dict[str, Any]) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=1.0, num_examples=1)


@pytest.mark.parametrize("mechanism", ["central", "dp_ftrl"])
def test_federated_evaluation_samples_by_fraction_evaluate_not_the_dp_selector(
    mechanism: str,
) -> None:
    base = covey.FedAvg(fraction_fit=0.2, min_fit_clients=0, fraction_evaluate=0.5)
    settings: dict[str, Any] = {"noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}
    if mechanism == "central":
        dp = privacy.central(base, **settings)
    else:
        dp = privacy.dp_ftrl(base, tree_rounds=5, **settings)
    result = covey.simulate(lambda c: _Evaluates({"w": np.zeros(3)}), 20, 3, dp, {"w": np.zeros(3)})
    for record in result.history.rounds[1:]:
        # half of the 20 clients, as fraction_evaluate says, not the round's trainers
        assert len(record.evaluate_participants) == 10
        assert record.evaluate_participants != record.fit_participants


@pytest.mark.parametrize(
    ("noise_seed", "run_seed", "warned"), [(7, None, 1), (7, 0, 0), (None, None, 0)]
)
def test_a_deployed_run_with_a_noise_seed_warns_that_its_noise_is_predictable(
    caplog: pytest.LogCaptureFixture, noise_seed: int | None, run_seed: int | None, warned: int
) -> None:
    # A deployed run (no run seed) whose noise follows a seed protects no one who
    # knows the seed; a simulation's seeded noise is its reproducibility.
    dp = privacy.central(
        _strategy(), noise_multiplier=1.0, clip=1.0, delta=1e-5, noise_seed=noise_seed
    )
    with caplog.at_level("WARNING", logger="covey"):
        dp.hooks[-1].start(dp.aggregator.init(_params()), run_seed, covey.History())
    said = [r for r in caplog.records if "noise_seed is set in a deployed run" in r.getMessage()]
    assert len(said) == warned
