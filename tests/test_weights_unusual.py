"""Models that are not one float32 matrix: 0-d and empty arrays, integer buffers, odd names."""

from __future__ import annotations

import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _live import served_to
from covey import EvaluateResult, FitResult, clients
from covey.deploy import connect, serve
from covey.secagg import secure
from covey.server import RunStore


class Nudge(covey.Client):
    """Sends the global weights with every float value raised by 0.1 (as new weights)."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(
            weights={
                k: np.array(v + 0.1 if v.dtype.kind == "f" else v, dtype=v.dtype)
                for k, v in weights.items()
            },
            num_examples=3,
        )

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=0.0, num_examples=1)


def test_secure_aggregation_takes_a_0d_float_array_sent_as_new_weights() -> None:
    model = {"w": np.ones(3, np.float32), "temperature": np.array(1.5, np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unsigned keys: fine in simulation
        strategy = secure(covey.FedAvg(fraction_evaluate=0.0), clip_range=1.0, bits=16)
    result = covey.simulate(lambda cid: Nudge(), 4, 1, strategy, model)
    assert result.history.rounds[-1].fit_failures == []
    out = result.weights["temperature"]
    assert isinstance(out, np.ndarray)
    assert out.shape == ()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 1.6, atol=1e-3)
    np.testing.assert_allclose(result.weights["w"], 1.1, atol=1e-3)


class ScaffoldNudge(covey.Client):
    """A SCAFFOLD client: one local step that raises every float value by 0.1."""

    def __init__(self) -> None:
        self.control = clients.ControlVariate()

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        self.control.correction(weights, config)
        new = Nudge().fit(weights, config).weights
        assert new is not None
        return self.control.fit_result(new, num_examples=3, steps=1, lr=0.1)

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=0.0, num_examples=1)


def test_scaffold_clients_keep_a_mask_and_a_0d_array_across_rounds() -> None:
    model = {
        "w": np.ones(3, np.float32),
        "temperature": np.array(1.5, np.float32),
        "mask": np.array([True, False]),
        "bn.num_batches_tracked": np.array(7, np.int64),
    }
    strategy = covey.Scaffold(num_clients=3, fraction_evaluate=0.0)
    result = covey.simulate(lambda cid: ScaffoldNudge(), 3, 2, strategy, model)
    assert [r.fit_failures for r in result.history.rounds[1:]] == [[], []]
    assert all(r.aggregated for r in result.history.rounds[1:])
    out = result.weights
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        k: (v.shape, v.dtype) for k, v in model.items()
    }
    np.testing.assert_allclose(out["temperature"], 1.7, atol=1e-6)
    np.testing.assert_array_equal(out["mask"], model["mask"])
    assert int(out["bn.num_batches_tracked"]) == 7


NO_LONG_DOUBLE = np.dtype(np.longdouble).itemsize <= 8  # a long double that is float64
STORE_REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "long double": (
        {"x": np.ones(2, np.longdouble)},
        r"'x' has dtype float128 \(long double\), whose layout depends on the machine",
    ),
    "lone surrogate": ({"a\ud800": np.ones(2)}, r"'a\\ud800' is not valid Unicode text"),
    "safetensors' own key": ({"__metadata__": np.ones(2)}, "'__metadata__' is reserved"),
}


@pytest.mark.parametrize("case", sorted(STORE_REFUSED))
def test_the_run_store_refuses_weights_its_files_cannot_hold_by_name(
    case: str, tmp_path: Path
) -> None:
    if case == "long double" and NO_LONG_DOUBLE:
        pytest.skip("this machine's long double is float64")
    weights, message = STORE_REFUSED[case]
    with RunStore.create(tmp_path / "run", config={}) as store:
        with pytest.raises(ValueError, match=message):
            store.save_round(0, weights, None)
        assert store.rounds() == []


@pytest.mark.parametrize("case", sorted(STORE_REFUSED))
def test_serve_with_a_run_dir_refuses_such_weights_before_it_listens(
    case: str, tmp_path: Path
) -> None:
    if case == "long double" and NO_LONG_DOUBLE:
        pytest.skip("this machine's long double is float64")
    weights, message = STORE_REFUSED[case]
    listened: list[int] = []
    with pytest.raises(ValueError, match=message):
        serve(
            covey.FedAvg(),
            1,
            weights,
            "127.0.0.1:0",
            insecure=True,
            run_dir=tmp_path / "run",
            wait_timeout=1.0,
            on_listen=listened.append,
            plot=False,
        )
    assert listened == []


def test_a_failed_checkpoint_is_reported_as_such_not_as_a_clients_update(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    sites: list[threading.Thread] = []

    def start_sites(port: int) -> None:
        for cid in range(2):
            site = threading.Thread(
                target=connect,
                args=(Nudge(), f"127.0.0.1:{port}"),
                kwargs={"insecure": True, "name": f"site-{cid}"},
                daemon=True,
            )
            site.start()
            sites.append(site)

    def break_the_folder(record: Any) -> None:
        if record.round == 1:  # round 2's save then finds a file where its folder was
            # Moved aside in one step: round 1's save may still be writing in it.
            (run_dir / "weights").rename(run_dir / "weights-moved")
            (run_dir / "weights").write_text("not a folder")

    strategy = covey.FedAvg(min_fit_clients=2, min_available_clients=2, fraction_evaluate=0.0)
    with pytest.raises(covey.FederationError) as caught:
        serve(
            strategy,
            3,
            {"w": np.ones(3)},
            "127.0.0.1:0",
            insecure=True,
            run_dir=run_dir,
            on_listen=start_sites,
            on_round=break_the_folder,
            wait_timeout=30.0,
            plot=False,
        )
    for site in sites:
        site.join(timeout=30)
    message = str(caught.value)
    assert re.search(r"saving round \d to .* failed", message)
    assert "aggregation step" not in message


class Sends(covey.Client):
    """Sends the global weights plus one, as arrays of the kind ``make`` turns them into."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(
            weights={k: self.make(np.asarray(v) + 1) for k, v in weights.items()}, num_examples=1
        )


