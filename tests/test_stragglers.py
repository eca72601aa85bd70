"""Stragglers, failures and client selection in simulation, checked against the history.

Every figure a round records (participants, failures and their reasons, the
examples and the aggregate) is compared with what the clients did. Nothing
here measures time: slowness is simulated (``client_durations``) or absent.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

import covey
from covey.core._messages import Scalar
from covey.sim._simulate import Backend


class Counting(covey.Client):
    """Adds ``cid + 1`` to every weight on ``cid + 1`` examples."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(
            weights={k: v + self.cid + 1 for k, v in weights.items()}, num_examples=self.cid + 1
        )

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=float(self.cid), num_examples=self.cid + 1)


def test_a_round_short_of_min_fit_clients_stops_the_run_and_says_why(tmp_path: Path) -> None:
    strategy = covey.FedAvg(min_fit_clients=5, fraction_evaluate=0.0)
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(
            Counting,
            6,
            3,
            strategy,
            {"w": np.zeros(2)},
            client_durations=lambda cid, rng: float(cid),  # clients 4 and 5 are too slow
            round_deadline=3.5,
            run_dir=tmp_path,
        )
    history = caught.value.history
    # The run ended before its last round: the history says why, in memory and on disk.
    assert history.stopped_reason == str(caught.value)
    assert "fewer than min_fit_clients=5" in history.stopped_reason
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["stopped_reason"] == history.stopped_reason
    # The round that fell short is recorded as it happened, timings included.
    last = history.rounds[-1]
    assert last.round == 1
    assert not last.aggregated
    assert last.fit_participants == [0, 1, 2, 3]
    assert last.fit_examples == 1 + 2 + 3 + 4
    assert [(f.cid, f.stage) for f in last.fit_failures] == [(4, "fit"), (5, "fit")]
    assert all("past the round deadline of 3.5 s" in f.error for f in last.fit_failures)
    assert {"fit", "total"} <= set(last.durations)
    np.testing.assert_array_equal(caught.value.weights["w"], np.zeros(2))  # untouched
    assert "one straggler" not in str(caught.value)  # it sampled 6, more than 5


@pytest.mark.parametrize("fraction_fit", [1.0, 0.5])
def test_a_straggler_of_a_round_sampling_only_min_fit_clients_is_said_to_stop_it(
    fraction_fit: float,
) -> None:
    # Documented (a round needs min_fit_clients replies), but the message said only
    # "1 of 2 sampled clients replied": not that sampling no more than the minimum lets
    # one straggler end the run, nor what to set.
    clients = round(2 / fraction_fit)
    strategy = covey.FedAvg(fraction_fit=fraction_fit, fraction_evaluate=0.0)  # min_fit 2
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(
            Counting,
            clients,
            2,
            strategy,
            {"w": np.zeros(2)},
            client_durations=lambda cid, rng: 5.0 if cid else 1.0,  # client 0 in time
            round_deadline=3.0,
        )
    said = str(caught.value)
    assert re.match(
        "round 1: [01] of 2 sampled clients replied, fewer than min_fit_clients=2; a round "
        "sampling no more than min_fit_clients stops at one straggler: sample more clients "
        r"\(fraction_fit\), lower min_fit_clients or allow more time \(round_deadline\); "
        r"failures: client \d.*: straggler: ",
        said,
    ), said


def _alternate(cid: int, rnd: int) -> bool:
    """Even clients are online in even rounds, odd ones in odd rounds."""
    return (cid + rnd) % 2 == 0


def _sampling(rounds: int, seed: int) -> covey.History:
    strategy = covey.FedAvg(
        fraction_fit=0.6, min_fit_clients=1, min_available_clients=1, fraction_evaluate=0.0
    )
    return covey.simulate(
        Counting, 10, rounds, strategy, {"w": np.zeros(1)}, seed=seed, availability=_alternate
    ).history


