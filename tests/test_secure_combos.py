"""secure() combined with the loop's options and with other layers, checked from outside."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import covey
from covey.secagg import secure

CLIP, BITS = 1.0, 16


class Site(covey.Client):
    """A site whose update is drawn from its id; ``fail`` sites raise in fit."""

    def __init__(self, cid: int, fail: frozenset[int] = frozenset()) -> None:
        self.cid = cid
        self.fail = fail

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        if self.cid in self.fail:
            raise RuntimeError(f"site {self.cid} cannot train")
        rng = np.random.default_rng(self.cid)
        return covey.FitResult(
            delta={"w": rng.uniform(-0.5, 0.5, 8).astype(np.float32)},
            num_examples=10 + self.cid,
        )


def _secure(strategy: covey.Strategy, **kw: Any) -> covey.Strategy:
    with pytest.warns(UserWarning, match="honest-but-curious"):
        return secure(strategy, clip_range=CLIP, bits=BITS, **kw)


def _run(strategy: covey.Strategy, fail: frozenset[int], n: int = 6) -> Any:
    return covey.simulate(
        lambda cid: Site(cid, fail), n, 1, strategy, {"w": np.zeros(8, np.float32)}
    )


@pytest.mark.parametrize("secured", [False, True])
def test_accept_failures_false_stops_the_round_as_without_secure_aggregation(
    secured: bool,
) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0, accept_failures=False)
    if secured:
        strategy = _secure(strategy)
    with pytest.raises(covey.FederationError, match="accept_failures=False") as info:
        _run(strategy, frozenset({1}))
    assert "site 1 cannot train" in str(info.value)


@pytest.mark.parametrize("secured", [False, True])
def test_min_fit_clients_counts_the_clients_in_the_secure_sum(secured: bool) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0, min_fit_clients=5)
    if secured:
        strategy = _secure(strategy)
    with pytest.raises(covey.FederationError, match="fewer than min_fit_clients=5"):
        _run(strategy, frozenset({1, 2}))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"reducer": "median"}, "reducer must be 'auto', 'weighted_mean' or 'mean'"),
        ({"complete": "yes"}, "complete must be True, False or None"),
        ({"signed": "no"}, "signed must be True or False"),
        ({"threat": {"corrupt_rate": 0.1}}, "threat must be a covey.secagg.ThreatModel"),
        ({"noise": 3.0}, "noise must be a covey.secagg.Noise"),
        ({"metrics": ["loss"]}, "metrics must map each metric's name to its bound"),
        ({"metrics": {"loss": "x"}}, "metric 'loss' needs a positive finite bound, got 'x'"),
        ({"metrics": {1: 1.0}}, "metrics names a metric by int 1, not a str"),
        ({"metrics": {"dp_epsilon": 100.0}}, "'dp_epsilon' is a privacy budget"),
        ({"metrics": {"loss": 9.0, "dp_delta": 1.0}}, "'dp_delta' is a privacy budget"),
    ],
)
def test_secure_refuses_option_values_it_does_not_know(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        secure(covey.FedAvg(), clip_range=CLIP, **kw)


def _central(clip: float) -> covey.Strategy:
    return covey.privacy.central(
        covey.FedAvg(fraction_evaluate=0.0),
        noise_multiplier=1.0,
        clip=clip,
        delta=1e-5,
        clipping="client",
    )


@pytest.mark.parametrize("distributed", [False, True])
def test_a_dp_clip_wider_than_clip_range_is_refused(distributed: bool) -> None:
    # A clipped update could still hold a value outside the range, and that client's
    # RangeError would tell the server a fact about its update that DP does not cover.
    if distributed:
        noise = covey.secagg.Noise("gaussian", 4000.0, clip=1.0, delta=1e-5)
        make = lambda: secure(covey.FedAvg(), clip_range=0.5, noise=noise)  # noqa: E731
    else:
        make = lambda: secure(_central(1.0), clip_range=0.5)  # noqa: E731
    with pytest.raises(ValueError, match=r"DP clip 1 exceeds clip_range 0\.5"):
        make()


class NoExamples(Site):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(delta=super().fit(weights, config).delta, num_examples=0)


@pytest.mark.parametrize("secured", [False, True])
def test_a_round_without_examples_keeps_the_model_and_the_run_goes_on(secured: bool) -> None:
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    if secured:
        strategy = _secure(strategy)
    result = covey.simulate(NoExamples, 4, 2, strategy, {"w": np.ones(8, np.float32)})
    for record in result.history.rounds[1:]:
        assert not record.aggregated
        assert "num_examples=0" in record.aggregate_info["error"]
    np.testing.assert_array_equal(result.weights["w"], np.ones(8, np.float32))


def test_distributed_dp_counts_updates_whose_clients_report_no_examples() -> None:
    # Under distributed DP every client counts once, whatever its example count: a
    # round of clients reporting none is a mean of their updates, not a refused round
    # whose noisy sum was unmasked and charged for nothing.
    noise = covey.secagg.Noise("gaussian", 3.0, clip=0.5, delta=1e-5)
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0), noise=noise)
    result = covey.simulate(NoExamples, 4, 1, strategy, {"w": np.zeros(8, np.float32)})
    record = result.history.rounds[1]
    assert record.aggregated
    assert record.privacy is not None
    assert record.aggregate_info["distributed_dp"]["clients"] == 4
    assert not np.allclose(result.weights["w"], 0.0)


@pytest.mark.parametrize("kw", [{"min_fit_clients": 5}, {"accept_failures": False}])
def test_a_secure_round_the_loop_would_refuse_is_never_unmasked(kw: dict[str, Any]) -> None:
    # Under distributed DP the server must not hold a noisy sum the ledger does not
    # count: a round stopped for too few clients stops before anyone unmasks.
    noise = covey.secagg.Noise("gaussian", 3000.0, clip=0.5, delta=1e-5)
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0, **kw), noise=noise)
    with pytest.raises(covey.FederationError) as info:
        _run(strategy, frozenset({1, 2}))
    record = info.value.history.rounds[-1]
    assert record.aggregate_info["secagg_stage"] == "mask"
    assert "unmask" not in record.aggregate_info.get("secagg_seconds", {})
    assert record.privacy is None
    assert "site 1 cannot train" in str(info.value)


def test_a_client_leaving_in_the_unmasking_does_not_refuse_a_strict_round_once_unmasked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Client 2 sent its masked input and left as the others unmasked: its update is in
    # the sum the server now holds. Refusing the round then (accept_failures=False)
    # would leave that noisy sum out of the ledger, and a resumed run would release
    # the round again; the round counts, with every client in it, and names client 2.
    from covey.clients import _client

    unmask = _client._HANDLERS["secagg.unmask"]

    def leaving(client: Any, task: Any) -> Any:
        if client.cid == 2:
            raise ConnectionError("the phone went offline")
        return unmask(client, task)

    monkeypatch.setitem(_client._HANDLERS, "secagg.unmask", leaving)
    noise = covey.secagg.Noise("gaussian", 3000.0, clip=0.5, delta=1e-5)
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0, accept_failures=False), noise=noise)
    record = _run(strategy, frozenset()).history.rounds[1]
    assert record.aggregated
    assert record.fit_participants == list(range(6))
    assert record.aggregate_info["secagg_silent"] == [2]
    assert record.aggregate_info["distributed_dp"]["clients"] == 6
    assert record.privacy is not None
    (failure,) = record.fit_failures
    assert failure.cid == 2
    assert "it is in the sum" in failure.error


class ManyExamples(Site):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        result = super().fit(weights, config)
        many = 123_457 if self.cid == 1 else 10
        return covey.FitResult(delta=result.delta, num_examples=many)


def test_a_count_above_max_examples_fails_its_client_without_telling_the_count() -> None:
    # Secure aggregation reveals the sum of the example counts only; the failure the
    # server records says which bound was passed, never the client's count.
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0))
    result = covey.simulate(ManyExamples, 4, 1, strategy, {"w": np.zeros(8, np.float32)})
    (failure,) = result.history.rounds[1].fit_failures
    assert failure.cid == 1
    assert "num_examples exceeds max_examples=100000" in failure.error
    assert "secure(max_examples=...)" in failure.error
    assert "123457" not in failure.error + failure.traceback


def test_a_poisson_draw_too_small_for_secure_aggregation_says_to_sample_more() -> None:
    # Under central DP the clients of a round are a Poisson draw: one of fewer than the
    # threat model needs stops the run, and the error says how to make that rare.
    dp = covey.privacy.central(
        covey.FedAvg(fraction_fit=0.05, min_fit_clients=0, fraction_evaluate=0.0),
        noise_multiplier=1.0,
        clip=0.5,
        delta=1e-3,
        clipping="client",
    )
    with pytest.raises(covey.FederationError) as info:
        _run(_secure(dp), frozenset(), n=4)
    record = info.value.history.rounds[-1]
    assert record.aggregate_info["secagg_stage"] == "setup"
    assert "raise fraction_fit" in str(info.value)
    assert "fraction_fit x clients" in str(info.value)


class MovesByTheRange(covey.Client):
    """Returns new weights: each moved by exactly +-CLIP (rounded to float32)."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        step = np.where(np.arange(6) % 2 == 0, CLIP, -CLIP).astype(np.float32)
        return covey.FitResult(weights={"w": weights["w"] + step}, num_examples=3)