def _matrix(array: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix's own
        return np.asmatrix(array)


ODD_ARRAYS = {
    "big-endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
    "np.matrix": _matrix,
    "Fortran order": np.asfortranarray,
    "a reversed view": lambda a: np.flip(np.array(np.flip(a))),
}


@pytest.mark.parametrize("backend", ["inline", "process"])
@pytest.mark.parametrize("kind", sorted(ODD_ARRAYS))
def test_an_update_in_another_byte_order_or_array_class_counts_the_same_on_every_backend(
    kind: str, backend: Any
) -> None:
    model = {"w": np.zeros((2, 3), np.float32)}
    strategy = covey.FedAvg(fraction_evaluate=0.0)
    make = ODD_ARRAYS[kind]
    result = covey.simulate(
        lambda cid: Sends(make), 2, 1, strategy, model, backend=backend, num_workers=1
    )
    assert result.history.rounds[-1].fit_failures == []
    out = result.weights["w"]
    assert type(out) is np.ndarray
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.ones((2, 3), np.float32))


def test_a_model_given_as_np_matrix_trains_as_a_plain_array() -> None:
    model = {"w": _matrix(np.zeros((2, 3)))}
    result = covey.simulate(lambda cid: Sends(np.asarray), 2, 2, covey.FedAvg(), model)
    out = result.weights["w"]
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, np.full((2, 3), 2.0))


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_numpy_scalars_in_the_initial_model_train_as_0d_arrays(backend: Any) -> None:
    # Before: refused ("weight 's' must be a NumPy array, got float32"), while a client's
    # FitResult takes NumPy scalars as 0-d arrays.
    model: dict[str, Any] = {"w": np.zeros(2, np.float32), "s": np.float32(0.5), "n": np.int64(3)}
    result = covey.simulate(
        lambda cid: Sends(np.asarray), 2, 2, covey.FedAvg(), model, backend=backend
    )
    assert {k: (type(v), v.dtype, v.shape) for k, v in result.weights.items()} == {
        "w": (np.ndarray, np.float32, (2,)),
        "s": (np.ndarray, np.float32, ()),
        "n": (np.ndarray, np.int64, ()),
    }
    assert float(result.weights["s"]) == 2.5
    assert int(result.weights["n"]) == 5


