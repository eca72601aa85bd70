"""A round's clients share one model layout: it is laid out once, not once per client.

A compressed fit task's model is laid out by the client (to check its update),
a simulated reply's arrays by the check of their bytes, and a simulated reply
of a task kind's own result is split into its JSON head and arrays: work that
grew with the clients of a round. These tests count that work (never time it)
and hold the kept layouts against the full computations they stand for.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

import covey
from _counting import count_calls
from covey.compress import _plain, _runtime
from covey.compress._plain import encoded_from_plain, encoded_to_plain
from covey.compress._schemes import Encoded, Quantize
from covey.core import _codec
from covey.core._messages import FitResult
from covey.core._weights import WeightsError, WeightsSpec
from covey.sim import _sendable
from covey.transport.grpc import _wirecheck
from covey.transport.grpc._wire import flatten_extras, result_head
from covey.transport.grpc._wirecheck import (
    check_fit_bytes,
    check_reply_bytes,
    reply_bytes_error,
    reply_bytes_limit,
)


def _model(arrays: int = 12) -> dict[str, np.ndarray]:
    return {f"l{i:02d}": np.full(5 + i, 0.5, np.float32) for i in range(arrays)}


class _Shift(covey.Client):
    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        return covey.FitResult(weights={k: v + 0.25 for k, v in weights.items()}, num_examples=3)

    def evaluate(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        return covey.EvaluateResult(loss=0.0, num_examples=1)


def _run(clients: int, rounds: int = 2) -> Any:
    strategy = covey.FedAvg(fraction_fit=1.0, min_fit_clients=clients, fraction_evaluate=0.0)
    return covey.simulate(
        lambda cid: _Shift(),
        clients,
        rounds,
        initial_weights=_model(),
        strategy=strategy,
        compression="q8",
        seed=0,
    )


@pytest.fixture
def forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """No layout kept from an earlier test."""
    monkeypatch.setattr(_runtime, "_last_spec", None, raising=False)
    monkeypatch.setattr(_wirecheck, "_last_reply", None, raising=False)
    monkeypatch.setattr(_wirecheck, "_last", None)


def _layouts(monkeypatch: pytest.MonkeyPatch, clients: int) -> int:
    """How many times a compressed run of ``clients`` clients lays out weights."""
    calls = []
    real = WeightsSpec.of

    def counted(weights: Any) -> WeightsSpec:
        calls.append(1)
        return real(weights)

    with monkeypatch.context() as patched:
        patched.setattr(WeightsSpec, "of", counted)
        patched.setattr(_runtime, "_last_spec", None, raising=False)
        patched.setattr(_wirecheck, "_last_reply", None, raising=False)
        patched.setattr(_wirecheck, "_last", None)
        _run(clients)
    return len(calls)


def test_a_compressed_round_lays_out_its_model_once_for_all_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _layouts(monkeypatch, 2) == _layouts(monkeypatch, 6)


def test_a_reply_of_ones_own_is_split_into_head_and_arrays_once(
    monkeypatch: pytest.MonkeyPatch, forgotten: None
) -> None:
    calls = count_calls(monkeypatch, "result_head", _sendable, _wirecheck)
    _run(5, rounds=1)
    assert calls == [5]  # one compressed reply per client


def test_kept_layouts_give_the_results_of_fresh_ones(
    monkeypatch: pytest.MonkeyPatch, forgotten: None
) -> None:
    kept = _run(3)
    with monkeypatch.context() as patched:
        patched.setattr(WeightsSpec, "describes", lambda self, weights: False, raising=False)
        fresh = _run(3)
    for a, b in zip(kept.weights.values(), fresh.weights.values(), strict=True):
        assert a.tobytes() == b.tobytes()
    assert [r.bytes_received for r in kept.history] == [r.bytes_received for r in fresh.history]
    assert [r.bytes_received for r in kept.history][-1]


def _spec_or_none(weights: Any) -> WeightsSpec | None:
    try:
        return WeightsSpec.of(weights)
    except WeightsError:
        return None


class _Lying(Mapping[str, Any]):
    """A mapping whose length is not its number of items."""

    def __init__(self, items: dict[str, Any], length: int) -> None:
        self.items_, self.length = items, length

    def __getitem__(self, key: str) -> Any:
        return self.items_[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.items_)

    def __len__(self) -> int:
        return self.length


def _variants(model: dict[str, np.ndarray]) -> list[Any]:
    first = next(iter(model))
    return [
        {k: v * 2 for k, v in model.items()},  # another round's model
        {**model, first: np.zeros(4, np.float32)},  # a shape
        {**model, first: np.zeros(5, np.float64)},  # a dtype
        {**model, first: np.zeros(5, ">f4")},  # a byte order
        dict(reversed(model.items())),  # the order
        {**model, "more": np.zeros(1, np.float32)},  # one more
        {k: v for k, v in model.items() if k != first},  # one less
        {**model, first: np.ma.masked_array(np.zeros(5, np.float32))},  # no array
        {**model, first: [0.0] * 5},  # no array
        {**model, first: np.zeros(5, np.complex64)},  # no model dtype
        _Lying(dict(list(model.items())[:-1]), len(model)),  # one item short
        {},
        None,
        model,
    ]


def test_describes_is_what_laying_out_anew_says() -> None:
    model = _model()
    spec = WeightsSpec.of(model)
    for variant in _variants(model):
        assert spec.describes(variant) == (_spec_or_none(variant) == spec)


def test_the_clients_kept_layout_follows_each_model(forgotten: None) -> None:
    model = _model()
    for variant in [model, *_variants(model), model]:
        expected = _spec_or_none(variant)
        if expected is None:
            with pytest.raises(WeightsError):
                _runtime._spec_of(variant)
        else:
            assert _runtime._spec_of(variant) == expected


def _fresh_reply_check(reply: Any, model: Any) -> str | None:
    """check_reply_bytes worked out in full, as it was for every reply."""
    most = reply_bytes_limit(model)
    arrays = result_head(reply)[1]
    if not arrays:
        return None
    try:
        spec = WeightsSpec.of(arrays)
    except WeightsError as exc:
        return f"cannot send the result: {exc}"
    size = _codec.encoded_size(arrays, spec)
    return reply_bytes_error("mine", size, most) if size > most else None


def test_a_reply_laid_out_as_the_last_is_still_checked(forgotten: None) -> None:
    reply = _model(30)
    small = {"w": np.zeros(3, np.float32)}  # a cap far below the reply
    for variant in [reply, *_variants(reply)[:-4], reply]:
        for model in (reply, small, reply):
            assert check_reply_bytes("mine", variant, model) == _fresh_reply_check(variant, model)


def test_a_reply_laid_out_as_the_last_is_not_laid_out_again(
    monkeypatch: pytest.MonkeyPatch, forgotten: None
) -> None:
    reply, model = _model(30), _model(30)
    assert check_reply_bytes("mine", reply, model) is None
    laid = count_calls(monkeypatch, "of", WeightsSpec)  # type: ignore[arg-type]
    bounded = count_calls(monkeypatch, "encoded_size_at_most", _codec)
    for _ in range(3):
        assert check_reply_bytes("mine", {k: v + 1 for k, v in reply.items()}, model) is None
    assert laid == bounded == [0]


def test_a_fit_result_well_within_its_cap_is_not_laid_out(
    monkeypatch: pytest.MonkeyPatch, forgotten: None
) -> None:
    model = _model()
    result = FitResult(weights=model, num_examples=1, extras={"e": {"a": np.zeros(3)}})
    reply_bytes_limit(model)  # the model's cap, worked out once per layout
    sized = count_calls(monkeypatch, "encoded_size", _codec)
    assert check_fit_bytes("fit", result, model) is None
    assert sized == [0]


def test_a_fit_result_past_its_cap_gets_its_exact_size() -> None:
    model = {"w": np.zeros(3, np.float32)}
    most = reply_bytes_limit(model)
    extras = {"e": {f"a{i}": np.zeros(1, np.uint8) for i in range(most // 64 + 1)}}
    result = FitResult(weights=model, num_examples=1, extras=extras)
    size = _codec.encoded_size(model) + _codec.encoded_size(flatten_extras(extras))
    assert size > most
    assert check_fit_bytes("fit", result, model) == reply_bytes_error("fit", size, most)
    unencodable = FitResult(weights={"w": np.zeros(3, np.complex64)}, num_examples=1, extras=extras)
    assert check_fit_bytes("fit", unencodable, model) is None


class _CountingPattern:
    """A compiled pattern's ``fullmatch``, counted."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def fullmatch(self, text: str) -> Any:
        self.calls += 1
        return self.real.fullmatch(text)


