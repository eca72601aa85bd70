"""Server optimizers (FedOpt): treat the round's aggregate update as a pseudo-gradient.

With ``Delta_t`` the aggregate update of round ``t`` (the pseudo-gradient is
``-Delta_t``), a server optimizer keeps moments across rounds and turns
``Delta_t`` into the step actually added to the global model. They sit after a
reducer: ``chain(weighted_mean(), server_adam(eta=1e-2))``. Non-float arrays
(counters) receive the aggregate update unchanged, and so do the arrays named by
``average`` (a normalization layer's running statistics, by default): they are
no weights being learned but statistics of the clients' data, and a momentum or
adaptive step would overshoot their mean (a BatchNorm variance below zero makes
the model's output NaN). A round whose step or moments overflow (to inf or NaN)
leaves the moments as they were.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from covey.aggregate._base import Aggregate, Begin, Event, State, Step
from covey.aggregate._flat import check_positive, finite, needs_params
from covey.aggregate._order import SERVER, described, of_kind
from covey.core._weights import Array, Weights

Rule = Callable[[Array, Array, Array], tuple[Array, Array, Array]]
"""``(delta, m, v) -> (step, new m, new v)`` for one float array."""


STATISTICS: tuple[str, ...] = ("*running_mean", "*running_var", "*moving_mean", "*moving_variance")
"""The arrays server optimizers average by default (``fnmatch`` patterns of their names):
the running statistics of PyTorch's (``running_mean``, ``running_var``) and Keras'
(``moving_mean``, ``moving_variance``) normalization layers."""


def _averaged(average: Sequence[str], name: str) -> Callable[[str], bool]:
    """Whether an array's name matches one of ``average``'s patterns; refused if no patterns."""
    if isinstance(average, str) or not all(isinstance(p, str) for p in average):
        raise TypeError(f"{name} average= takes a sequence of name patterns, got {average!r}")
    patterns = tuple(average)
    return lambda key: any(fnmatch.fnmatchcase(key, p) for p in patterns)


class _OptState(NamedTuple):
    params: Weights | None
    m: dict[str, Array]
    v: dict[str, Array]
    steps: int = 0


def _moments(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype an adaptive optimizer keeps its moments in: float32 for a float16 array.

    A squared update past 256 overflows float16 (65504) to Inf, and ``m / sqrt(Inf)``
    is a step of 0 (the model stops, silently); one below about 2e-4 underflows to 0.
    """
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


def _server_optimizer(
    name: str, rule: Rule, v0: float, average: Sequence[str], *, wide: bool = False
) -> Step:
    plain = _averaged(average, name)

    def init(params: Weights) -> State:
        floats = {k: p for k, p in params.items() if p.dtype.kind == "f" and not plain(k)}
        dtypes = {k: _moments(p.dtype) if wide else p.dtype for k, p in floats.items()}
        m = {k: np.zeros(p.shape, dtypes[k]) for k, p in floats.items()}
        v = {k: np.full(p.shape, v0, dtypes[k]) for k, p in floats.items()}
        return _OptState(None, m, v)

    def update(state: _OptState, event: Event) -> tuple[State, tuple[Event, ...]]:
        if isinstance(event, Aggregate):
            params = needs_params(state.params, name)
            delta = event.as_delta(params)
            steps: dict[str, Array] = {}
            m: dict[str, Array] = {}
            v: dict[str, Array] = {}
            with np.errstate(over="ignore", invalid="ignore"):
                for key, d in delta.items():
                    if key not in state.m:
                        steps[key] = d
                        continue
                    steps[key], m[key], v[key] = rule(d, state.m[key], state.v[key])
            out = replace(event, weights=None, delta=steps)
            if not all(finite(part) for part in (steps, m, v)):
                # The round loop refuses a step that is not finite and keeps the model;
                # moments holding inf or NaN would make every later step so too.
                said = f"{name}: the round's update overflowed its moments; they are kept"
                out = replace(out, info={**out.info, "overflow": said})
                return _OptState(None, state.m, state.v, state.steps), (out,)
            return _OptState(None, m, v, state.steps + 1), (out,)
        if isinstance(event, Begin):
            return state._replace(params=event.params), (event,)
        return state, (event,)

    return of_kind(Step(init, update), SERVER, name)


@described
def server_sgd(
    lr: float = 1.0,
    momentum: float = 0.0,
    *,
    nesterov: bool = False,
    average: Sequence[str] = STATISTICS,
) -> Step:
    """Server SGD with momentum (FedAvgM): ``v = momentum * v + Delta``, step ``lr * v``.

    With ``momentum=0`` and ``lr=1`` the aggregate passes unchanged in value; with
    ``nesterov`` the step is ``lr * (Delta + momentum * v)``.

    Args:
        lr: The server learning rate (``eta_g``).
        momentum: The server momentum (``beta``), in ``[0, 1)``.
        nesterov: Use Nesterov momentum.
        average: Names (``fnmatch`` patterns) of arrays that take the clients' mean
            as it is, with no step of the optimizer's (see :data:`STATISTICS`).

    Returns:
        A server-side step.

    References:
        Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data
        Distribution for Federated Visual Classification", 2019.
    """
    eta = check_positive(lr, "server_sgd lr")
    beta = fraction(momentum, "server_sgd momentum")

    def rule(d: Array, m: Array, v: Array) -> tuple[Array, Array, Array]:
        if beta == 0.0:
            return (d if eta == 1.0 else (eta * d).astype(d.dtype, copy=False)), m, v
        m = (beta * m + d).astype(d.dtype, copy=False)
        step = d + beta * m if nesterov else m
        return (eta * step).astype(d.dtype, copy=False), m, v

    return _server_optimizer("server_sgd()", rule, 0.0, average)


