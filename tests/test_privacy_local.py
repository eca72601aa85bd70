"""Local DP and DP-FTRL: calibrated noise on the site, tree noise, their accounting."""

from __future__ import annotations

import math
from typing import Any

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import rdp

import covey
from covey import privacy
from covey.privacy import _noise


class Fixed(covey.Client):
    def __init__(self, update: dict[str, np.ndarray]) -> None:
        self.update = update

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        return covey.FitResult(delta=self.update, num_examples=5, metrics={"loss": 1.0})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_local_dp_releases_noise_around_zero_for_a_non_finite_update(bad: float) -> None:
    zeros = {"w": np.zeros(4)}
    diverged = privacy.LocalDP(
        Fixed({"w": np.array([bad, 1.0, 0.0, 0.0])}), epsilon=1.0, delta=1e-5, clip=1.0, seed=3
    )
    silent = privacy.LocalDP(Fixed(zeros), epsilon=1.0, delta=1e-5, clip=1.0, seed=3)
    sent = diverged.fit(zeros, {"round": 1})
    assert sent.delta is not None
    assert np.isfinite(sent.delta["w"]).all()
    expected = silent.fit(zeros, {"round": 1}).delta
    assert expected is not None
    np.testing.assert_array_equal(sent.delta["w"], expected["w"])  # the same noise, around 0
    assert sent.metrics["dp_clipped"] == 1.0


def test_local_dp_clips_adds_calibrated_noise_and_accounts() -> None:
    dim = 20000
    client = privacy.LocalDP(
        Fixed({"w": np.full(dim, 3.0)}), epsilon=2.0, delta=1e-5, clip=1.5, seed=4
    )
    assert client.sensitivity == 3.0  # derived from the clip, never a separate knob
    sigma = privacy.analytic_gaussian_sigma(2.0, 1e-5, 3.0)
    assert client.sigma == sigma
    result = client.fit({"w": np.zeros(dim)}, {"round": 1})
    assert result.delta is not None
    sent = result.delta["w"]
    clipped = np.full(dim, 1.5 / math.sqrt(dim))
    assert np.std(sent - clipped) == pytest.approx(sigma, rel=0.03)
    assert np.mean(sent - clipped) == pytest.approx(0.0, abs=5 * sigma / math.sqrt(dim))
    # One upload costs its (epsilon, delta): the PLD ledger reads it back almost exactly.
    assert result.metrics["dp_epsilon"] == pytest.approx(2.0, rel=0.01)
    assert result.metrics["loss"] == 1.0
    second = client.fit({"w": np.zeros(dim)}, {"round": 2})
    spent_first, spent_second = result.metrics["dp_epsilon"], second.metrics["dp_epsilon"]
    assert isinstance(spent_first, float)
    assert isinstance(spent_second, float)
    assert spent_second > spent_first  # composed per client
    assert client.ledger.rounds == 2


def test_local_dp_refuses_integer_arrays() -> None:
    client = privacy.LocalDP(
        Fixed({"w": np.zeros(3), "count": np.ones(2, dtype=np.int64)}),
        epsilon=1.0,
        delta=1e-5,
        clip=1.0,
    )
    with pytest.raises(TypeError, match="non-floating-point"):
        client.fit({"w": np.zeros(3), "count": np.zeros(2, dtype=np.int64)}, {"round": 1})


def test_local_dp_without_a_seed_is_never_the_same() -> None:
    make = lambda: privacy.LocalDP(Fixed({"w": np.zeros(8)}), epsilon=1.0, delta=1e-5, clip=1.0)  # noqa: E731
    a = make().fit({"w": np.zeros(8)}, {"round": 1}).delta
    b = make().fit({"w": np.zeros(8)}, {"round": 1}).delta
    assert a is not None
    assert b is not None
    assert not np.array_equal(a["w"], b["w"])