def test_every_available_client_is_sampled_about_equally_often() -> None:
    # Each round samples 6 of the 10 clients; the 5 offline ones drop out. Over
    # 300 rounds each client is online in 150 and trains in about 150 * 0.6 = 90;
    # a chi-square test with a fixed seed checks the counts.
    rounds = 300
    history = _sampling(rounds, seed=3)
    trained: Counter[int] = Counter()
    for record in history.rounds[1:]:
        sampled = sorted([*record.fit_participants, *(f.cid for f in record.fit_failures)])
        assert len(sampled) == 6
        # Exactly the online ones trained; each offline one failed, saying why.
        assert record.fit_participants == [c for c in sampled if _alternate(c, record.round)]
        for failure in record.fit_failures:
            assert failure.error == f"offline in round {record.round} (simulated availability)"
        assert record.fit_examples == sum(c + 1 for c in record.fit_participants)
        trained.update(record.fit_participants)
    counts = np.array([trained[c] for c in range(10)])
    expected = rounds * 0.5 * 0.6
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert stats.chi2.sf(chi2, df=9) > 0.001, counts
    # The same seed samples the same clients; another seed does not.
    first = [r.fit_participants for r in history.rounds[:21]]
    assert [r.fit_participants for r in _sampling(20, seed=3).rounds] == first
    assert [r.fit_participants for r in _sampling(20, seed=4).rounds] != first


class Uneven(covey.Client):
    """Client 1 sends NaN and client 2 raises every other round; client 3 has no examples.

    Each client reports its own metric keys besides the shared ``"a"``; client 1's
    evaluation loss is NaN in the rounds its fit is.
    """

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.fits = 0

    def _bad_round(self) -> bool:
        return self.fits % 2 == 0

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        self.fits += 1
        if self.cid == 1 and self._bad_round():
            return covey.FitResult(weights={"w": weights["w"] + np.nan}, num_examples=2)
        if self.cid == 2 and self._bad_round():
            raise RuntimeError(f"out of memory in fit {self.fits}")
        n = 0 if self.cid == 3 else self.cid + 1
        metrics: dict[str, Scalar] = {"a": float(self.cid), f"only{self.cid}": 1.0}
        return covey.FitResult(
            weights={"w": weights["w"] + self.cid}, num_examples=n, metrics=metrics
        )

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        loss = float("nan") if self.cid == 1 and self._bad_round() else float(self.cid)
        n = 0 if self.cid == 3 else self.cid + 1
        return covey.EvaluateResult(loss=loss, num_examples=n, metrics={"acc": self.cid / 10})


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_heterogeneous_clients_are_recorded_as_they_behaved(backend: Backend) -> None:
    result = covey.simulate(
        Uneven, 5, 4, covey.FedAvg(min_fit_clients=2), {"w": np.zeros(2)}, backend=backend
    )
    w = 0.0
    for record in result.history.rounds[1:]:
        bad = record.round % 2 == 0
        ok = [0, 3, 4] if bad else [0, 1, 2, 3, 4]
        assert record.fit_participants == ok
        examples = {c: (0 if c == 3 else c + 1) for c in ok}
        assert record.fit_examples == sum(examples.values())
        w += sum(c * n for c, n in examples.items()) / sum(examples.values())
        failures = {f.cid: f for f in record.fit_failures}
        assert sorted(failures) == ([1, 2] if bad else [])
        if bad:
            assert (
                failures[1].error
                == "client 1's weights: 'w' has 2 non-finite value(s) (NaN or Inf)"
            )
            assert failures[2].error == f"RuntimeError: out of memory in fit {record.round}"
            assert "Traceback" in failures[2].traceback
        # Metrics: weighted by examples over the clients that report each key; a
        # client with no examples weighs nothing.
        weighted = [(n, c) for c, n in examples.items() if n]
        assert record.fit_metrics["a"] == pytest.approx(
            sum(n * c for n, c in weighted) / sum(n for n, _ in weighted)
        )
        assert {k for k in record.fit_metrics if k.startswith("only")} == {
            f"only{c}" for c, n in examples.items() if n
        }
        # Federated evaluation after the round: client 1's NaN loss is its failure.
        evaluated = [0, 2, 3, 4] if bad else [0, 1, 2, 3, 4]
        assert record.evaluate_participants == evaluated
        if bad:
            (failure,) = record.evaluate_failures
            assert (failure.cid, failure.error) == (1, "its loss is nan, not a finite number")
        n = {c: (0 if c == 3 else c + 1) for c in evaluated}
        assert record.evaluate_examples == sum(n.values())
        assert record.evaluate_loss == pytest.approx(sum(c * n[c] for c in n) / sum(n.values()))
        assert record.evaluate_metrics["acc"] == pytest.approx(
            sum(c / 10 * n[c] for c in n) / sum(n.values())
        )
    np.testing.assert_allclose(result.weights["w"], np.full(2, w))