@described
def server_adam(
    eta: float = 1e-2,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    *,
    average: Sequence[str] = STATISTICS,
) -> Step:
    """FedAdam: Adam on the pseudo-gradient, step ``eta m / (sqrt(v) + tau)``.

    ``m = b1 m + (1-b1) Delta`` and ``v = b2 v + (1-b2) Delta^2``. Moments start
    at ``m = 0`` and ``v = tau^2`` and, as in the paper, are not bias-corrected.

    Args:
        eta: The server learning rate.
        beta1: Decay of the first moment, in ``[0, 1)``.
        beta2: Decay of the second moment, in ``[0, 1)``.
        tau: Adaptivity: added to ``sqrt(v)``; larger is closer to server SGD.
        average: Names of arrays that take the clients' mean as it is (see
            :func:`server_sgd`).

    Returns:
        A server-side step.

    References:
        Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2).
    """
    lr, b1, b2, t = _adaptive_args("server_adam", eta, beta1, beta2, tau)

    def rule(d: Array, m: Array, v: Array) -> tuple[Array, Array, Array]:
        x = d.astype(_moments(d.dtype), copy=False)
        m = (b1 * m + (1.0 - b1) * x).astype(x.dtype, copy=False)
        v = (b2 * v + (1.0 - b2) * (x * x)).astype(x.dtype, copy=False)
        return (lr * m / (np.sqrt(v) + t)).astype(d.dtype, copy=False), m, v

    return _server_optimizer("server_adam()", rule, t * t, average, wide=True)


@described
def server_yogi(
    eta: float = 1e-2,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    *,
    average: Sequence[str] = STATISTICS,
) -> Step:
    """FedYogi: like FedAdam but ``v = v - (1-b2) Delta^2 sign(v - Delta^2)``.

    Args:
        eta: The server learning rate.
        beta1: Decay of the first moment, in ``[0, 1)``.
        beta2: Rate of the second-moment update, in ``[0, 1)``.
        tau: Adaptivity: added to ``sqrt(v)``.
        average: Names of arrays that take the clients' mean as it is (see
            :func:`server_sgd`).

    Returns:
        A server-side step.

    References:
        Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2);
        Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018.
    """
    lr, b1, b2, t = _adaptive_args("server_yogi", eta, beta1, beta2, tau)

    def rule(d: Array, m: Array, v: Array) -> tuple[Array, Array, Array]:
        x = d.astype(_moments(d.dtype), copy=False)
        m = (b1 * m + (1.0 - b1) * x).astype(x.dtype, copy=False)
        d2 = x * x
        v = (v - (1.0 - b2) * d2 * np.sign(v - d2)).astype(x.dtype, copy=False)
        return (lr * m / (np.sqrt(v) + t)).astype(d.dtype, copy=False), m, v

    return _server_optimizer("server_yogi()", rule, t * t, average, wide=True)


@described
def server_adagrad(
    eta: float = 1e-1,
    beta1: float = 0.0,
    tau: float = 1e-3,
    *,
    average: Sequence[str] = STATISTICS,
) -> Step:
    """FedAdagrad: ``v = v + Delta^2``, step ``eta m / (sqrt(v) + tau)``.

    ``m = b1 m + (1-b1) Delta`` as in the paper's Algorithm 2; ``beta1=0`` (the
    default) is plain Adagrad on the pseudo-gradient.

    Args:
        eta: The server learning rate.
        beta1: Decay of the first moment, in ``[0, 1)``.
        tau: Adaptivity: added to ``sqrt(v)``.
        average: Names of arrays that take the clients' mean as it is (see
            :func:`server_sgd`).

    Returns:
        A server-side step.

    References:
        Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2).
    """
    lr, b1, _, t = _adaptive_args("server_adagrad", eta, beta1, 0.0, tau)

    def rule(d: Array, m: Array, v: Array) -> tuple[Array, Array, Array]:
        x = d.astype(_moments(d.dtype), copy=False)
        m = (b1 * m + (1.0 - b1) * x).astype(x.dtype, copy=False)
        v = (v + x * x).astype(x.dtype, copy=False)
        return (lr * m / (np.sqrt(v) + t)).astype(d.dtype, copy=False), m, v

    return _server_optimizer("server_adagrad()", rule, t * t, average, wide=True)


def fraction(value: float, what: str) -> float:
    number = check_positive(value, what, allow_zero=True)
    if number >= 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}")
    return number


def _adaptive_args(
    name: str, eta: float, beta1: float, beta2: float, tau: float
) -> tuple[float, float, float, float]:
    return (
        check_positive(eta, f"{name} eta"),
        fraction(beta1, f"{name} beta1"),
        fraction(beta2, f"{name} beta2"),
        check_positive(tau, f"{name} tau"),
    )
