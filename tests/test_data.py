"""Tests for covey.data: partitioners and bundled datasets."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import covey.data
from covey.data import (
    Dataset,
    dirichlet,
    iid,
    load_breast_cancer,
    load_digits,
    natural,
    shards,
)

Partition = list[npt.NDArray[np.int64]]

# A label vector shaped like a small real dataset: 10 unbalanced classes, 1000 examples.
LABELS = np.random.default_rng(1234).choice(10, size=1000, p=np.linspace(1, 2, 10) / 15.0)


def assert_partition(parts: Partition, n: int, num_clients: int) -> None:
    """Check ``parts`` is ``num_clients`` int64 arrays using every index < n exactly once."""
    assert isinstance(parts, list)
    assert len(parts) == num_clients
    for part in parts:
        assert isinstance(part, np.ndarray)
        assert part.dtype == np.int64
        assert part.ndim == 1
    combined = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    np.testing.assert_array_equal(np.sort(combined), np.arange(n))


def same(a: Partition, b: Partition) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


PARTITIONERS: dict[str, Callable[[int], Partition]] = {
    "iid": lambda seed: iid(LABELS, 10, seed=seed),
    "dirichlet": lambda seed: dirichlet(LABELS, 10, 0.5, seed=seed),
    "shards": lambda seed: shards(LABELS, 10, 2, seed=seed),
}


# --------------------------------------------------------------------------- partitioners


def test_public_api() -> None:
    assert covey.data.__all__ == [
        "Dataset",
        "dirichlet",
        "iid",
        "load_breast_cancer",
        "load_digits",
        "natural",
        "shards",
    ]
    for name in covey.data.__all__:
        assert getattr(covey.data, name).__doc__


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_partitioners_use_every_index_once(name: str) -> None:
    assert_partition(PARTITIONERS[name](0), len(LABELS), 10)


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_partitioners_are_deterministic_per_seed(name: str) -> None:
    make = PARTITIONERS[name]
    assert same(make(0), make(0))
    assert same(make(7), make(7))
    assert not same(make(0), make(1))


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_partitioners_return_sorted_indices(name: str) -> None:
    for part in PARTITIONERS[name](3):
        assert np.all(np.diff(part) > 0)


def test_iid_sizes_are_near_equal() -> None:
    parts = iid(1003, 10, seed=5)
    assert_partition(parts, 1003, 10)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_accepts_int_or_labels() -> None:
    assert same(iid(len(LABELS), 4, seed=2), iid(LABELS, 4, seed=2))
    assert same(iid(np.int32(50), 4, seed=2), iid(50, 4, seed=2))


def test_iid_without_shuffle_is_array_split() -> None:
    expected = np.array_split(np.arange(23), 5)
    assert same(iid(23, 5, shuffle=False), expected)
    assert same(iid(np.zeros(23), 5, shuffle=False, seed=9), expected)


def test_iid_more_clients_than_examples_gives_empty_clients() -> None:
    parts = iid(3, 5, seed=0)
    assert_partition(parts, 3, 5)
    assert sorted(len(p) for p in parts) == [0, 0, 1, 1, 1]


def classes_for_90_percent(labels: npt.NDArray[np.int_], parts: Partition) -> float:
    """Mean over clients of the fewest classes that together hold 90% of a client's data."""
    needed = []
    for part in parts:
        counts = np.sort(np.bincount(labels[part]))[::-1]
        share = np.cumsum(counts) / counts.sum()
        needed.append(int(np.searchsorted(share, 0.9 - 1e-12)) + 1)
    return float(np.mean(needed))


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    skewed = [classes_for_90_percent(LABELS, dirichlet(LABELS, 10, 0.1, seed=s)) for s in range(3)]
    balanced = [
        classes_for_90_percent(LABELS, dirichlet(LABELS, 10, 100.0, seed=s)) for s in range(3)
    ]
    assert np.mean(skewed) < 4.0
    assert np.mean(balanced) >= 8.0
    assert max(skewed) < min(balanced)


def test_dirichlet_large_alpha_is_near_iid() -> None:
    parts = dirichlet(LABELS, 5, 1e4, seed=0)
    sizes = np.array([len(p) for p in parts])
    assert np.all(np.abs(sizes - len(LABELS) / 5) < 0.05 * len(LABELS) / 5)


