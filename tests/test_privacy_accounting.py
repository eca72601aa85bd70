"""Privacy accounting: equal to dp-accounting; calibrate inverts it; the ledger is JSON."""

from __future__ import annotations

import json

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp

from covey import privacy
from covey.privacy import Ledger, analytic_gaussian_sigma

CASES = [
    (1.0, 0.01, 1000, 1e-5),
    (1.1, 0.1, 100, 1e-5),
    (0.8, 1.0, 10, 1e-5),
    (2.0, 0.05, 500, 1e-6),
]


def _reference(z: float, q: float, rounds: int, delta: float, accountant: str) -> float:
    gaussian = dpa.GaussianDpEvent(z)
    single = gaussian if q == 1.0 else dpa.PoissonSampledDpEvent(q, gaussian)
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    acc.compose(dpa.SelfComposedDpEvent(single, rounds))
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(("z", "q", "rounds", "delta"), CASES)
def test_epsilon_equals_dp_accounting_rdp(z: float, q: float, rounds: int, delta: float) -> None:
    assert privacy.epsilon(z, q, rounds, delta) == pytest.approx(
        _reference(z, q, rounds, delta, "rdp"), rel=1e-9
    )


@pytest.mark.slow
@pytest.mark.parametrize(("z", "q", "rounds", "delta"), CASES)
def test_epsilon_equals_dp_accounting_pld(z: float, q: float, rounds: int, delta: float) -> None:
    ours = privacy.epsilon(z, q, rounds, delta, accountant="pld")
    assert ours == pytest.approx(_reference(z, q, rounds, delta, "pld"), rel=1e-9)
    assert ours <= privacy.epsilon(z, q, rounds, delta)  # PLD is the tighter bound


def test_known_values() -> None:
    # Figures published with dp-accounting 0.6.0 for these settings.
    assert privacy.epsilon(1.0, 0.01, 1000, 1e-5) == pytest.approx(2.101, abs=1e-3)
    assert privacy.epsilon(1.0, 0.1, 100, 1e-5) == pytest.approx(7.904, abs=1e-3)
    assert privacy.epsilon(1.0, 1.0, 100, 1e-5) == pytest.approx(96.12, abs=1e-2)
    assert privacy.epsilon(1.0, 0.1, 0, 1e-5) == 0.0


def test_calibrate_rdp_inverts_epsilon() -> None:
    z = privacy.calibrate(3.0, 1e-5, 0.01, 1000)
    assert z == pytest.approx(0.8646, abs=2e-4)
    assert 0.99 * 3.0 <= privacy.epsilon(z, 0.01, 1000, 1e-5) <= 3.0
    for target, q, rounds in ((1.0, 0.1, 30), (8.0, 0.1, 30), (3.0, 1.0, 5)):
        z = privacy.calibrate(target, 1e-5, q, rounds)
        assert 0.99 * target <= privacy.epsilon(z, q, rounds, 1e-5) <= target


@pytest.mark.slow
def test_calibrate_pld() -> None:
    # One Gaussian release, whose exact multiplier the analytic Gaussian mechanism gives:
    # the PLD accountant's, near exact, lies between those of epsilon 3 and of 99% of it.
    # (docs/privacy.md shows, and its test checks, the subsampled case of 1,000 rounds.)
    z = privacy.calibrate(3.0, 1e-5, 1.0, 1, accountant="pld")
    assert z == pytest.approx(1.3907, abs=2e-4)
    assert analytic_gaussian_sigma(3.0, 1e-5) <= z <= analytic_gaussian_sigma(0.99 * 3.0, 1e-5)
    assert 0.99 * 3.0 <= privacy.epsilon(z, 1.0, 1, 1e-5, accountant="pld") <= 3.0


def test_calibrate_a_target_above_what_the_smallest_multiplier_spends_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError, match=r"target_epsilon 100.0 is more than even noise multiplier 0.3"
    ):
        privacy.calibrate(100.0, 1e-5, 0.1, 10)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 0.1, 10, 1e-5), "noise_multiplier"),
        ((1.0, 0.0, 10, 1e-5), "sampling_rate"),
        ((1.0, 1.5, 10, 1e-5), "sampling_rate"),
        ((1.0, 0.1, -1, 1e-5), "rounds"),
        ((1.0, 0.1, 10, 0.0), "delta"),
    ],
)
def test_bad_arguments_are_refused(args: tuple[float, float, int, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        privacy.epsilon(*args)


def test_ledger_is_json_and_composes_like_dp_accounting() -> None:
    sampled = dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.2))
    ledger = Ledger().add(sampled).add(sampled, 9).add(dpa.GaussianDpEvent(5.0))
    assert ledger.entries[0][1] == 10  # equal events in a row share one entry
    assert ledger.rounds == 11
    text = json.dumps(ledger.to_json())
    again = Ledger.from_json(json.loads(text))
    assert again == ledger
    acc = rdp.RdpAccountant()
    acc.compose(sampled, 10)
    acc.compose(dpa.GaussianDpEvent(5.0))
    assert again.epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert Ledger().epsilon(1e-5) == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        {"accountant": "rdp", "entries": [[{"type": "os.system", "x": 1}, 1]]},
        {"accountant": "rdp", "entries": [[{"type": "GaussianDpEvent"}, 1]]},
        {"accountant": "rdp", "entries": [[{"type": "GaussianDpEvent", "noise_multiplier": 1}, 0]]},
        # refused by dp-accounting's own words ("eps must be > 0. Got -1.0"), naming nothing
        {"accountant": "rdp", "entries": [[{"type": "LaplaceDpEvent", "noise_multiplier": -1}, 1]]},
        {"accountant": "magic", "entries": []},
        {"accountant": "rdp", "entries": "nope"},
    ],
)
def test_ledger_from_json_refuses_bad_input(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="ledger"):
        Ledger.from_json(bad)


