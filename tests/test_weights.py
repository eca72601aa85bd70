"""WeightsSpec validation and the small weights helpers the round loop relies on."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from covey import WeightsError
from covey.core import WeightsSpec
from covey.core._weights import add, copy, freeze, global_norm, subtract


def model() -> dict[str, np.ndarray]:
    return {
        "W": np.zeros((4, 3), dtype=np.float32),
        "b": np.zeros(3, dtype=np.float64),
        "steps": np.zeros((), dtype=np.int64),
    }


SPEC = WeightsSpec.of(model())


def test_of_records_names_shapes_dtypes_in_order() -> None:
    assert SPEC.names == ("W", "b", "steps")
    assert SPEC.shapes == ((4, 3), (3,), ())
    assert SPEC.dtypes == (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64))
    assert SPEC.nbytes == 4 * 3 * 4 + 3 * 8 + 8
    assert SPEC.describe() == "W: float32[4, 3], b: float64[3], steps: int64[]"


def test_of_refuses_what_cannot_be_a_model() -> None:
    with pytest.raises(WeightsError, match="mapping"):
        WeightsSpec.of([np.zeros(2)])  # type: ignore[arg-type]
    with pytest.raises(WeightsError, match="empty"):
        WeightsSpec.of({})
    with pytest.raises(WeightsError, match="non-empty strings"):
        WeightsSpec.of({"": np.zeros(2)})
    with pytest.raises(WeightsError, match="non-empty strings"):
        WeightsSpec.of({3: np.zeros(2)})  # type: ignore[dict-item]
    with pytest.raises(WeightsError, match="'w' must be a NumPy array, got list"):
        WeightsSpec.of({"w": [1.0]})  # type: ignore[dict-item]
    with pytest.raises(WeightsError, match="'z' has dtype complex128"):
        WeightsSpec.of({"z": np.zeros(2, dtype=complex)})
    with pytest.raises(WeightsError, match="'o' has dtype object"):
        WeightsSpec.of({"o": np.zeros(2, dtype=object)})


def test_a_model_or_a_bare_array_given_as_weights_is_told_how_to_name_them() -> None:
    from sklearn.linear_model import SGDClassifier

    with pytest.raises(WeightsError, match=r"got SGDClassifier: .*covey\.sklearn\.get_params"):
        WeightsSpec.of(SGDClassifier())
    with pytest.raises(WeightsError, match=r'got ndarray: name the array, e\.g\. \{"w": array\}'):
        WeightsSpec.of(np.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(  # a class is no estimator: name the instance to give
        WeightsError,
        match=r"got ABCMeta: the class SGDClassifier itself, not an estimator; build one, "
        r"SGDClassifier\(\), and give the estimator's parameters, covey\.sklearn\.get_params",
    ):
        WeightsSpec.of(SGDClassifier)


def test_check_accepts_matching_weights() -> None:
    good = model()
    good["W"] = np.full((4, 3), 1e30, dtype=np.float32)
    good["steps"] = np.array(2**62)
    SPEC.check(good)
    SPEC.check({"steps": good["steps"], "b": good["b"], "W": good["W"]})  # any key order


def test_check_accepts_huge_finite_values_whose_sum_overflows() -> None:
    spec = WeightsSpec.of({"x": np.zeros(3)})
    spec.check({"x": np.array([1.7e308, 1.7e308, -1e308])})
    spec16 = WeightsSpec.of({"h": np.zeros(3, dtype=np.float16)})
    spec16.check({"h": np.array([65504, 65504, 65504], dtype=np.float16)})


def test_check_refuses_a_non_mapping() -> None:
    with pytest.raises(WeightsError, match=r"client 3's weights must be a mapping.*got list"):
        SPEC.check([np.zeros(1)], what="client 3's weights")


def test_check_refuses_missing_names() -> None:
    weights = model()
    del weights["b"]
    with pytest.raises(WeightsError, match=re.escape("missing ['b']")):
        SPEC.check(weights)


def test_check_refuses_extra_names() -> None:
    weights = model()
    weights["extra"] = np.zeros(1)
    with pytest.raises(WeightsError, match=re.escape("unexpected ['extra']")):
        SPEC.check(weights)


def test_check_refuses_renamed_array_naming_both() -> None:
    weights = model()
    weights["bias"] = weights.pop("b")
    with pytest.raises(WeightsError, match=re.escape("missing ['b']; unexpected ['bias']")):
        SPEC.check(weights, what="the delta")


def test_check_refuses_wrong_shape() -> None:
    weights = model()
    weights["W"] = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(
        WeightsError, match=re.escape("client 7's delta: 'W' has shape (3, 4), expected (4, 3)")
    ):
        SPEC.check(weights, what="client 7's delta")


def test_check_refuses_wrong_dtype() -> None:
    weights = model()
    weights["W"] = weights["W"].astype(np.float64)
    with pytest.raises(WeightsError, match="'W' has dtype float64, expected float32"):
        SPEC.check(weights)


def test_check_refuses_other_byte_order() -> None:
    weights = model()
    weights["b"] = weights["b"].astype(">f8")
    with pytest.raises(WeightsError, match="'b' has dtype"):
        SPEC.check(weights)


@pytest.mark.parametrize("value", [[0.0, 0.0, 0.0], (0.0, 0.0, 0.0), 0.0, None, "abc"])
def test_check_refuses_non_array_values(value: object) -> None:
    weights: dict[str, object] = dict(model())
    weights["b"] = value
    with pytest.raises(WeightsError, match="'b' must be a NumPy array"):
        SPEC.check(weights)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["W", "b"])
def test_check_refuses_non_finite_values(bad: float, name: str) -> None:
    weights = model()
    weights[name] = weights[name].copy()
    weights[name].reshape(-1)[1] = bad
    with pytest.raises(WeightsError, match=f"'{name}' has 1 non-finite value"):
        SPEC.check(weights, what="client 0's weights")
    SPEC.check(weights, finite=False)


def test_check_counts_non_finite_values() -> None:
    weights = model()
    weights["W"] = np.full((4, 3), np.nan, dtype=np.float32)
    with pytest.raises(WeightsError, match="'W' has 12 non-finite"):
        SPEC.check(weights)


@settings(max_examples=60)
@given(
    hnp.arrays(
        st.sampled_from([np.float16, np.float32, np.float64]),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=6),
        elements=st.floats(-1e4, 1e4, width=16),
    ),
    st.sampled_from([np.nan, np.inf, -np.inf]),
    st.data(),
)
def test_check_finds_any_single_non_finite_value(
    array: np.ndarray, bad: float, data: st.DataObject
) -> None:
    spec = WeightsSpec.of({"x": array})
    spec.check({"x": array})
    corrupted = array.copy()
    i = data.draw(st.integers(0, array.size - 1))
    corrupted.reshape(-1)[i] = bad
    with pytest.raises(WeightsError, match="'x' has 1 non-finite"):
        spec.check({"x": corrupted})


def test_freeze_gives_read_only_views_sharing_memory() -> None:
    original = model()
    frozen = freeze(original)
    assert frozen is not original
    assert list(frozen) == list(original)
    for name, view in frozen.items():
        assert not view.flags.writeable
        assert np.shares_memory(view, original[name])
        with pytest.raises(ValueError, match="read-only"):
            view[...] = 1
    assert all(a.flags.writeable for a in original.values())
    original["b"][0] = 5.0
    assert frozen["b"][0] == 5.0


def test_copy_is_deep_writable_and_contiguous() -> None:
    source = freeze({"w": np.arange(12.0).reshape(3, 4).T})
    copied = copy(source)
    assert copied["w"].flags.writeable
    assert copied["w"].flags.c_contiguous
    assert not np.shares_memory(copied["w"], source["w"])
    np.testing.assert_array_equal(copied["w"], source["w"])


def test_add_and_subtract_keep_dtypes_and_do_not_mutate() -> None:
    a = {"x": np.array([1.0, 2.0], np.float32), "n": np.array([1, 2])}
    b = {"x": np.array([0.5, 0.25], np.float32), "n": np.array([3, 4])}
    total = add(a, b)
    diff = subtract(a, b)
    assert total["x"].dtype == np.float32
    assert total["x"].tolist() == [1.5, 2.25]
    assert total["n"].tolist() == [4, 6]
    assert diff["x"].tolist() == [0.5, 1.75]
    assert diff["n"].tolist() == [-2, -2]
    assert a["x"].tolist() == [1.0, 2.0]
    assert b["n"].tolist() == [3, 4]


def test_global_norm() -> None:
    weights = {"a": np.array([3.0, 0.0]), "b": np.array([[4]], dtype=np.int32)}
    assert global_norm(weights) == 5.0