@pytest.mark.parametrize("alpha", [1e100, 1e300, 1.7e308])
def test_dirichlet_huge_alpha_is_near_iid(alpha: float) -> None:
    # 1.7e308 once overflowed the gamma sum and gave every example to the last client.
    parts = dirichlet(LABELS, 10, alpha, seed=0)
    assert_partition(parts, len(LABELS), 10)
    for part in parts:
        assert abs(len(part) - len(LABELS) / 10) <= 10  # at most one off in each class
        np.testing.assert_allclose(
            np.bincount(LABELS[part], minlength=10), np.bincount(LABELS) / 10, atol=1
        )


@pytest.mark.parametrize("min_size", [0, 1, 20, 60])
def test_dirichlet_honors_min_size(min_size: int) -> None:
    parts = dirichlet(LABELS, 10, 0.3, seed=0, min_size=min_size, max_retries=1000)
    assert_partition(parts, len(LABELS), 10)
    assert min(len(p) for p in parts) >= min_size


def test_dirichlet_min_size_forces_redraws() -> None:
    first_draw = dirichlet(LABELS, 10, 0.3, seed=0, min_size=0)
    assert min(len(p) for p in first_draw) < 60  # so min_size=60 above needed a redraw


def test_dirichlet_accepts_non_integer_labels() -> None:
    labels = np.array(["cat", "dog", "cat", "bird", "dog", "cat"] * 5)
    parts = dirichlet(labels, 3, 1.0, seed=0)
    assert_partition(parts, len(labels), 3)


def test_dirichlet_single_client_gets_everything() -> None:
    (part,) = dirichlet(LABELS, 1, 0.1, seed=0)
    np.testing.assert_array_equal(part, np.arange(len(LABELS)))


