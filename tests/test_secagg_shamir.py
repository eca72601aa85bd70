"""Shamir sharing: any t shares reconstruct, t-1 reveal nothing (exhaustive and property-based)."""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covey.secagg import _shamir
from covey.secagg._shamir import PRIME, ShamirError, combine, combine_limbs, split, split_limbs


def test_every_t_subset_reconstructs_exhaustively() -> None:
    secret = bytes(range(32))
    for n in range(2, 8):
        for t in range(1, n + 1):
            shares = split(secret, t, list(range(1, n + 1)))
            for subset in itertools.combinations(range(1, n + 1), t):
                assert combine({x: shares[x] for x in subset}, t, 32) == secret


def test_small_field_t_minus_one_shares_are_uniform_for_every_secret() -> None:
    # Over GF(7) with t = 3, enumerate every polynomial: for any 2 holders, the
    # joint distribution of their shares is the same (uniform) for every secret.
    p, t, xs = 7, 3, [1, 2, 3, 4]
    for pair in itertools.combinations(range(len(xs)), t - 1):
        dists = []
        for secret in range(p):
            counts: Counter[tuple[int, ...]] = Counter()
            for a1, a2 in itertools.product(range(p), repeat=2):
                values = tuple((secret + a1 * xs[i] + a2 * xs[i] ** 2) % p for i in pair)
                counts[values] += 1
            assert set(counts.values()) == {1}
            assert len(counts) == p * p
            dists.append(counts)
        assert all(d == dists[0] for d in dists)


def test_split_limbs_matches_the_polynomial_it_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force known coefficients and compare with a hand evaluation.
    coeffs = np.array([[3], [5]], dtype=np.uint64)
    monkeypatch.setattr(_shamir, "random_field", lambda shape, prime=PRIME: coeffs)
    out = split_limbs(np.array([2], dtype=np.uint64), 3, [1, 2, 10], prime=11)
    assert out[:, 0].tolist() == [(2 + 3 * x + 5 * x * x) % 11 for x in (1, 2, 10)]


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=40),
    n=st.integers(min_value=1, max_value=30),
    data=st.data(),
)
def test_any_t_of_n_reconstructs(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=1, max_value=n))
    xs = data.draw(st.lists(st.integers(1, PRIME - 1), min_size=n, max_size=n, unique=True))
    shares = split(secret, t, xs)
    chosen = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    assert combine({x: shares[x] for x in chosen}, t, len(secret)) == secret


@settings(max_examples=40, deadline=None)
@given(
    s1=st.integers(0, 10),
    s2=st.integers(0, 10),
    t=st.integers(2, 4),
    seen=st.lists(st.integers(1, 10), min_size=1, max_size=3, unique=True),
    values=st.lists(st.integers(0, 10), min_size=3, max_size=3),
)
def test_t_minus_one_shares_fit_every_secret(
    s1: int, s2: int, t: int, seen: list[int], values: list[int]
) -> None:
    # In GF(11), whatever t-1 share values were seen, each candidate secret is
    # explained by exactly one polynomial: the shares say nothing about it.
    p = 11
    seen = seen[: t - 1]
    observed = values[: len(seen)]
    for secret in (s1, s2):
        points = {0: secret, **dict(zip(seen, observed, strict=True))}
        fits = 0
        for coeffs in itertools.product(range(p), repeat=t - 1):
            poly = (secret, *coeffs)
            if all(sum(c * x**i for i, c in enumerate(poly)) % p == y for x, y in points.items()):
                fits += 1
        assert fits == p ** (t - 1 - len(seen))


def test_too_few_or_malformed_shares_are_refused() -> None:
    shares = split(b"x" * 32, 3, [1, 2, 3])
    with pytest.raises(ShamirError, match="cannot reconstruct"):
        combine({1: shares[1], 2: shares[2]}, 3, 32)
    with pytest.raises(ShamirError, match="bytes"):
        combine({1: shares[1], 2: shares[2], 3: b"short"}, 3, 32)
    with pytest.raises(ShamirError, match="distinct"):
        split(b"x", 2, [1, 1, 2])
    with pytest.raises(ShamirError):
        combine_limbs({1: [PRIME], 2: [0]}, 2)


def test_random_field_is_in_range_and_not_constant() -> None:
    values = _shamir.random_field((10_000,))
    assert values.max() < PRIME
    assert len(np.unique(values)) > 9_900


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(0, 12),
    st.data(),
)
def test_decode_outvotes_up_to_half_the_spare_shares_and_refuses_more(
    t: int, spare: int, data: st.DataObject
) -> None:
    secret = bytes(range(32))
    m = t + spare
    shares = split(secret, t, list(range(1, m + 1)))
    wrong = data.draw(st.sets(st.integers(1, m), max_size=m))
    for x in wrong:  # a false share: one limb moved inside the field
        limbs = np.frombuffer(shares[x], dtype="<u4").astype(np.int64)
        limbs[x % limbs.size] = (limbs[x % limbs.size] + 1) % PRIME
        shares[x] = limbs.astype("<u4").tobytes()
    if 2 * len(wrong) <= spare:
        got, false = _shamir.decode(shares, t, 32)
        assert (got, false) == (secret, sorted(wrong))
    else:  # beyond the decoding bound: a refusal or an answer, never another error
        with contextlib.suppress(ShamirError):
            _shamir.decode(shares, t, 32)


def test_decode_finds_false_shares_in_every_run_of_threshold_points() -> None:
    # 11 shares of a 5-of-n secret, false at points 2, 3 and 8: every run of 5
    # consecutive points holds one, so no run's polynomial was tried that was true
    secret = bytes(range(32))
    shares = split(secret, 5, list(range(1, 12)))
    for x in (2, 3, 8):
        limbs = np.frombuffer(shares[x], dtype="<u4").astype(np.int64)
        limbs[x % limbs.size] = (limbs[x % limbs.size] + 1) % PRIME
        shares[x] = limbs.astype("<u4").tobytes()
    assert _shamir.decode(shares, 5, 32) == (secret, [2, 3, 8])