def test_tree_aggregation_is_accounted_by_dp_accounting() -> None:
    ledger = Ledger().add(dpa.SingleEpochTreeAggregationDpEvent(1.0, 1000))
    acc = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_SPECIAL)
    acc.compose(dpa.SingleEpochTreeAggregationDpEvent(1.0, 1000))
    assert ledger.epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert ledger.epsilon(1e-5) == pytest.approx(19.05, abs=0.01)


@pytest.mark.parametrize("eps", [0.5, 1.0, 3.0, 8.0, 10.0, 20.0, 50.0])
def test_analytic_gaussian_keeps_its_promise_at_every_epsilon(eps: float) -> None:
    sigma = analytic_gaussian_sigma(eps, 1e-5, sensitivity=2.0)
    delivered = dpa.get_epsilon_gaussian(sigma / 2.0, 1e-5)
    assert 0.999 * eps <= delivered <= eps
    # The classic bound would promise too much at large epsilon; this one never does.
    assert sigma == pytest.approx(2.0 * dpa.get_sigma_gaussian(eps, 1e-5), rel=1e-6)


def test_a_ledger_with_an_unknown_accountant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown accountant 'pdl'"):
        privacy.Ledger(accountant="pdl")  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [0, -2, 1.5, True])
def test_a_ledger_refuses_a_count_that_is_no_positive_int(count: object) -> None:
    # A negative count took spent budget away, and a ledger with a count of 0
    # could be saved but not read back.
    ledger = Ledger().add(dpa.GaussianDpEvent(1.0), 3)
    with pytest.raises(ValueError, match="count must be a positive int"):
        ledger.add(dpa.GaussianDpEvent(1.0), count)  # type: ignore[arg-type]


@pytest.mark.parametrize("sensitivity", [0.0, float("inf"), float("nan")])
def test_analytic_gaussian_refuses_a_sensitivity_that_is_no_finite_positive_number(
    sensitivity: float,
) -> None:
    # An infinite sensitivity ended in SciPy's "the function value at x=inf is NaN".
    with pytest.raises(ValueError, match="sensitivity must be a finite number > 0"):
        analytic_gaussian_sigma(1.0, 1e-5, sensitivity)


def test_epsilon_refuses_a_misspelt_accountant_even_for_zero_rounds() -> None:
    # rounds=0 answered 0.0 before the accountant was looked at, so "pdl" passed.
    with pytest.raises(ValueError, match="unknown accountant 'pdl'"):
        privacy.epsilon(1.0, 0.1, 0, 1e-5, accountant="pdl")  # type: ignore[arg-type]


def test_accounting_in_two_threads_at_once_leaves_the_absl_log_as_it_was() -> None:
    """Two runs' accountants quieting absl overlap (A in, B in, A out, B out)."""
    import logging

    from covey.privacy._accounting import _quiet

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    absl, kept = logging.getLogger("absl"), Kept()
    level, propagate = absl.level, absl.propagate
    absl.addHandler(kept)
    absl.setLevel(logging.INFO)  # an application that logs through absl (TensorFlow, JAX)
    absl.propagate = False
    try:
        first, second = _quiet(), _quiet()
        first.__enter__()
        second.__enter__()
        absl.warning("order 1.5 is numerically unstable")
        first.__exit__(None, None, None)
        second.__exit__(None, None, None)
        absl.warning("the application's own warning")
        assert kept.messages == ["the application's own warning"]
    finally:
        absl.removeHandler(kept)
        absl.setLevel(level)
        absl.propagate = propagate


def test_accounting_leaves_a_root_logger_without_handlers_without_handlers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The absl log() calls logging.basicConfig() on a root logger with no handler.

    dp-accounting warning of an order it drops (q=0.5, z=1 does) left a
    StreamHandler on the root logger of a notebook that had not configured
    logging: its own basicConfig(level=...) then did nothing.
    """
    import logging

    from covey.privacy._accounting import _quiet, _rdp_curve

    root, kept = logging.getLogger(), logging.getLogger().handlers[:]
    for handler in kept:
        root.removeHandler(handler)
    own = logging.getLogger("covey.test.own")
    try:
        _rdp_curve.cache_clear()
        assert privacy.epsilon(1.0, 0.5, 2, 1e-5) > 0
        assert root.handlers == []
        with _quiet():  # meanwhile a record no handler takes still reaches the last resort
            logging.getLogger("covey.test.nobody").warning("seen once")
            own.addHandler(logging.NullHandler())
            own.warning("taken by its own handler")
        assert root.handlers == []
        assert capsys.readouterr().err == "seen once\n"
    finally:
        own.handlers.clear()
        for handler in kept:
            root.addHandler(handler)