def test_dirichlet_memory_does_not_grow_with_classes_times_clients() -> None:
    # 100 classes x 1000 clients: one array per (class, client) pair took 12 MB here, and
    # 1.4 GB (and half a minute per draw) at 1000 classes x 10,000 clients.
    import tracemalloc

    labels = np.arange(2000) % 100
    tracemalloc.start()
    try:
        parts = dirichlet(labels, 1000, 1.0, seed=0, min_size=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_partition(parts, len(labels), 1000)
    assert peak < 4_000_000


@pytest.mark.parametrize("class_size", [1, 2, 3])
def test_dirichlet_gives_each_client_its_expected_share_of_small_classes(class_size: int) -> None:
    # Cutting every class at its cumulative proportions rounded to the nearest integer gave
    # each example of a small class to the client whose interval covered the rounding point,
    # not to client k with probability p_k: with one-example classes the first and last of 10
    # clients got under 3% of their share and the middle ones ~250%. alpha = 1 makes every
    # expected share 1/10.
    labels = np.arange(30_000) // class_size
    sizes = np.array([len(part) for part in dirichlet(labels, 10, 1.0, seed=0, min_size=0)])
    # Each size is within ~5 standard deviations (~45 examples) of its expectation, 3000.
    np.testing.assert_allclose(sizes, len(labels) / 10, rtol=0.08)


def test_dirichlet_gives_every_client_one_example_classes() -> None:
    # 100 clients and 20,000 one-example classes: ~40 clients got nothing in every draw, so
    # min_size=1 failed after all its retries.
    parts = dirichlet(np.arange(20_000), 100, 0.5, seed=0, max_retries=1)
    assert_partition(parts, 20_000, 100)
    sizes = np.array([len(part) for part in parts])
    np.testing.assert_allclose(sizes, 200, rtol=0.5)


def _count_draws(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make ``dirichlet`` append 1 to the returned list for each whole draw it makes."""
    import covey.data._partition as partition

    draws: list[int] = []
    draw = partition._dirichlet_draw

    def counted(*args: Any) -> Any:
        draws.append(1)
        return draw(*args)

    monkeypatch.setattr(partition, "_dirichlet_draw", counted)
    return draws


@pytest.mark.parametrize("min_size", [1, 3])
def test_dirichlet_stops_when_no_draw_can_satisfy_min_size(
    monkeypatch: pytest.MonkeyPatch, min_size: int
) -> None:
    # 2000 clients of 3 examples: every draw leaves ~150 clients empty (~800 under 3), so a
    # draw leaving none is hopeless; all 100 redraws ran before the error (450 s at 100,000
    # clients of 6 examples).
    labels = np.arange(6000) % 10
    draws = _count_draws(monkeypatch)
    with pytest.raises(ValueError, match="stopped after") as raised:
        dirichlet(labels, 2000, 0.5, seed=0, min_size=min_size)
    assert len(draws) == 1
    message = str(raised.value)
    assert "stopped after 1 of max_retries=100 draws" in message
    assert f"of num_clients=2000 clients under min_size={min_size} examples" in message
    assert "alpha=0.5" in message
    # The min_size it names gives a split with the same seed.
    found = re.search(rf"lower min_size from {min_size} to (\d+)", message)
    assert found is not None
    best = int(found.group(1))
    parts = dirichlet(labels, 2000, 0.5, seed=0, min_size=best)
    assert_partition(parts, len(labels), 2000)
    assert min(len(part) for part in parts) >= best


def test_dirichlet_keeps_drawing_while_a_draw_may_succeed(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1000 clients of 6 examples leave ~5 clients empty per draw: about one draw in 250 leaves
    # none, so every retry is made.
    labels = np.arange(6000) % 10
    draws = _count_draws(monkeypatch)
    with pytest.raises(ValueError, match=r"within max_retries=20 attempts.*increase max_retries"):
        dirichlet(labels, 1000, 0.5, seed=0, max_retries=20)
    assert len(draws) == 20


def _dirichlet_reference(
    labels: npt.NDArray[np.int_], num_clients: int, alpha: float, seed: int
) -> Partition:
    """One draw of the Dirichlet split written class by class.

    Each class's cuts are its cumulative proportions times its size, plus one uniform offset
    (from the seed's first spawned generator), rounded down.
    """
    _, class_of, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    by_class = np.argsort(class_of, kind="stable")
    rng = np.random.default_rng(seed)
    (rounding,) = rng.spawn(1)
    client_of = np.empty(len(labels), dtype=np.intp)
    for members in np.split(by_class, np.cumsum(class_sizes)[:-1]):
        shuffled = rng.permutation(members)
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        offset = rounding.random()
        cuts = np.floor(np.cumsum(proportions)[:-1] * len(shuffled) + offset).astype(np.intp)
        edges = np.concatenate(([0], np.clip(cuts, 0, len(shuffled)), [len(shuffled)]))
        counts = np.diff(edges)
        client_of[shuffled] = np.repeat(np.arange(num_clients), counts)
    return [np.flatnonzero(client_of == k) for k in range(num_clients)]


@pytest.mark.parametrize("alpha", [0.01, 0.5, 1e6])
@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize(
    "labels",
    [
        LABELS,
        np.arange(300),  # every class has one example
        np.arange(300) // 2,
        np.random.default_rng(5).integers(0, 120, 400),  # classes of 1 to ~10 examples
    ],
)
def test_dirichlet_gives_the_class_by_class_split(
    labels: npt.NDArray[np.int_], seed: int, alpha: float
) -> None:
    expected = _dirichlet_reference(labels, 13, alpha, seed)
    actual = dirichlet(labels, 13, alpha, seed=seed, min_size=0)
    for part, reference in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(part, reference)


@pytest.mark.parametrize(
    ("labels", "per_class"), [(np.arange(4000), 0), (np.arange(4000) // 2, 20)]
)
def test_dirichlet_runs_no_python_code_per_class(
    labels: npt.NDArray[np.int_], per_class: int
) -> None:
    # 100,000 distinct labels took ~100 s per draw: some ten NumPy calls ran for every class.
    # A class now costs its two generator calls, and a class of one example (whose shuffle
    # draws nothing) shares one call with its neighbours. Counted in calls, not seconds.
    import sys

    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        parts = dirichlet(labels, 10, 0.5, seed=0, min_size=0)
    finally:
        sys.setprofile(None)
    assert_partition(parts, len(labels), 10)
    assert calls < 1000 + per_class * len(np.unique(labels))


def contiguous_label_runs(labels: npt.NDArray[np.int_], part: npt.NDArray[np.int64]) -> int:
    """Number of maximal runs of adjacent classes (in sorted class order) in a client's labels."""
    ranks = np.unique(np.searchsorted(np.unique(labels), labels[part]))
    return int(1 + np.count_nonzero(np.diff(ranks) > 1)) if len(ranks) else 0


@pytest.mark.parametrize("shards_per_client", [1, 2, 3])
def test_shards_clients_hold_few_label_runs(shards_per_client: int) -> None:
    parts = shards(LABELS, 50, shards_per_client, seed=0)
    assert_partition(parts, len(LABELS), 50)
    for part in parts:
        assert len(np.unique(LABELS[part])) <= 2 * shards_per_client
        assert contiguous_label_runs(LABELS, part) <= shards_per_client


def test_shards_sizes_are_near_equal() -> None:
    parts = shards(LABELS, 30, 3, seed=1)
    shard_size = len(LABELS) / 90
    for part in parts:
        assert 3 * np.floor(shard_size) <= len(part) <= 3 * np.ceil(shard_size)


def test_shards_with_aligned_classes_give_pure_shards() -> None:
    # 10 classes x 20 examples, 100 shards of 2: every shard holds a single class.
    labels = np.repeat(np.arange(10), 20)
    parts = shards(labels, 50, 2, seed=3)
    assert_partition(parts, len(labels), 50)
    for part in parts:
        assert len(part) == 4
        counts = np.bincount(labels[part])
        assert np.count_nonzero(counts) <= 2
        assert np.all(counts % 2 == 0)  # whole shards of one class each


def test_shards_on_digits_like_fedavg() -> None:
    data = load_digits(seed=0)
    parts = shards(data.y_train, 100, 2, seed=0)
    assert_partition(parts, len(data.y_train), 100)
    num_classes = [len(np.unique(data.y_train[p])) for p in parts]
    assert max(num_classes) <= 4
    assert np.mean(num_classes) <= 2.5


def test_natural_groups_by_id_in_sorted_order() -> None:
    ids = np.array([30, 10, 30, 20, 10, 30])
    parts = natural(ids)
    assert_partition(parts, len(ids), 3)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5]]


def test_natural_accepts_strings_and_lists() -> None:
    parts = natural(["bob", "alice", "bob"])
    assert [p.tolist() for p in parts] == [[1], [0, 2]]
    assert natural([]) == []


# ----------------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: iid(10, 0), ValueError, r"num_clients must be >= 1, got 0"),
        (lambda: iid(-1, 2), ValueError, r"n_or_labels must be >= 0"),
        (lambda: iid(10, 2.5), TypeError, r"num_clients must be an integer"),  # type: ignore
        (lambda: iid(10, True), TypeError, r"num_clients must be an integer, got bool"),
        (lambda: iid(np.zeros((4, 2)), 2), ValueError, r"n_or_labels must be a 1-D array"),
        (lambda: dirichlet(LABELS, 0, 1.0), ValueError, r"num_clients must be >= 1"),
        (lambda: dirichlet(LABELS, 5, 0.0), ValueError, r"alpha must be a finite number > 0"),
        (lambda: dirichlet(LABELS, 5, -1.0), ValueError, r"alpha must be a finite number > 0"),
        (lambda: dirichlet(LABELS, 5, np.nan), ValueError, r"alpha must be a finite number"),
        (lambda: dirichlet(LABELS, 5, np.inf), ValueError, r"alpha must be a finite number"),
        (lambda: dirichlet(LABELS, 5, "x"), TypeError, r"alpha must be a number"),  # type: ignore
        # text that reads as a number was taken, where every other argument refuses it
        (lambda: dirichlet(LABELS, 5, "1"), TypeError, r"got str '1'"),  # type: ignore
        (lambda: dirichlet(LABELS, 5, True), TypeError, r"got bool True"),
        (lambda: dirichlet(LABELS, 5, 1.0, min_size=-1), ValueError, r"min_size must be >= 0"),
        (lambda: dirichlet(LABELS, 5, 1.0, max_retries=0), ValueError, r"max_retries must be"),
        (lambda: dirichlet([[0, 1]], 1, 1.0), ValueError, r"labels must be a 1-D array"),
        (
            lambda: dirichlet([0, 1, 1], 4, 1.0),
            ValueError,
            r"num_clients=4 clients at least min_size=1 examples: labels has only 3",
        ),
        (
            lambda: dirichlet(LABELS, 50, 0.01, max_retries=3),
            ValueError,
            r"num_clients=50 .*min_size=1 .*max_retries=3 .*alpha=0.01",
        ),
        (lambda: shards(LABELS, 0), ValueError, r"num_clients must be >= 1"),
        (lambda: shards(LABELS, 5, 0), ValueError, r"shards_per_client must be >= 1"),
        (lambda: shards(np.zeros((3, 3)), 2), ValueError, r"labels must be a 1-D array"),
        (
            lambda: shards(np.arange(10), 6, 2),
            ValueError,
            r"6 \* 2 = 12 shards is more than the 10 examples",
        ),
        (lambda: natural(np.zeros((2, 2))), ValueError, r"ids must be a 1-D array"),
        (lambda: iid(1000.0, 2), TypeError, r"n_or_labels must be an integer or a 1-D array"),
        (lambda: iid(np.zeros((4, 2)), 2), ValueError, r"give the number of examples, len\(x\)"),
        (lambda: dirichlet([[0], [1]], 1, 1.0), ValueError, r"give one column of labels"),
        (
            lambda: dirichlet(iter(LABELS), 2, 1.0),  # type: ignore[arg-type]
            TypeError,
            r"labels must be a 1-D array, got iterator, an",
        ),
        (
            lambda: shards((y for y in LABELS), 2),  # type: ignore[arg-type]
            TypeError,
            r"got generator, an iterator: make it a list",
        ),
        (
            lambda: natural(iter([0, 1])),  # type: ignore[arg-type]
            TypeError,
            r"ids must be a 1-D array, got list_iterator",
        ),
        (lambda: iid(10, 2, seed=-1), ValueError, r"seed must be a non-negative integer, got"),
        (lambda: dirichlet(LABELS, 2, 1.0, seed=1.5), TypeError, r"seed must be a non-neg"),  # type: ignore[arg-type]
        (lambda: shards(LABELS, 2, seed="a"), TypeError, r"seed must be a non-negative"),  # type: ignore[arg-type]
        (
            lambda: dirichlet(np.array([1, "a"] * 5, dtype=object), 2, 1.0),
            TypeError,
            r"labels must hold values of one sortable type, got int, str mixed",
        ),
        (
            lambda: shards(np.array([None, 1] * 5, dtype=object), 2),
            TypeError,
            r"labels must hold values of one sortable type, got NoneType, int mixed",
        ),
        (
            lambda: natural(np.array(["x", 2.5], dtype=object)),
            TypeError,
            r"ids must hold values of one sortable type, got float, str mixed",
        ),
    ],
)
def test_bad_input_raises_clear_errors(
    call: Callable[[], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------- property tests

labels_strategy = st.lists(st.integers(0, 5), min_size=0, max_size=120).map(np.array)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 200),
    num_clients=st.integers(1, 30),
    seed=st.integers(0, 2**32),
    shuffle=st.booleans(),
)
def test_iid_property(n: int, num_clients: int, seed: int, shuffle: bool) -> None:
    parts = iid(n, num_clients, seed=seed, shuffle=shuffle)
    assert_partition(parts, n, num_clients)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=60, deadline=None)