def test_tree_nodes_cover_the_prefix() -> None:
    for step in range(1, 40):
        nodes = _noise.tree_nodes(step)
        covered = [i for level, k in nodes for i in range(k * 2**level + 1, (k + 1) * 2**level + 1)]
        assert covered == list(range(1, step + 1))
        assert len(nodes) == bin(step).count("1")


def test_tree_noise_on_a_prefix_has_popcount_nodes_of_variance() -> None:
    like = {"w": np.zeros(20000)}
    for step in (1, 3, 7, 8):
        noise = _noise.tree_noise(17, 0, step, like, 0.5)
        assert noise is not None
        assert np.var(noise["w"]) == pytest.approx(0.25 * bin(step).count("1"), rel=0.05)
    assert _noise.tree_noise(17, 0, 0, like, 0.5) is None
    again = _noise.tree_noise(17, 0, 7, like, 0.5)
    assert again is not None
    np.testing.assert_array_equal(again["w"], _noise.tree_noise(17, 0, 7, like, 0.5)["w"])  # type: ignore[index]


def test_dp_ftrl_model_carries_the_prefix_noise_and_is_accounted() -> None:
    n, tree_rounds, rounds, z, clip = 8, 4, 6, 0.7, 1.0
    dp = privacy.dp_ftrl(
        covey.FedAvg(fraction_evaluate=0.0),
        noise_multiplier=z,
        clip=clip,
        delta=1e-5,
        tree_rounds=tree_rounds,
        noise_seed=5,
    )
    result = covey.simulate(
        lambda cid: Fixed({"w": np.zeros(50)}), n, rounds, dp, {"w": np.zeros(50)}
    )
    history = result.history
    # Each round takes every 4th client: each client once per tree.
    assert history[1].fit_participants == [0, 4]
    assert history[2].fit_participants == [1, 5]
    m = n / tree_rounds
    # Zero updates: the model is the sum over trees of each tree's last prefix noise / m.
    tree0 = _noise.tree_noise(5, 0, 4, {"w": np.zeros(50)}, z * clip)
    tree1 = _noise.tree_noise(5, 1, 2, {"w": np.zeros(50)}, z * clip)
    assert tree0 is not None
    assert tree1 is not None
    np.testing.assert_allclose(result.weights["w"], (tree0["w"] + tree1["w"]) / m, rtol=1e-10)
    acc = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_SPECIAL)
    acc.compose(dpa.SelfComposedDpEvent(dpa.SingleEpochTreeAggregationDpEvent(z, 4), 1))
    acc.compose(dpa.SingleEpochTreeAggregationDpEvent(z, 2))
    assert history[6].privacy is not None
    assert history[6].privacy["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_dp_ftrl_ignores_a_second_contribution_in_one_tree() -> None:
    dp = privacy.dp_ftrl(
        covey.FedAvg(fraction_evaluate=0.0),
        noise_multiplier=1.0,
        clip=1.0,
        delta=1e-5,
        tree_rounds=3,
        expected_clients=1.0,
    )
    from covey.aggregate import Contribution, run_round

    params = {"w": np.zeros(2)}
    state = dp.hooks[0].start(dp.aggregator.init(params), 0, covey.History())
    one = Contribution(0, 1, delta={"w": np.ones(2)})
    state, first = run_round(dp.aggregator, state, 1, params, [one])
    state, second = run_round(dp.aggregator, state, 2, params, [one])
    assert first is not None
    assert second is not None
    assert second.info["dp"]["repeated"] == [0]
    assert second.info["dp"]["clients"] == 0


def test_dp_ftrl_stops_before_its_budget() -> None:
    z = 2.0
    eps = [
        privacy.Ledger().add(dpa.SingleEpochTreeAggregationDpEvent(z, t)).epsilon(1e-5)
        for t in (3, 4)
    ]
    dp = privacy.dp_ftrl(
        covey.FedAvg(fraction_evaluate=0.0),
        noise_multiplier=z,
        clip=1.0,
        delta=1e-5,
        tree_rounds=10,
        target_epsilon=(eps[0] + eps[1]) / 2,  # tree epsilon steps up at powers of 2
    )
    history = covey.simulate(
        lambda cid: Fixed({"w": np.zeros(4)}), 20, 6, dp, {"w": np.zeros(4)}
    ).history
    assert [r.round for r in history.rounds] == [0, 1, 2, 3]
    assert history.stopped_reason is not None
    assert "round 4" in history.stopped_reason


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"expected_clients": 0}, "expected_clients must be a positive"),
        ({"expected_clients": float("nan")}, "expected_clients must be a positive"),
        ({"target_epsilon": -1.0}, "target_epsilon must be a number > 0"),
    ],
)
def test_bad_dp_ftrl_settings_are_refused_at_once(settings: dict[str, Any], match: str) -> None:
    # As central() does: not a ZeroDivisionError in round 1, nor a run that stops at once.
    with pytest.raises(ValueError, match=match):
        privacy.dp_ftrl(
            covey.FedAvg(fraction_evaluate=0.0),
            noise_multiplier=1.0,
            clip=1.0,
            delta=1e-5,
            tree_rounds=4,
            **settings,
        )