def test_new_weights_moved_by_exactly_clip_range_are_not_refused() -> None:
    # 0.7 + 1.0 is 1.7000002 in float32, and 1.7000002 - 0.7 reads 1.0000001: float
    # rounding of the weights, not a change outside the range.
    init = {"w": np.array([0.1, 0.3, 0.7, -0.3, 1e-3, 123.4], np.float32)}
    plain = covey.simulate(
        lambda cid: MovesByTheRange(), 4, 1, covey.FedAvg(fraction_evaluate=0.0), init
    )
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0))
    safe = covey.simulate(lambda cid: MovesByTheRange(), 4, 1, strategy, init)
    assert safe.history.rounds[1].fit_failures == []
    np.testing.assert_allclose(safe.weights["w"], plain.weights["w"], atol=2e-5)


class OutOfRange(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        delta = {"a": np.zeros(4, np.float32), "b": np.array([0.0, 0.0, 1.5], np.float32)}
        return covey.FitResult(delta=delta, num_examples=3)


def test_a_value_outside_the_range_is_named_by_its_array_and_index() -> None:
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0))
    init = {"a": np.zeros(4, np.float32), "b": np.zeros(3, np.float32)}
    with pytest.raises(covey.FederationError) as info:
        covey.simulate(lambda cid: OutOfRange(), 3, 1, strategy, init)
    failures = info.value.history.rounds[-1].fit_failures
    assert len(failures) == 3
    for failure in failures:
        assert "'b': the value at index 2 is outside the clipping range" in failure.error
        assert "1.5" not in failure.error  # the index, never the value