def test_numpy_scalars_in_a_served_model_are_0d_arrays() -> None:
    result = _serve_with_sites({"w": np.zeros(3, np.float32), "s": np.float64(1.0)})
    assert result.history.rounds[-1].fit_failures == []
    assert result.weights["s"].shape == ()
    assert result.weights["s"].dtype == np.float64


def test_a_numpy_scalar_where_a_layout_needs_an_array_says_how_to_make_one() -> None:
    with pytest.raises(
        covey.WeightsError, match=r"'s' .* got float32 \(a NumPy scalar: np.asarray"
    ):
        covey.core.WeightsSpec.of({"s": np.float32(0.5)})  # type: ignore[dict-item]


def test_a_masked_array_in_the_model_is_refused_by_name() -> None:
    model = {"w": np.ma.masked_array(np.zeros(3), mask=[False, True, False])}
    with pytest.raises(covey.WeightsError, match="'w' is a masked array"):
        covey.simulate(lambda cid: Sends(np.asarray), 2, 1, covey.FedAvg(), model)


def test_a_complex_model_is_refused_saying_how_to_hold_it_as_floats() -> None:
    model = {"w": np.zeros(3, np.complex64)}
    with pytest.raises(
        covey.WeightsError,
        match=r"'w' has dtype complex64; .*: keep the real and imaginary parts as a float "
        r"array \(np.stack\(\[w.real, w.imag\], axis=-1\); in a torch model, .*view_as_complex",
    ):
        covey.simulate(lambda cid: Sends(np.asarray), 2, 1, covey.FedAvg(), model)


def test_an_ml_dtypes_array_in_the_model_is_refused_saying_what_to_convert_it_to() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for dtype, wide in [("bfloat16", "float32"), ("float8_e4m3fn", "float32"), ("int4", "int8")]:
        model = {"w": np.zeros(3, getattr(ml_dtypes, dtype))}
        with pytest.raises(
            covey.WeightsError,
            match=rf"'w' has dtype {dtype}; .*: convert it with .astype\(np.{wide}",
        ):
            covey.core.WeightsSpec.of(model)


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_compressed_update_takes_a_long_non_ascii_weight_name(backend: Any) -> None:
    name = "层" * 1000  # 6,000 characters once JSON escapes it
    model = {name: np.zeros(4, np.float32), "b": np.zeros(2, np.float32)}
    result = covey.simulate(
        lambda cid: Nudge(), 2, 1, covey.FedAvg(), model, backend=backend, compression="q8"
    )
    assert result.history.rounds[-1].fit_failures == []
    np.testing.assert_allclose(result.weights[name], 0.1, atol=1e-6)


def _serve_with_sites(model: dict[str, Any], **kwargs: Any) -> Any:
    strategy = covey.FedAvg(min_fit_clients=2, min_available_clients=2, fraction_evaluate=0.0)
    return served_to([(f"site-{cid}", Nudge()) for cid in range(2)], strategy, model, **kwargs)


@pytest.mark.slow
def test_a_deployed_model_of_many_tiny_arrays_takes_compressed_updates() -> None:
    # q8 sends three arrays per weight: more bytes than such a model's own.
    model = {f"w{i}": np.zeros(1, np.float32) for i in range(8000)}
    result = _serve_with_sites(model, compression="q8")
    assert result.history.rounds[-1].fit_failures == []
    np.testing.assert_allclose(result.weights["w7999"], 0.1, atol=1e-6)


def test_a_deployed_float16_model_takes_a_dense_top_k_update() -> None:
    # top-k at 0.9 sends a uint32 index and a float16 value per entry: 2.7x the model.
    model = {"w": np.zeros(800_000, np.float16)}
    result = _serve_with_sites(model, compression="topk:0.9")
    assert result.history.rounds[-1].fit_failures == []
    assert np.count_nonzero(result.weights["w"]) >= 700_000