def test_seeded_local_dp_rebuilt_each_round_draws_new_noise_each_round() -> None:
    # A client built afresh for every task (client_cache=0, a restarted site) with
    # a fixed seed: the same noise in two rounds would cancel in their difference.
    def make() -> privacy.LocalDP:
        return privacy.LocalDP(Fixed({"w": np.zeros(8)}), epsilon=1.0, delta=1e-5, clip=1.0, seed=7)

    first = make().fit({"w": np.zeros(8)}, {"round": 1}).delta
    second = make().fit({"w": np.zeros(8)}, {"round": 2}).delta
    again = make().fit({"w": np.zeros(8)}, {"round": 1}).delta
    assert first is not None
    assert second is not None
    assert again is not None
    assert not np.array_equal(first["w"], second["w"])
    np.testing.assert_array_equal(first["w"], again["w"])  # still reproducible


def test_local_dp_with_a_ledger_path_accounts_across_rebuilt_clients(tmp_path: Any) -> None:
    path = tmp_path / "ledger.json"

    def make() -> privacy.LocalDP:
        fixed = Fixed({"w": np.zeros(8)})
        return privacy.LocalDP(fixed, epsilon=1.0, delta=1e-5, clip=1.0, ledger_path=path)

    spent = [
        float(make().fit({"w": np.zeros(8)}, {"round": r}).metrics["dp_epsilon"]) for r in (1, 2, 3)
    ]
    kept = make()
    assert kept.ledger.rounds == 3
    assert spent[2] == pytest.approx(kept.spent())
    assert spent[0] < spent[1] < spent[2]  # each rebuilt client charged what went before
    alone = privacy.LocalDP(Fixed({"w": np.zeros(8)}), epsilon=1.0, delta=1e-5, clip=1.0)
    assert alone.fit({"w": np.zeros(8)}, {"round": 1}).metrics["dp_epsilon"] == spent[0]
    with pytest.raises(ValueError, match="accounted with 'pld', not 'rdp'"):
        privacy.LocalDP(
            Fixed({}), epsilon=1.0, delta=1e-5, clip=1.0, ledger_path=path, accountant="rdp"
        )
    path.write_text("{")
    with pytest.raises(ValueError, match="cannot read the privacy ledger"):
        make()