@pytest.mark.parametrize(("deadline", "per_round"), [(3.5, 3.5), (None, 5.0)])
def test_a_synchronous_round_records_the_simulated_time_it_took(
    deadline: float | None, per_round: float
) -> None:
    # Client k's fit takes k simulated seconds: with a deadline of 3.5 s a round
    # lasts until the deadline (clients 4 and 5 are stragglers); without one, it
    # lasts as long as its slowest client.
    result = covey.simulate(
        Counting,
        6,
        3,
        covey.FedAvg(min_fit_clients=2, fraction_evaluate=0.0),
        {"w": np.zeros(1)},
        client_durations=lambda cid, rng: float(cid),
        round_deadline=deadline,
    )
    clocks = [r.aggregate_info["clock"] for r in result.history.rounds[1:]]
    assert clocks == [per_round, 2 * per_round, 3 * per_round]


@pytest.mark.parametrize("error", ["no reply in time", "busy: still training round 1"])
def test_a_deployed_rounds_deadline_hint_names_serves_setting_and_the_flag(error: str) -> None:
    # It named --round-timeout alone, which a serve(round_timeout=...) user never typed.
    from covey.core._history import Failure
    from covey.server._retry import deadline_hint

    hint = deadline_hint([Failure(1, "fit", error)], sampled=2, min_fit_clients=2)
    assert hint.endswith("allow more time (round_timeout / --round-timeout)"), hint


def test_a_round_whose_clients_all_time_out_names_the_timeout_to_raise() -> None:
    # A round sampling more than min_fit_clients named no setting when all were late.
    from covey.core._history import Failure
    from covey.server._retry import deadline_hint

    late = [Failure(c, "fit", "no reply in time") for c in range(3)]
    hint = deadline_hint(late, sampled=3, min_fit_clients=2, timeout=5.0)
    assert hint == (
        "no client replied within the round timeout of 5 s: allow more time "
        "(round_timeout / --round-timeout)"
    )
    # Not when a client failed otherwise: raising the timeout would not be enough.
    other = [*late[:2], Failure(2, "fit", "ValueError: bad")]
    assert deadline_hint(other, sampled=3, min_fit_clients=2, timeout=5.0) == ""


class _Sleepy(covey.Client):
    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        time.sleep(0.05)
        return covey.FitResult(delta={"w": np.ones(1)}, num_examples=1)


def test_a_simulated_round_whose_clients_all_time_out_names_the_timeout() -> None:
    with pytest.raises(covey.FederationError) as caught:
        covey.simulate(
            lambda cid: _Sleepy(),
            3,
            1,
            covey.FedAvg(min_fit_clients=2, fraction_evaluate=0.0),
            {"w": np.zeros(1)},
            round_timeout=0.001,
        )
    assert "no client replied within the round timeout of 0.001 s" in str(caught.value)
    # It named covey server's --round-timeout too, which no simulation has.
    assert "allow more time (round_timeout);" in str(caught.value)
    assert "--round-timeout" not in str(caught.value)