def _plain_update(model: dict[str, np.ndarray]) -> dict[str, Any]:
    parts = Quantize(8).encode(model, np.random.default_rng(0))
    return encoded_to_plain(Encoded("q8", parts, 1, {}, {}))


def test_a_q8_updates_names_are_read_once_for_all_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_plain, "_read", {}, raising=False)
    model = _model()
    spec = WeightsSpec.of(model)
    first = encoded_from_plain(_plain_update(model), Quantize(8), spec)
    pattern = _CountingPattern(_plain._PLAIN_NAME)
    monkeypatch.setattr(_plain, "_PLAIN_NAME", pattern)
    again = encoded_from_plain(_plain_update(model), Quantize(8), spec)  # another client's
    assert pattern.calls == 0
    assert {n: sorted(p) for n, p in again.parts.items()} == {
        n: sorted(p) for n, p in first.parts.items()
    }
    for name, parts in first.parts.items():
        for key, array in parts.items():
            assert again.parts[name][key].tobytes() == array.tobytes()


def _refusal(update: dict[str, Any], spec: WeightsSpec) -> str:
    with pytest.raises(WeightsError) as refused:
        encoded_from_plain(update, Quantize(8), spec)
    return str(refused.value)


def test_a_name_read_before_is_refused_as_one_never_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_plain, "_read", {}, raising=False)
    long = {"x" * 400: np.zeros(3, np.float32), "w": np.zeros(3, np.float32)}
    update = _plain_update(long)
    short = WeightsSpec.of({"w": np.zeros(3, np.float32)})
    never_read = _refusal(update, short)
    _plain._read.clear()
    assert encoded_from_plain(update, Quantize(8), WeightsSpec.of(long)).parts
    assert _refusal(update, short) == never_read