class Increments(covey.Client):
    """Sends the global weights with every integer entry one higher (as new weights)."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return FitResult(
            weights={k: np.array(v + 1, dtype=v.dtype) for k, v in weights.items()},
            num_examples=3,
        )

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        return EvaluateResult(loss=0.0, num_examples=1)


BIG_INTS = {
    "clock_ns": np.array([1_764_600_000_000_000_000, 2**53, 5], np.int64),
    "hash": np.array([2**63 + 10, 3], np.uint64),
}
STRATEGIES = {
    "FedAvg": lambda: covey.FedAvg(fraction_evaluate=0.0),
    "FedAdam": lambda: covey.FedAdam(fraction_evaluate=0.0),
    "FedMedian": lambda: covey.FedMedian(fraction_evaluate=0.0),
    "Krum": lambda: covey.Krum(f=0, fraction_evaluate=0.0),
    "secure FedAvg": lambda: secure(covey.FedAvg(fraction_evaluate=0.0), clip_range=2.0),
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_an_integer_array_past_2_to_the_53_keeps_every_change(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unsigned keys: fine in simulation
        strategy = STRATEGIES[name]()
    result = covey.simulate(lambda cid: Increments(), 3, 2, strategy, dict(BIG_INTS))
    for key, start in BIG_INTS.items():
        out = result.weights[key]
        assert out.dtype == start.dtype
        assert [int(v) - int(s) for v, s in zip(out, start, strict=True)] == [2] * start.size


class Reversed(covey.Client):
    """Sends the global weights plus one, its names in the reverse of the model's order."""

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        names = list(weights)[::-1]
        return FitResult(
            weights={k: np.array(weights[k] + 1, dtype=weights[k].dtype) for k in names},
            num_examples=1,
        )


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_the_global_model_keeps_its_order_of_names_whatever_order_clients_send(
    backend: Any,
) -> None:
    # A torch model is rebuilt as dict(zip(model.state_dict(), weights.values())).
    model = {"conv.weight": np.zeros(2), "conv.bias": np.zeros(1), "bn.count": np.array(0)}
    result = covey.simulate(
        lambda cid: Reversed(), 2, 1, covey.FedAvg(), model, backend=backend, num_workers=1
    )
    assert list(result.weights) == list(model)


#: What each refusal of a tensor without a NumPy form says to do.
NO_NUMPY_FORM = {
    "float8": r"give the model in a dtype NumPy holds \(model\.float\(\)",
    "sparse": r"Use Tensor\.to_dense\(\) first",  # torch's own words
    "meta": r"materialise it first \(model\.to_empty\(device='cpu'\)",
    "quantized": r"federate the float model and quantize it after the run",
    "complex32": r"torch\.view_as_real\) that forward\(\) reads with torch\.view_as_complex",
}


@pytest.mark.parametrize("kind", list(NO_NUMPY_FORM))
def test_a_state_dict_entry_without_a_numpy_form_is_refused_by_name(kind: str) -> None:
    torch = pytest.importorskip("torch")
    from covey.torch import to_weights

    make = {
        "float8": lambda: torch.zeros(3, dtype=torch.float8_e4m3fn),
        "sparse": lambda: torch.eye(3).to_sparse(),
        "meta": lambda: torch.zeros(3, device="meta"),
        "quantized": lambda: torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.quint8),
        "complex32": lambda: torch.zeros(3, dtype=torch.complex32),
    }[kind]
    with warnings.catch_warnings():  # quantized tensors are deprecated, complex32 experimental
        warnings.simplefilter("ignore", UserWarning)
        tensor = make()
    state = {"fc.weight": torch.zeros(2), "fc.scale": tensor}
    with pytest.raises(
        TypeError,
        match=r"state_dict entry 'fc\.scale' .* cannot become a NumPy.*" + NO_NUMPY_FORM[kind],
    ):
        to_weights(state)