class CountsBatches(covey.Client):
    """A float weight and a step counter, as a BatchNorm model's state_dict holds them."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        new = {"w": weights["w"] + 0.1, "steps": weights["steps"] + 20}
        return covey.FitResult(weights=new, num_examples=3)


def test_an_integer_counter_outside_the_range_is_told_to_leave_the_model() -> None:
    # It was advised to raise clip_range, which would cost every float weight precision.
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0))
    init: dict[str, np.ndarray] = {"w": np.zeros(4, np.float32), "steps": np.zeros((), np.int64)}
    with pytest.raises(covey.FederationError) as info:
        covey.simulate(lambda cid: CountsBatches(), 3, 1, strategy, init)
    for failure in info.value.history.rounds[-1].fit_failures:
        assert "'steps' is an integer array whose change lies outside" in failure.error
        assert "Keep integer state out of the model" in failure.error


def test_a_client_cache_too_small_for_the_round_says_why_the_clients_drop() -> None:
    # A client's keys live with its object between the exchanges of a round: with a
    # client built for every task the protocol cannot run, and the error says so.
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0))
    with pytest.raises(covey.FederationError) as info:
        covey.simulate(Site, 4, 1, strategy, {"w": np.zeros(8, np.float32)}, client_cache=0)
    assert "client_cache" in str(info.value)
    assert "holds no keys of the round" in str(info.value)


def test_a_client_built_where_a_collected_one_was_does_not_inherit_its_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python gives a new object the id of one just collected (client_cache=0 and Ray
    # actors rebuild clients): keys kept by id alone went to the new client. Every
    # object is given one id here, as the two would have.
    import gc
    from types import SimpleNamespace

    from covey.secagg import ProtocolAbort
    from covey.secagg import _handlers as handlers

    monkeypatch.setattr(handlers, "id", lambda obj: 12345, raising=False)
    session = b"s" * 16
    first = Site(0)
    handlers._keep(first, SimpleNamespace(setup=SimpleNamespace(session=session)))  # type: ignore[arg-type]
    del first
    gc.collect()
    later = Site(1)
    with pytest.raises(ProtocolAbort, match="holds no keys of the round"):
        handlers._state(later, {"session": session})
    assert 12345 not in handlers._STATES  # the collected client's secrets went with it


def test_simulated_stragglers_drop_out_of_a_secure_round_as_of_a_plain_one() -> None:
    # Training happens in the masked-input exchange, which the simulated clock must time.
    def speed(cid: int, rng: Any) -> float:
        return float(cid)

    kw: dict[str, Any] = {"client_durations": speed, "round_deadline": 4.5}
    init = {"w": np.zeros(8, np.float32)}
    plain = covey.simulate(Site, 8, 2, covey.FedAvg(fraction_evaluate=0.0), init, **kw)
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0))
    safe = covey.simulate(Site, 8, 2, strategy, init, **kw)
    for a, b in zip(plain.history.rounds[1:], safe.history.rounds[1:], strict=True):
        assert sorted(b.fit_participants) == sorted(a.fit_participants) == [0, 1, 2, 3, 4]
        assert sorted(f.cid for f in b.fit_failures) == [5, 6, 7]
        assert all("straggler" in f.error for f in b.fit_failures)
    np.testing.assert_allclose(safe.weights["w"], plain.weights["w"], atol=2 * 2 / 32767)


class Signed(Site):
    """A site with its Ed25519 identity."""

    def __init__(self, cid: int, identity: covey.secagg.Identity) -> None:
        super().__init__(cid)
        self.secagg_identity = identity


def test_a_server_given_the_directory_leaves_out_a_client_whose_keys_do_not_verify() -> None:
    # Without the directory the server forwards the bad signature and every neighbour
    # aborts: one site with a key nobody trusts stops every round it is sampled in.
    names = [f"site-{k}" for k in range(6)]
    ids = covey.secagg.identities(names)
    stale = covey.secagg.identities(["site-3"])["site-3"]  # a key the others do not trust
    directory = dict(ids["site-0"].peers)

    def client_fn(cid: int) -> Signed:
        return Signed(cid, stale if cid == 3 else ids[names[cid]])

    strategy = covey.FedAvg(fraction_evaluate=0.0)
    init = {"w": np.zeros(8, np.float32)}
    with pytest.warns(UserWarning, match="curious threat model"):
        unsafe = secure(strategy, clip_range=CLIP, signed=True)
    with pytest.warns(UserWarning, match="curious threat model"):
        safe = secure(strategy, clip_range=CLIP, signed=True, directory=directory)
    with pytest.raises(covey.FederationError, match="not signed by 'site-3'"):
        covey.simulate(client_fn, 6, 1, unsafe, init)
    record = covey.simulate(client_fn, 6, 1, safe, init).history.rounds[1]
    assert sorted(record.fit_participants) == [0, 1, 2, 4, 5]
    assert [f.cid for f in record.fit_failures] == [3]
    assert "not signed by 'site-3'" in record.fit_failures[0].error


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"directory": {"a": b"x" * 32}}, "directory needs signed=True"),
        ({"signed": True, "directory": {"a": b"short"}}, "32-byte Ed25519 public key"),
    ],
)
def test_a_directory_is_checked_when_secure_is_called(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        secure(covey.FedAvg(), clip_range=CLIP, **kw)


def test_a_forged_claim_to_a_name_does_not_push_its_owner_out() -> None:
    names = [f"site-{k}" for k in range(5)]
    ids = covey.secagg.identities(names)
    forger = covey.secagg.Identity("site-4", ids["site-0"].signing_key, ids["site-0"].peers)

    def client_fn(cid: int) -> Signed:  # client 0 signs as site-4 with its own key
        return Signed(cid, forger if cid == 0 else ids[names[cid]])

    with pytest.warns(UserWarning, match="curious threat model"):
        safe = secure(
            covey.FedAvg(fraction_evaluate=0.0),
            clip_range=CLIP,
            signed=True,
            directory=dict(ids["site-1"].peers),
        )
    record = covey.simulate(client_fn, 5, 1, safe, {"w": np.zeros(8, np.float32)}).history
    assert sorted(record.rounds[1].fit_participants) == [1, 2, 3, 4]


@pytest.mark.parametrize("value", [np.float32(0.5), np.int64(1), np.float64(0.5), 1])
def test_a_declared_metric_of_a_numpy_type_is_summed_as_without_secure_aggregation(
    value: Any,
) -> None:
    class Reports(covey.Client):
        def fit(self, weights: Any, config: Any) -> covey.FitResult:
            delta = {"w": np.full(8, 0.1, np.float32)}
            return covey.FitResult(delta=delta, num_examples=2, metrics={"loss": value})

    init = {"w": np.zeros(8, np.float32)}
    plain = covey.simulate(lambda cid: Reports(), 3, 1, covey.FedAvg(fraction_evaluate=0.0), init)
    strategy = _secure(covey.FedAvg(fraction_evaluate=0.0), metrics={"loss": 2.0})
    safe = covey.simulate(lambda cid: Reports(), 3, 1, strategy, init)
    expected = plain.history.rounds[1].fit_metrics["loss"]
    assert safe.history.rounds[1].fit_metrics["loss"] == pytest.approx(expected, abs=1e-4)


def test_signed_keys_under_a_curious_threat_model_warn_that_lists_can_be_split() -> None:
    # The consistency check counts signatures up to the threshold: under the curious
    # threat model's low threshold two groups of clients, shown different lists, each
    # reach it, so a lying server still obtains both secrets of a client.
    with pytest.warns(UserWarning, match="semi-malicious"):
        secure(covey.FedAvg(), clip_range=CLIP, signed=True)
    semi = covey.secagg.ThreatModel(0.05, 0.05, adversary="semi-malicious")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        secure(covey.FedAvg(), clip_range=CLIP, signed=True, threat=semi)


def test_a_large_draw_stopped_at_setup_is_not_told_to_sample_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A setup that fails for a draw of 20 clients or more fails for too many clients or
    # too wide a sum; the error said to raise fraction_fit, which makes it worse.
    from covey.secagg import _secure as secured
    from covey.secagg._driver import SecAggAbort

    def too_wide(*args: Any, **kw: Any) -> Any:
        raise SecAggAbort("the sum of 25 values needs a 63-bit ring, more than 62", "setup", {})

    monkeypatch.setattr(secured, "secure_sum", too_wide)
    dp = covey.privacy.central(
        covey.FedAvg(fraction_fit=1.0, min_fit_clients=0, fraction_evaluate=0.0),
        noise_multiplier=1.0,
        clip=0.5,
        delta=1e-3,
        clipping="client",
    )
    with pytest.raises(covey.FederationError, match="63-bit ring") as info:
        _run(_secure(dp), frozenset(), n=25)
    assert "fraction_fit" not in str(info.value)