@given(
    labels=labels_strategy,
    num_clients=st.integers(1, 12),
    alpha=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32),
)
def test_dirichlet_property(
    labels: npt.NDArray[np.int_], num_clients: int, alpha: float, seed: int
) -> None:
    parts = dirichlet(labels, num_clients, alpha, seed=seed, min_size=0)
    assert_partition(parts, len(labels), num_clients)


@settings(max_examples=40, deadline=None)
@given(
    labels=labels_strategy,
    num_clients=st.integers(1, 6),
    min_size=st.integers(0, 5),
    seed=st.integers(0, 2**32),
)
def test_dirichlet_min_size_property(
    labels: npt.NDArray[np.int_], num_clients: int, min_size: int, seed: int
) -> None:
    if num_clients * min_size > len(labels):
        with pytest.raises(ValueError, match="min_size"):
            dirichlet(labels, num_clients, 1.0, seed=seed, min_size=min_size)
        return
    assume(num_clients * min_size <= len(labels) // 4)  # feasible with high probability
    parts = dirichlet(labels, num_clients, 1.0, seed=seed, min_size=min_size, max_retries=1000)
    assert_partition(parts, len(labels), num_clients)
    assert min(len(p) for p in parts) >= min_size


@settings(max_examples=40, deadline=None)
@given(
    labels=labels_strategy,
    num_clients=st.integers(1, 20),
    shards_per_client=st.integers(1, 4),
    seed=st.integers(0, 2**32),
)
def test_shards_property(
    labels: npt.NDArray[np.int_], num_clients: int, shards_per_client: int, seed: int
) -> None:
    if num_clients * shards_per_client > len(labels):
        with pytest.raises(ValueError, match="shards is more than"):
            shards(labels, num_clients, shards_per_client, seed=seed)
        return
    parts = shards(labels, num_clients, shards_per_client, seed=seed)
    assert_partition(parts, len(labels), num_clients)
    for part in parts:
        assert contiguous_label_runs(labels, part) <= shards_per_client


# ------------------------------------------------------------------------------- datasets


def sorted_rows(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return x[np.lexsort(x.T[::-1])]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return load_breast_cancer()


def test_load_digits(digits: Dataset) -> None:
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.num_features == 64
    assert digits.x_train.shape == (1438, 64)
    assert digits.x_test.shape == (359, 64)
    assert digits.y_train.shape == (1438,)
    assert digits.y_test.shape == (359,)
    assert digits.x_train.dtype == np.float64
    assert digits.x_test.dtype == np.float64
    assert digits.y_train.dtype == np.int64
    assert digits.y_test.dtype == np.int64
    for x in (digits.x_train, digits.x_test):
        assert x.min() == 0.0
        assert x.max() == 1.0
    assert set(np.unique(digits.y_train)) == set(range(10))
    assert set(np.unique(digits.y_test)) == set(range(10))
    assert digits.feature_names is not None
    assert len(digits.feature_names) == 64


def test_load_breast_cancer(cancer: Dataset) -> None:
    assert cancer.name == "breast_cancer"
    assert cancer.num_classes == 2
    # Stratified: round(0.2 * 212) + round(0.2 * 357) = 42 + 71 test examples.
    assert cancer.x_train.shape == (456, 30)
    assert cancer.x_test.shape == (113, 30)
    assert cancer.x_train.dtype == np.float64
    assert cancer.y_train.dtype == np.int64
    assert set(np.unique(cancer.y_train)) == {0, 1}
    assert cancer.feature_names is not None
    assert cancer.feature_names[0] == "mean radius"
    np.testing.assert_allclose(cancer.x_train.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(cancer.x_train.std(axis=0), 1.0, atol=1e-9)


def test_breast_cancer_standardizes_with_train_statistics(cancer: Dataset) -> None:
    raw = load_breast_cancer(standardize=False)
    np.testing.assert_array_equal(raw.y_train, cancer.y_train)
    mean, std = raw.x_train.mean(axis=0), raw.x_train.std(axis=0)
    np.testing.assert_allclose(cancer.x_test, (raw.x_test - mean) / std)
    assert raw.x_train.min() >= 0.0  # raw measurements are non-negative


def test_train_and_test_partition_the_original_data(digits: Dataset) -> None:
    from sklearn import datasets

    original = datasets.load_digits()
    combined_x = np.concatenate([digits.x_train, digits.x_test])
    np.testing.assert_array_equal(sorted_rows(combined_x), sorted_rows(original.data / 16.0))
    combined_y = np.concatenate([digits.y_train, digits.y_test])
    np.testing.assert_array_equal(np.bincount(combined_y), np.bincount(original.target))

    raw = load_breast_cancer(standardize=False)
    cancer_original = datasets.load_breast_cancer()
    np.testing.assert_array_equal(
        sorted_rows(np.concatenate([raw.x_train, raw.x_test])), sorted_rows(cancer_original.data)
    )
    # No row of the test set appears in the training set (breast cancer has no duplicates).
    train_rows = {row.tobytes() for row in raw.x_train}
    assert not any(row.tobytes() in train_rows for row in raw.x_test)


def test_split_is_stratified(digits: Dataset) -> None:
    train = np.bincount(digits.y_train) / len(digits.y_train)
    test = np.bincount(digits.y_test) / len(digits.y_test)
    np.testing.assert_allclose(train, test, atol=0.01)


@pytest.mark.parametrize("loader", [load_digits, load_breast_cancer])
def test_loaders_are_seeded(loader: Callable[..., Dataset]) -> None:
    a, b, c = loader(seed=3), loader(seed=3), loader(seed=4)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.y_train, c.y_train)


def test_test_fraction() -> None:
    data = load_breast_cancer(test_fraction=0.5, seed=1)
    assert abs(len(data.y_test) - 569 / 2) <= 2
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="test_fraction must be strictly between 0 and 1"):
            load_digits(test_fraction=bad)
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got int -1"):
        load_digits(seed=-1)
    with pytest.raises(TypeError, match=r"seed must be a non-negative integer, got str"):
        load_breast_cancer(seed="0")  # type: ignore[arg-type]


def test_dataset_client(digits: Dataset) -> None:
    parts = iid(digits.y_train, 5, seed=0)
    x, y = digits.client(parts[2])
    np.testing.assert_array_equal(x, digits.x_train[parts[2]])
    np.testing.assert_array_equal(y, digits.y_train[parts[2]])
    assert x.flags.writeable
    x_list, y_list = digits.client([0, 1])
    assert x_list.shape == (2, 64)
    assert y_list.shape == (2,)
    x_empty, _ = digits.client([])
    assert x_empty.shape == (0, 64)


@pytest.mark.parametrize("indices", [[0.9], np.array([1.5, 2.0]), ["1", "2"], [np.nan]])
def test_dataset_client_refuses_indices_that_are_not_integers(
    digits: Dataset, indices: object
) -> None:
    # [0.9] used to give row 0 and ["1", "2"] rows 1 and 2, silently.
    with pytest.raises(TypeError, match=r"indices must be integers or a boolean mask, got"):
        digits.client(indices)  # type: ignore[arg-type]
    for whole in (np.array([3.0, 1.0]), np.array([3, 1], dtype=object)):
        x, _ = digits.client(whole)
        np.testing.assert_array_equal(x, digits.x_train[[3, 1]])


def test_dataset_client_refuses_what_is_not_one_clients_indices(digits: Dataset) -> None:
    # client(3) gave example 3's features alone (shape (64,)), which a client then
    # refused as data that is not 2-D; client(parts) failed in NumPy ("inhomogeneous
    # shape"), and nested lists gave 3-D features.
    parts = dirichlet(digits.y_train, 5, 0.5, seed=0)
    with pytest.raises(ValueError, match=r"1-D array of indices .* got int 3"):
        digits.client(3)
    with pytest.raises(ValueError, match=r"got arrays of different lengths: .*parts\[cid\]"):
        digits.client(parts)
    equal = iid(digits.y_train[:10], 2)
    with pytest.raises(ValueError, match=r"got shape \(2, 5\): .*parts\[cid\]"):
        digits.client(equal)
    with pytest.raises(ValueError, match=r"got arrays of different lengths"):
        digits.client(np.array(parts, dtype=object))
    with pytest.raises(ValueError, match=r"one entry per training example \(1438\), got 3"):
        digits.client(np.array([True, False, True]))
    mask = np.zeros(len(digits.y_train), dtype=bool)
    mask[[2, 5]] = True
    x, _ = digits.client(mask)
    np.testing.assert_array_equal(x, digits.x_train[[2, 5]])


def test_dataset_client_given_np_where_s_tuple_names_np_flatnonzero(digits: Dataset) -> None:
    # np.where(mask) is a tuple of one array: it was refused as shape (1, 2) with a
    # hint about partitioners, which the caller had not used.
    mask = np.zeros(len(digits.y_train), dtype=bool)
    mask[[2, 5]] = True
    for found in (np.where(mask), np.nonzero(mask)):
        with pytest.raises(ValueError, match=r"shape \(1, 2\): a tuple of one array") as info:
            digits.client(found)
        assert "np.flatnonzero(mask)" in str(info.value)
        assert "partitioner" not in str(info.value)
    x, _ = digits.client(np.flatnonzero(mask))
    np.testing.assert_array_equal(x, digits.x_train[[2, 5]])


def test_dataset_is_frozen_and_read_only(digits: Dataset) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        digits.x_train[0, 0] = 5.0


def test_dataset_leaves_caller_arrays_writable() -> None:
    x = np.zeros((4, 2))
    y = np.zeros(4, dtype=np.int64)
    data = Dataset(x, y, x, y, num_classes=1, feature_names=None, name="toy")
    assert x.flags.writeable
    assert not data.x_train.flags.writeable


def test_dataset_validates_shapes() -> None:
    x2, y1 = np.zeros((1, 1)), np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="train set needs 2-D features"):
        Dataset(np.zeros(4), np.zeros(4, dtype=np.int64), x2, y1, 1, None, "")
    with pytest.raises(ValueError, match=r"test set .* shapes \(2, 1\) and \(3,\)"):
        Dataset(x2, y1, np.zeros((2, 1)), np.zeros(3, dtype=np.int64), 1, None, "")
