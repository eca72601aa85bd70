"""PyTorch ``state_dict`` <-> :class:`covey.Weights`, copying only where memory cannot be shared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from covey.clients._quiet import ignoring
from covey.clients._torch import torch_module
from covey.core._weighthints import dtype_hint
from covey.core._weights import Array, Weights, WeightsError

__all__ = ["load_weights", "to_state_dict", "to_weights"]


def _state(source: Any) -> Mapping[str, Any]:
    """The state dict of a module, or ``source`` itself when it is already a mapping."""
    if isinstance(source, Mapping):
        return source
    state_dict = getattr(source, "state_dict", None)
    if state_dict is None:
        raise TypeError(f"expected a torch.nn.Module or a state_dict, got {type(source).__name__}")
    return state_dict()  # type: ignore[no-any-return]


_EXTRA_STATE = "_extra_state"  # torch's name for a module's get_extra_state() entry


def _tensors(state: Mapping[str, Any], torch: Any) -> dict[str, Any]:
    """``state`` without the modules' extra state that is not a tensor.

    A module with ``get_extra_state`` (a layer's settings, a tokenizer's
    vocabulary) adds its return value to the ``state_dict`` as
    ``<module>._extra_state``: any picklable object, which holds no weights.
    """
    return {
        name: value
        for name, value in state.items()
        if isinstance(value, torch.Tensor) or name.rpartition(".")[2] != _EXTRA_STATE
    }


def to_weights(source: Any, *, copy: bool = False) -> dict[str, Array]:
    """A module's ``state_dict`` (parameters and buffers) as named NumPy arrays.

    Tensors on the CPU are shared, not copied: the arrays are views of the
    tensors' memory (read-only, so the model is not changed through them by
    accident). Tensors on another device, and ``bfloat16`` tensors (NumPy has
    no such dtype), are copied (the latter as ``float32``).

    Args:
        source: A ``torch.nn.Module`` or a ``state_dict``.
        copy: Return arrays that own their memory (e.g. to keep them while the
            model trains on), in C order, as a file writer wants them (a
            transposed tensor's would be stored transposed by
            ``safetensors.numpy.save_file``, silently).

    Returns:
        ``{name: array}`` in the ``state_dict``'s order. A module's extra state
        that is not a tensor (``get_extra_state``, named ``..._extra_state``)
        holds no weights and is left out; :func:`load_weights` leaves it as it is.

    Example:
        >>> import torch
        >>> from covey.torch import to_weights
        >>> w = to_weights(torch.nn.Linear(3, 2))
        >>> {k: v.shape for k, v in w.items()}
        {'weight': (2, 3), 'bias': (2,)}
    """
    torch = torch_module()
    out: dict[str, Array] = {}
    for name, tensor in _tensors(_state(source), torch).items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} is {type(tensor).__name__}, not a tensor")
        t = tensor.detach()
        shared = True
        if t.dtype == torch.bfloat16:
            t, shared = t.to(torch.float32), False
        try:
            if t.device.type != "cpu":
                t, shared = t.cpu(), False
            array = t.numpy()
        except (TypeError, RuntimeError, NotImplementedError) as exc:
            # float8, quantized, sparse and meta (no data) tensors have no NumPy form.
            raise TypeError(
                f"state_dict entry {name!r} ({tensor.dtype}, {tensor.layout}, on "
                f"{tensor.device.type}) cannot become a NumPy array: {exc}"
                + _no_numpy_hint(tensor, torch)
            ) from None
        if copy and shared:
            array = np.array(array, copy=True, order="C")
        elif copy:  # a copy already, in the tensor's strides (a transposed one's)
            array = np.asarray(array, order="C")
        elif shared:
            array = array.view()
            array.setflags(write=False)
        out[name] = array
    return out


def _no_numpy_hint(tensor: Any, torch: Any) -> str:
    """What to do with a tensor that has no NumPy form, or ``""`` (torch's error says it)."""
    if tensor.device.type == "meta":
        return (
            "; the model was built without its data (device='meta'): materialise it "
            "first (model.to_empty(device='cpu'), then initialise or load its weights)"
        )
    if tensor.is_quantized:
        return (
            "; a quantized model cannot be federated: federate the float model and "
            "quantize it after the run (torch.ao.quantization.convert)"
        )
    if tensor.is_complex():
        return (
            "; keep the real and imaginary parts as a real tensor of a trailing dimension 2 "
            "(torch.view_as_real) that forward() reads with torch.view_as_complex"
        )
    held = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    if tensor.is_floating_point() and tensor.dtype not in held:  # float8 and the like
        return (
            "; give the model in a dtype NumPy holds (model.float(), or model.to(torch.bfloat16), "
            "which is sent as float32) and cast it after the run"
        )
    return ""


def _wrapper_hint(missing: list[str], extra: list[str]) -> str:
    """Say so when the two sets of names differ by one prefix: a wrapper's attribute name.

    Opacus' ``GradSampleModule`` keeps the model as ``_module``, ``torch.compile``
    as ``_orig_mod`` and ``DataParallel`` as ``module``, so their ``state_dict``
    names start with that prefix and the model's own do not.
    """
    if not missing or len(missing) != len(extra):
        return ""
    for longer, shorter, side in ((missing, extra, "model's"), (extra, missing, "weights'")):
        prefix, _, _ = longer[0].partition(".")
        prefix += "."  # a whole module name: `new_fc` renamed `fc` is no wrapper
        if sorted(prefix + n for n in shorter) == sorted(longer):
            inner = "the module it wraps" if side == "model's" else "the wrapped module"
            return (
                f" (the {side} names all start with {prefix!r}: a wrapper's, as Opacus "
                f"or torch.compile add; use {inner} instead)"
            )
    return ""


def _check_names(weights: Weights, names: list[str]) -> None:
    missing = [n for n in names if n not in weights]
    extra = [str(n) for n in weights if n not in names]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + (
            [f"unexpected {extra}"] if extra else []
        )
        raise WeightsError(
            f"weights do not match the model's state_dict: {'; '.join(parts)}"
            + _wrapper_hint(missing, extra)
        )


def to_state_dict(weights: Weights) -> dict[str, Any]:
    """Named NumPy arrays as CPU tensors that share the arrays' memory (no copy).

    The arrays a client receives are read-only and shared with the server:
    treat these tensors as read-only too (``module.load_state_dict`` copies
    them into the module's own tensors, which is what it is meant for).

    Args:
        weights: Named NumPy arrays, e.g. the global model a client received;
            ``ml_dtypes.bfloat16`` arrays become bfloat16 tensors.

    Returns:
        ``{name: torch.Tensor}``.
    """
    torch = torch_module()
    out: dict[str, Any] = {}
    # Read-only arrays are fine here: the tensors are only read from.
    with ignoring(UserWarning, ".*not writable.*"):
        for name, array in weights.items():
            a = np.asarray(array)
            if not a.dtype.isnative:  # torch holds native byte order only (a copy)
                a = a.astype(a.dtype.newbyteorder("="))
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
            try:
                out[name] = torch.from_numpy(a)
            except TypeError:
                out[name] = _narrow_float(name, a, torch)
    return out


def _narrow_float(name: str, array: np.ndarray[Any, Any], torch: Any) -> Any:
    """An ``ml_dtypes.bfloat16`` array as a bfloat16 tensor sharing its memory; else refused.

    NumPy has no bfloat16 of its own: ``ml_dtypes`` (JAX's) adds one, of a
    dtype ``torch.from_numpy`` does not know, but of torch's bits.
    """
    if array.dtype.kind == "V" and array.dtype.name == "bfloat16" and array.itemsize == 2:
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    raise WeightsError(
        f"weight {name!r} has dtype {array.dtype}, which a torch tensor cannot hold"
        + dtype_hint(array.dtype)
    )


def load_weights(module: Any, weights: Weights) -> None:
    """Copy ``weights`` into ``module``'s parameters and buffers, in place, once.

    Each array is copied straight into the module's existing tensor (on any
    device), with no intermediate copy; the optimizer's references to the
    parameters stay valid.

    Args:
        module: The ``torch.nn.Module`` to update.
        weights: One array per ``state_dict`` entry, with matching shapes.

    Raises:
        WeightsError: A name is missing or unexpected, a shape differs, a
            complex array would go into a real tensor, NaN or inf would go into
            an integer tensor, a value lies beyond an integer tensor's range or
            a narrower float tensor's (integers too), or a tensor of the module
            is an expanded view that cannot be
            written (``torch.arange(3).expand(4, 3)``); the module is then left
            unchanged. Other dtypes are cast to the module's (float64 weights
            into a float32 model, say). A float with a fraction going into an
            integer tensor is cut toward zero, as torch casts it, silently
            (2.7 becomes 2, -2.7 becomes -2: a mean of BatchNorm's
            ``num_batches_tracked`` counters, say).

    A tensor the module lists under several names (tied weights,
    ``out.weight = inp.weight``) takes the names' common value, or their mean
    where they differ (each compressed or noised on its own), so that neither
    name's aggregate is dropped.
    """
    torch = torch_module()
    state = _tensors(module.state_dict(keep_vars=True), torch)
    _check_names(weights, list(state))
    for name, target in state.items():  # every check before the first copy: all or nothing
        shape = tuple(np.shape(weights[name]))
        if shape != tuple(target.shape):
            raise WeightsError(
                f"weight {name!r} has shape {shape}, the model's is {tuple(target.shape)}"
            )
        if any(st == 0 and n > 1 for st, n in zip(target.stride(), target.shape, strict=True)):
            # an expanded tensor: copy_ would fail half-way, with earlier arrays copied
            raise WeightsError(
                f"the model's {name!r} is an expanded tensor whose elements share memory, "
                "so it cannot be written in place: register it as a tensor of its own "
                "(.clone() or .contiguous()), or as a non-persistent buffer"
            )
        if np.asarray(weights[name]).dtype.kind == "c" and not target.is_complex():
            raise WeightsError(
                f"weight {name!r} is complex, the model's is {target.dtype}: "
                "copying it would drop the imaginary part"
            )
        _check_cast(name, np.asarray(weights[name]), target, torch)
    sources = to_state_dict(weights)
    with torch.no_grad():
        for names in _tied(state):
            target = state[names[0]]
            target.copy_(_one_value([sources[n] for n in names], target, torch))


def _tied(state: Mapping[str, Any]) -> list[list[str]]:
    """The names of ``state``'s entries, grouped by the tensor they are (tied weights share one).

    A model that ties two layers (``out.weight = inp.weight``) lists that one
    tensor under both names; each is one group, in ``state``'s order.
    """
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, tensor in state.items():
        key: tuple[Any, ...] = (name,)  # a tensor of no memory is never tied
        if tensor.numel():
            key = (tensor.device, tensor.data_ptr(), tensor.dtype, tensor.shape, tensor.stride())
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _one_value(values: list[Any], target: Any, torch: Any) -> Any:
    """What a tensor listed under several names takes from their values.

    The value itself when they are equal (as clients send them, and as a linear
    aggregate of such values stays); their mean when they differ (compression
    or noise applied to each name on its own), so no name's aggregate is lost.
    """
    first = values[0]
    if len(values) == 1 or all(torch.equal(first, v) for v in values[1:]):
        return first
    if not (target.is_floating_point() or target.is_complex()):
        return first  # an integer tensor has no mean of its own kind: the first name's
    wide = torch.complex128 if target.is_complex() else torch.float64
    return torch.stack([v.to(wide) for v in values]).mean(dim=0)


def _check_cast(name: str, array: np.ndarray[Any, Any], target: Any, torch: Any) -> None:
    """Refuse values a cast into ``target``'s dtype would change beyond rounding.

    Checked only when the cast can lose (a pass over the array): NaN or inf into
    an integer or bool tensor (NaN becomes INT64_MIN), values beyond an integer
    tensor's range (they wrap), and values beyond a narrower float's range,
    integers included (they become inf).
    """
    if array.dtype.kind == "V" and array.dtype.name == "bfloat16":  # ml_dtypes' (see above)
        array = array.astype(np.float32)
    if target.is_complex() or array.dtype.kind not in "fiu" or not array.size:
        return
    if target.is_floating_point():
        _check_float_range(name, array, target, torch)
    else:
        _check_int_range(name, array, target, torch)


def _check_float_range(name: str, array: np.ndarray[Any, Any], target: Any, torch: Any) -> None:
    if array.dtype.kind == "f" and array.dtype.itemsize <= target.element_size():
        return
    limit = torch.finfo(target.dtype).max
    values = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    if not values.size:
        return
    largest = max(abs(float(values.min())), abs(float(values.max())))
    if largest > limit:
        raise WeightsError(
            f"weight {name!r} holds {largest:.4g}, beyond the largest {target.dtype} "
            f"({limit:.4g}): it would become inf"
        )


def _check_int_range(name: str, array: np.ndarray[Any, Any], target: Any, torch: Any) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise WeightsError(
            f"weight {name!r} holds NaN or inf, the model's is {target.dtype}: "
            "no integer stands for them"
        )
    if target.dtype == torch.bool:
        return
    info = torch.iinfo(target.dtype)
    same = np.dtype(f"{'i' if info.min < 0 else 'u'}{target.element_size()}")
    if array.dtype.kind in "iu" and np.can_cast(array.dtype, same):
        return  # every value fits
    low, high = array.min(), array.max()
    if low < info.min or high > info.max:
        raise WeightsError(
            f"weight {name!r} holds values from {low} to {high}, beyond the model's "
            f"{target.dtype} ({info.min} to {info.max}): the cast would change them"
        )
