"""What to tell a user whose weights are not named NumPy arrays, and how to make them so.

Each hint is a suffix for an error message (``""`` when there is nothing to add):
a list of arrays, a file, a model or its class, Flower's containers, torch tensors,
dtypes weights cannot hold.
"""

from __future__ import annotations

import os
from typing import Any, Final, cast

import numpy as np


def unnamed_hint(weights: object) -> str:
    """For a list or tuple of arrays (or a model, or a file) where named arrays belong."""
    if isinstance(weights, str | bytes | os.PathLike):
        return (
            ": give the arrays, not a file; read a safetensors file with "
            "safetensors.numpy.load_file(path), an .npz with dict(np.load(path))"
        )
    if type(weights).__name__ == "safe_open" and callable(getattr(weights, "get_tensor", None)):
        return (
            ": a safetensors.safe_open handle reads the file, it is not its arrays; read "
            "them with safetensors.numpy.load_file(path)"
        )
    if lib := next((k for k in _MODEL_HINTS if made_by(weights, k, cls=True)), ""):
        name = cast(type, weights).__name__  # SGDClassifier for SGDClassifier()
        kind, args = ("an estimator", "()") if lib == "sklearn" else ("a model", "(...)")
        give = _MODEL_HINTS[lib][1:]
        return f": the class {name} itself, not {kind}; build one, {name}{args}, and{give}"
    if made_by(weights, "flwr"):
        return flower_hint(weights)
    for library, hint in _MODEL_HINTS.items():
        if made_by(weights, library):
            return hint
    if isinstance(weights, np.ndarray):
        return ': name the array, e.g. {"w": array}'
    if not isinstance(weights, list | tuple):
        return ""
    return (
        ": name each array, e.g. dict(zip(model.state_dict(), arrays)) for a torch model "
        'or {"coef": ..., "intercept": ...}'
    )


_MODEL_HINTS: Final = {
    "torch": ": give the model's weights, covey.torch.to_weights(model, copy=True)",
    "sklearn": ": give the estimator's parameters, covey.sklearn.get_params(model) (or "
    "covey.sklearn.initial_params(model, num_features, classes) before it is fitted)",
}


def made_by(value: object, library: str, *, cls: bool = False) -> bool:
    """Whether ``value`` is an object (or with ``cls``, a class) built on ``library``'s."""
    if isinstance(value, type) != cls:
        return False
    mro = cast(type, value if cls else type(value)).__mro__
    return any(c.__module__.split(".")[0] == library for c in mro)


def flower_hint(value: object) -> str:
    """For Flower's ``Parameters``, ``ArrayRecord`` or ``Array`` where NumPy arrays belong.

    Says how to get the arrays out of it; "" for anything that is not Flower's.
    """
    if not made_by(value, "flwr"):
        return ""
    if hasattr(value, "tensors") and hasattr(value, "tensor_type"):
        return (
            ": Flower's Parameters hold serialized bytes; covey takes named NumPy arrays, "
            "e.g. dict(zip(names, flwr.common.parameters_to_ndarrays(parameters)))"
        )
    if callable(getattr(value, "to_numpy_ndarrays", None)) or callable(
        getattr(value, "numpy", None)
    ):
        return (
            ": Flower's Array holds serialized bytes and its .numpy() is the NumPy array; "
            "an ArrayRecord's arrays are {name: a.numpy() for name, a in record.items()}"
        )
    return ""


def tensor_hint(value: object) -> str:
    """For a torch tensor where a NumPy array belongs, how to convert a state_dict.

    Flower's ``Array`` is told how to read its array (:func:`flower_hint`).
    """
    if type(value).__module__.split(".")[0] != "torch":
        return flower_hint(value)
    return (
        ": convert a torch state_dict (from torch.load or safetensors.torch.load_file) "
        "with covey.torch.to_weights(state_dict, copy=True)"
    )


def dtype_hint(dtype: np.dtype[Any]) -> str:
    """What to do with an array of ``dtype`` that weights cannot hold, or ``""``.

    Complex arrays, and ``ml_dtypes``' narrow floats and integers (``bfloat16``,
    ``float8_e4m3fn``, ``int4``, which NumPy knows as void-kind dtypes), have
    a form that can be held: say which.
    """
    if dtype.kind == "c":
        return (
            ": keep the real and imaginary parts as a float array "
            "(np.stack([w.real, w.imag], axis=-1); in a torch model, a real parameter "
            "of a trailing dimension 2 that forward() reads with torch.view_as_complex)"
        )
    if dtype.kind == "V" and dtype.name.startswith(("bfloat", "float")):  # ml_dtypes' floats
        return (
            ": convert it with .astype(np.float32) (compression='bfloat16' or 'q8' "
            "narrows the updates clients send instead)"
        )
    if dtype.kind == "V" and dtype.name.startswith(("int", "uint")):  # ml_dtypes' int4, int2
        return ": convert it with .astype(np.int8) (or np.uint8)"
    return ""


def integer_model_hint(name: str, got: np.dtype[Any], expected: np.dtype[Any]) -> str:
    """Why a float array meets an integer one: the model was most likely started as integers."""
    if got.kind != "f" or expected.kind not in "iub":
        return ""
    return (
        f" (the model holds {name!r} as {expected}, as the initial weights gave it: start "
        "weights that train as floats, e.g. np.zeros(shape) or np.array([0.0, 1.0]), "
        "not np.array([0, 1]))"
    )