def test_the_history_gives_the_largest_local_budget_not_a_mean() -> None:
    # the round's dp_epsilon was the example-weighted mean of the clients' budgets,
    # understating what the most exposed client spent
    def client(cid: int) -> privacy.LocalDP:
        return privacy.LocalDP(
            Fixed({"w": np.zeros(4)}), epsilon=[1.0, 4.0, 2.0][cid], delta=1e-5, clip=1.0, seed=cid
        )

    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=3, min_available_clients=3)
    result = covey.simulate(client, 3, 2, strategy, {"w": np.zeros(4)})
    spent = [
        float(client(cid).fit({"w": np.zeros(4)}, {"round": 1}).metrics["dp_epsilon"])
        for cid in range(3)
    ]
    assert result.history[1].fit_metrics["dp_epsilon"] == max(spent)
    assert result.history[1].fit_metrics["dp_delta"] == 1e-5
    assert result.history[1].fit_metrics["loss"] == 1.0  # the others are still means


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"epsilon": "1"}, "epsilon must be a positive number, got '1'"),
        ({"delta": None}, r"delta must be a number in \(0, 1\), got None"),
        ({"delta": "1e-5"}, r"delta must be a number in \(0, 1\), got '1e-5'"),
        ({"clip": "1"}, "clip must be a positive number, got '1'"),
    ],
)
def test_local_dp_names_a_setting_that_is_no_number(settings: dict[str, Any], match: str) -> None:
    options: dict[str, Any] = {"epsilon": 1.0, "delta": 1e-5, "clip": 1.0, **settings}
    with pytest.raises(ValueError, match=match):
        privacy.LocalDP(Fixed({"w": np.zeros(2)}), **options)


def test_the_dp_ftrl_statement_names_the_replace_special_relation_it_is_accounted_under(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dp = privacy.dp_ftrl(
        covey.FedAvg(fraction_evaluate=0.0),
        noise_multiplier=1.0,
        clip=1.0,
        delta=1e-5,
        tree_rounds=2,
    )
    covey.simulate(lambda c: Fixed({"w": np.zeros(2)}), 4, 1, dp, {"w": np.zeros(2)})
    (unit,) = [line for line in capsys.readouterr().out.splitlines() if "unit:" in line]
    assert "replace special" in unit
    assert "add or remove" not in unit


def test_local_dp_refuses_extras_it_would_leave_out() -> None:
    # A SCAFFOLD client's control-variate change was dropped unsaid, and the round
    # then failed every client with "it sent no 'scaffold_delta_c' extra".
    class WithExtras(covey.Client):
        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            w = weights["w"]
            return covey.FitResult(
                delta={"w": w + 1.0}, num_examples=1, extras={"scaffold_delta_c": {"w": w}}
            )

    client = privacy.LocalDP(WithExtras(), epsilon=1.0, delta=1e-5, clip=1.0, seed=0)
    with pytest.raises(ValueError, match=r"LocalDP sends only.*\['scaffold_delta_c'\].*SCAFFOLD"):
        client.fit({"w": np.zeros(3)}, {"round": 1})


def test_clients_given_one_local_dp_seed_draw_noise_of_their_own() -> None:
    # Every client built with seed=0 (a seeded experiment): the same noise in each
    # upload would cancel in the difference of two clients' updates, which would
    # then tell the server their clipped updates' difference, noise-free.
    uploads: dict[tuple[int, int], np.ndarray] = {}

    class Spy(privacy.LocalDP):
        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            result = super().fit(weights, config)
            assert result.delta is not None
            uploads[(int(config["round"]), self.client.cid)] = np.array(result.delta["w"])
            return result

    class Shifted(covey.Client):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
            return covey.FitResult(delta={"w": np.full(6, 0.01 * self.cid)}, num_examples=1)

    def client_fn(cid: int) -> Spy:
        return Spy(Shifted(cid), epsilon=2.0, delta=1e-5, clip=1.0, seed=0)

    def run() -> dict[tuple[int, int], np.ndarray]:
        uploads.clear()
        covey.simulate(client_fn, 3, 2, covey.FedAvg(fraction_evaluate=0.0), {"w": np.zeros(6)})
        return dict(uploads)

    first = run()
    for rnd in (1, 2):
        gap = first[(rnd, 1)] - first[(rnd, 0)]
        assert not np.allclose(gap, 0.01)  # the noise does not cancel
    again = run()
    assert first.keys() == again.keys()
    for key, value in first.items():
        np.testing.assert_array_equal(value, again[key])  # still reproducible
