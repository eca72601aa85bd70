"""The per-array checks of a reply give the verdicts they gave, with less work per array.

A simulated reply is checked against a deployed reply's caps (the model's limits,
the reply's encoded size), its JSON head measured and encoded, and a compressed
update's array names read back. These tests hold the quicker paths against the
full computations they stand for: the same sizes, limits, errors and names.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from covey.compress._plain import _array_name
from covey.core import _codec
from covey.core._weights import WeightsError, WeightsSpec
from covey.transport.grpc import _wirecheck
from covey.transport.grpc._wire import (
    WireError,
    WireLimits,
    _at,
    _to_json,
    dumps,
    dumps_within,
)
from covey.transport.grpc._wirecheck import (
    NO_MODEL_REPLY_BYTES,
    check_reply_bytes,
    reply_bytes_error,
    reply_bytes_limit,
    reply_limit,
    result_limits,
)


def _names_model(names: list[str], size: int = 3) -> dict[str, np.ndarray]:
    return {name: np.arange(size, dtype=np.float32) for name in names}


MODELS: list[dict[str, np.ndarray]] = [
    {"w": np.zeros(1, np.float32)},
    {"a": np.zeros((2, 3), np.float64), "b": np.zeros((), np.int64), "c": np.zeros(0, bool)},
    _names_model([f"layer{i:03d}.weight" for i in range(300)]),
    _names_model(["é", "日本", "\U0001f600" * 7, 'q"uote', "back\\slash", "\x01"]),
    {"big": np.zeros((3, 1, 1, 1, 1, 5), np.float16), "x" * 300: np.zeros(70, np.uint8)},
]


@pytest.mark.parametrize("model", MODELS)
def test_encoded_size_at_most_bounds_the_encoding(model: dict[str, np.ndarray]) -> None:
    spec = WeightsSpec.of(model)
    size = len(_codec.encode(model))
    assert _codec.encoded_size(model) == size
    assert _codec.encoded_size(model, spec) == size
    assert size <= _codec.encoded_size_at_most(model)


def test_encoded_size_at_most_bounds_long_offsets_and_dims() -> None:
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (10**12,), (0,))
    model: dict[str, np.ndarray] = {"\U0001f600": np.zeros((1,) * 30, np.float64), "h": huge}
    plan = _codec.layout(model)
    assert plan.total <= _codec.encoded_size_at_most(model)


def _fresh_limits(model: Any) -> tuple[WireLimits, int]:
    """What result_limits and reply_bytes_limit gave, worked out from the model alone."""
    try:
        spec = WeightsSpec.of(model)
    except WeightsError:
        return WireLimits(), NO_MODEL_REPLY_BYTES
    return WireLimits.for_spec(spec), reply_limit(_codec.encoded_size(model), spec)


def _limits(model: Any) -> tuple[WireLimits, int]:
    return result_limits(model), reply_bytes_limit(model)


def test_model_limits_follow_the_layout_of_each_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wirecheck, "_last", None)
    model = _names_model([f"l{i}" for i in range(50)])
    assert _limits(model) == _fresh_limits(model)
    same = {name: array + 1 for name, array in model.items()}  # another round's model
    assert _limits(same) == _fresh_limits(same)
    variants: list[Any] = [
        {**model, "l3": np.zeros(4, np.float32)},  # a shape
        {**model, "l3": np.zeros(3, np.float64)},  # a dtype
        {**model, "l3": np.zeros(3, ">f4")},  # a byte order
        dict(reversed(model.items())),  # the order: other offsets in the header
        {**model, "l50": np.zeros(3, np.float32)},  # one more
        {k: v for k, v in model.items() if k != "l7"},  # one less
        {**model, "l3": np.ma.masked_array(np.zeros(3, np.float32))},  # no model
        {**model, "l3": [0.0, 0.0, 0.0]},  # no model
        {**model, "l3": np.zeros(3, np.complex64)},  # no model
        model,
    ]
    for variant in variants:
        assert _limits(variant) == _fresh_limits(variant)
        assert _limits(model) == _fresh_limits(model)
    model["l3"] = np.zeros((3, 2), np.float32)  # changed in place
    assert _limits(model) == _fresh_limits(model)


def test_a_model_of_the_last_layout_is_not_laid_out_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_wirecheck, "_last", None)
    model = _names_model([f"l{i}" for i in range(50)])
    expected = _fresh_limits(model)
    assert _limits(model) == expected
    calls = []
    real = WeightsSpec.of

    def counted(weights: Any) -> WeightsSpec:
        calls.append(1)
        return real(weights)

    monkeypatch.setattr(WeightsSpec, "of", counted)
    for _ in range(3):
        assert _limits({name: array * 2 for name, array in model.items()}) == expected
    assert calls == []


@pytest.mark.parametrize("model", MODELS)
def test_reply_bytes_cap_gives_the_exact_verdict(model: dict[str, np.ndarray]) -> None:
    most = reply_bytes_limit(model)
    base = _codec.encoded_size({"v": np.zeros(0, np.uint8)})
    for wanted in (most - 64, most, most + 1, most + 64):
        # One uint8 array: its encoding grows with it byte for byte, past padding.
        n = max(0, wanted - base)
        while _codec.encoded_size({"v": np.zeros(n, np.uint8)}) < wanted:
            n += 1
        reply = {"v": np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (n,), (0,))}
        size = _codec.encoded_size(reply)
        expected = reply_bytes_error("mine", size, most) if size > most else None
        assert check_reply_bytes("mine", reply, model) == expected


def test_reply_bytes_cap_of_many_small_arrays_and_bad_ones() -> None:
    model = _names_model(["w"], 10)
    most = reply_bytes_limit(model)
    many = {f"n{i}": np.zeros(1, np.uint8) for i in range(most // 64 + 1)}
    size = _codec.encoded_size(many)
    assert size > most
    assert check_reply_bytes("mine", many, model) == reply_bytes_error("mine", size, most)
    assert check_reply_bytes("mine", {"n": np.zeros(3, np.uint8)}, model) is None
    bad = check_reply_bytes("mine", {"n": np.zeros(3, np.complex64)}, model)
    assert bad is not None
    assert bad.startswith("cannot send the result: weight 'n' has dtype complex64")
    masked = check_reply_bytes("mine", {"n": np.ma.masked_array(np.zeros(3))}, model)
    assert masked is not None
    assert "masked array" in masked


def _old_to_json_list(value: list[Any], max_string: int | None) -> Any:
    """The loop of _to_json over a list, as it ran for every list."""
    items = []
    for i, v in enumerate(value):
        try:
            items.append(_to_json(v, max_string))
        except WireError as exc:
            raise _at(exc, f"[{i}]") from None
    return items


NAME_LISTS: list[list[Any]] = [
    [],
    ["a"],
    [f"layer{i:03d}.weight" for i in range(300)],
    ["é", "\U0001f600", "", 'q"', "\\"],
    ["ok", "x" * 40, "ok"],
    ["ok", 3, "x" * 40],
    ("t", "u"),  # type: ignore[list-item]
]


@pytest.mark.parametrize("names", NAME_LISTS)
@pytest.mark.parametrize("max_string", [None, 40, 39])
def test_lists_of_names_encode_as_before(names: list[Any], max_string: int | None) -> None:
    try:
        expected: Any = _old_to_json_list(list(names), max_string)
    except WireError as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        with pytest.raises(WireError) as got:
            _to_json(names, max_string)
        assert str(got.value) == message
        return
    got_value = _to_json(names, max_string)
    assert got_value == expected
    assert type(got_value) is list
    assert dumps(names) == json.dumps(expected, separators=(",", ":")).encode()


def test_a_too_long_name_in_a_list_is_named_by_its_place() -> None:
    limits = WireLimits(max_string=6)
    with pytest.raises(WireError, match=r"a string of 7 characters exceeds the limit of 6"):
        dumps_within({"arrays": ["a", "b", "ccccccc"]}, limits)
    with pytest.raises(WireError, match=r"\[2\]"):
        dumps_within({"arrays": ["a", "b", "ccccccc"]}, limits)


def _old_measure_list(value: list[Any], depth: int, limits: WireLimits) -> int:
    return 2 + sum(_wirecheck._measure(item, depth + 1, limits, [0]) + 1 for item in value)


@pytest.mark.parametrize("names", NAME_LISTS)
@pytest.mark.parametrize("depth", [0, 3, 4, 5])
@pytest.mark.parametrize("max_string", [40, 39])
def test_lists_of_names_measure_as_before(names: list[Any], depth: int, max_string: int) -> None:
    limits = WireLimits(max_string=max_string, max_depth=5)
    try:
        expected: int | None = _old_measure_list(list(names), depth, limits)
    except _wirecheck._MayRefuse:
        expected = None
    try:
        got: int | None = _wirecheck._measure(names, depth, limits, [0])
    except _wirecheck._MayRefuse:
        got = None
    assert got == expected


def _reference_name(key: str) -> tuple[str, str, str] | None:
    try:
        parsed = json.loads(key)
    except ValueError:
        return None
    if (
        not isinstance(parsed, list)
        or len(parsed) != 3
        or parsed[0] not in ("part", "extra")
        or not all(isinstance(p, str) for p in parsed)
    ):
        return None
    return parsed[0], parsed[1], parsed[2]


def _keys() -> list[str]:
    rng = random.Random(7)
    alphabet = ['"', "\\", " ", ",", "]", "[", "a", "é", "\x00", "\x7f", "\n", "u", "0"]
    alphabet.append("\U0001f600")
    keys = [
        '["part", "w", "codes"]',
        '["extra", "c", "w"]',
        '["part","w","codes"]',
        '["part", "w", "codes"] ',
        '["part", "w", "c", "d"]',
        '["part", "w"]',
        '["other", "w", "codes"]',
        '["part", "", ""]',
        '["part", "w", "co\\u0064es"]',
        '["part", "a", "b", "c"]',
        '["part", "a", "b"]]',
        '["part", "a\\"", "b"]',
    ]
    for _ in range(3000):
        pieces = ["".join(rng.choices(alphabet, k=rng.randrange(4))) for _ in range(2)]
        kind = rng.choice(["part", "extra", "par"])
        keys.append(f'["{kind}", "{pieces[0]}", "{pieces[1]}"]')
        keys.append(json.dumps([kind, *pieces]))
        keys.append(json.dumps([kind, *pieces], ensure_ascii=False))
    return keys


def test_array_names_read_as_json_reads_them() -> None:
    for key in _keys():
        expected = _reference_name(key)
        if expected is None:
            with pytest.raises(WeightsError, match="unexpected field"):
                _array_name(key, 10)
        else:
            assert _array_name(key, 10) == expected, key
