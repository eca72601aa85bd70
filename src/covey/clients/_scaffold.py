"""SCAFFOLD on the client: a control variate ``c_i`` that corrects local gradients for drift.

The :func:`covey.Scaffold` strategy broadcasts the server control variate ``c``
with every fit task. A client keeps its own ``c_i`` across rounds: in memory
(a simulation builds each client once per client id and keeps it for the whole
run) and, given a ``path``, on its own disk, so a deployed client that restarts
resumes with it. A round sent again (by a server resumed after a crash)
starts from the ``c_i`` the client had before it the first time, for up to
two rounds back. Each local step uses the corrected gradient
``g(y) + c - c_i``; afterwards (option II of the paper)
``c_i+ = c_i - c + (x - y) / (K lr)`` for ``K`` local steps of learning rate
``lr``, and the client sends ``y - x`` with ``Delta c_i = c_i+ - c_i``::

    class MyClient(covey.Client):
        def __init__(self, cid):
            self.control = scaffold.ControlVariate()   # or ControlVariate(path=...)

        def fit(self, weights, config):
            correction = self.control.correction(weights, config)   # c - c_i
            w = {k: v.copy() for k, v in weights.items()}
            for step in range(K):
                g = loss_grad(w, next_batch())
                w = {k: w[k] - lr * (g[k] + correction[k]) for k in w}
            return self.control.fit_result(w, num_examples=n, steps=K, lr=lr)

References:
    Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
    Learning", ICML 2020 (Algorithm 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from covey.aggregate._scaffold import APPLIED_ROUND, CLIENT_DELTA, SERVER_CONTROL
from covey.clients._torch import as_tensors, named_parameters, torch_module
from covey.core._codec import decode, encode
from covey.core._files import atomic_write
from covey.core._messages import Config, FitResult, Metrics
from covey.core._replay import ByRound
from covey.core._weights import Array, Weights, WeightsError, WeightsSpec, subtract

__all__ = [  # noqa: RUF022 - plainly sorted, as the export-list test expects
    "CLIENT_DELTA",
    "ControlVariate",
    "SERVER_CONTROL",
    "torch_add_correction",
    "torch_tensors",
]


def server_control(config: Config) -> Weights | None:
    """The server control variate ``c`` in a fit config (None if the strategy sent none)."""
    extras = config.get("extras") or {}
    c = extras.get(SERVER_CONTROL) if isinstance(extras, Mapping) else None
    return c if isinstance(c, Mapping) else None


class ControlVariate:
    """One client's SCAFFOLD control variate ``c_i``, kept across rounds.

    Args:
        path: A file in which ``c_i`` is kept between runs of a deployed client
            (written atomically after every round); None keeps it in memory only.

    The ``c_i`` before each of the client's last two rounds is kept too (in
    memory: two more references to arrays, no copies; and in ``path``, given
    one), so that a round a resumed server sends again starts from the ``c_i``
    it started from the first time, also for a client built again from
    ``path`` (a simulation resumed after a kill).

    A server that says which round last took this client's update (the fit
    config's ``"scaffold_applied_round"``, sent by the round loop and by
    FedBuff's under SCAFFOLD) gets the ``c_i+`` of a reply kept only once it
    names that reply's round (its task's ``"round"``): until the next task it
    is :attr:`pending` (and, given a ``path``, in ``PATH.pending``), and
    dropped if the server never applied it,
    so ``c`` stays the mean of the clients' ``c_i``. A change kept of a round
    later than the one a task names is dropped too (up to two rounds back): a
    server resumed from a checkpoint before the update that took it no longer
    has it in ``c``. Without that entry the new ``c_i`` is kept as the reply is built.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._kept: ByRound[dict[str, Array]] = ByRound()
        self._round: tuple[Weights, Weights, int | None, bool] | None = None
        self._pending: tuple[int, dict[str, Array]] | None = None
        if self.path is not None and self.path.exists():
            self._kept = read_kept(self.path)
        if self.path is not None:
            self._pending = read_pending(pending_path(self.path))

    @property
    def value(self) -> dict[str, Array] | None:
        """The current ``c_i`` (None before the first round)."""
        return self._kept.value

    @value.setter
    def value(self, value: dict[str, Array] | None) -> None:
        self._kept.value = value

    def correction(self, weights: Weights, config: Config) -> dict[str, Array]:
        """``c - c_i``: add it to every local gradient of this round.

        Args:
            weights: The global weights ``x`` the client received.
            config: The fit config; its ``"extras"`` carry the server's ``c``.

        Returns:
            One array per name (zeros for non-float arrays).

        Raises:
            ValueError: if the server sent no control variate (not a SCAFFOLD strategy).
        """
        c = server_control(config)
        if c is None:
            raise ValueError(
                f"the fit config carries no {SERVER_CONTROL!r} extra: the server must run "
                "a SCAFFOLD strategy (covey.Scaffold)"
            )
        spec = WeightsSpec.of(weights)
        spec.check(c, what="the server control variate")
        rnd = _round_of(config.get("round"))
        told = _round_of(config.get(APPLIED_ROUND))
        self._settle(told, APPLIED_ROUND in config)
        if told is not None:  # a change kept of a later round: a resumed server lost its update
            self._kept.at(told + 1)
        self._kept.at(rnd)  # a round sent again starts from the c_i it had the first time
        if self.value is None:
            self.value = {k: np.zeros(v.shape, v.dtype) for k, v in weights.items()}
        else:
            try:
                spec.check(self.value, what="the stored client control variate")
            except WeightsError as exc:
                where = f" (delete {self.path} to start over)" if self.path else ""
                raise WeightsError(f"{exc}{where}") from None
        self._round = (weights, c, rnd, told is not None and rnd is not None)
        return {
            k: (c[k] - self.value[k]) if w.dtype.kind == "f" else np.zeros_like(w)
            for k, w in weights.items()
        }

    def fit_result(
        self,
        new_weights: Weights,
        *,
        num_examples: int,
        steps: int,
        lr: float,
        metrics: Metrics | None = None,
        full_gradient: Weights | None = None,
    ) -> FitResult:
        """Update ``c_i`` from this round's training and build the reply.

        Args:
            new_weights: The local weights ``y`` after training.
            num_examples: Examples trained on.
            steps: ``K``, the local steps taken; 0 (a client without data) keeps
                ``c_i`` as it was and reports no change of it.
            lr: The local learning rate.
            metrics: Metrics to report.
            full_gradient: If given, option I: ``c_i+`` is this gradient of the local
                loss at the global weights; otherwise option II from ``(x - y)/(K lr)``.

        Returns:
            A :class:`~covey.FitResult` with ``delta = y - x`` and the extra
            ``"scaffold_delta_c"``.
        """
        if self._round is None or self.value is None:
            raise RuntimeError("call correction(weights, config) before fit_result()")
        if steps < 0 or not lr > 0:
            raise ValueError(f"steps must be >= 0 and lr > 0, got steps={steps}, lr={lr}")
        x, c, rnd, held = self._round
        old = self.value
        new: dict[str, Array] = {}
        delta: dict[str, Array] = {}
        change: dict[str, Array] = {}
        for k, xk in x.items():
            y = np.asarray(new_weights[k])
            delta[k] = subtract({k: y}, {k: xk})[k]  # a bool array's delta: the flipped entries
            if steps == 0 and np.any(delta[k]):
                raise ValueError(
                    f"steps=0 (no local step), yet weight {k!r} changed: give the number "
                    "of local steps taken"
                )
            if xk.dtype.kind != "f" or steps == 0:  # no step taken: nothing learnt of c_i
                new[k] = old[k]
                change[k] = np.zeros_like(xk)
                continue
            if full_gradient is not None:
                new[k] = np.asarray(full_gradient[k], dtype=xk.dtype).copy()
            else:
                new[k] = (old[k] - c[k] + (xk - y) / (steps * lr)).astype(xk.dtype)
            # asarray: arithmetic on 0-d arrays gives NumPy scalars, which are no weights.
            new[k] = np.asarray(new[k])
            change[k] = np.asarray(new[k] - old[k])
        self._round = None
        if held and rnd is not None:  # kept once the server says c took the change
            self._pending = (rnd, new)
            if self.path is not None:
                write_pending(pending_path(self.path), rnd, new)
        else:  # a server that does not say (an earlier version): taken as sent
            self._kept.advance(rnd, new)
            self._save()
        return FitResult(
            delta=delta,
            num_examples=num_examples,
            metrics=dict(metrics or {}),
            extras={CLIENT_DELTA: change},
        )

    @property
    def pending(self) -> dict[str, Array] | None:
        """The ``c_i+`` of the last reply, until the next task says whether ``c`` took it."""
        return None if self._pending is None else self._pending[1]

    def _settle(self, told: int | None, said: bool) -> None:
        """Keep the last reply's ``c_i+`` if round ``told`` is its round, else drop it.

        A server that says nothing (``said`` false) is taken to have applied it.
        """
        if self._pending is None:
            return
        (made, new), self._pending = self._pending, None
        if told == made or not said:
            self._kept.advance(made, new)
            self._save()
        if self.path is not None:
            pending_path(self.path).unlink(missing_ok=True)

    def _save(self) -> None:
        if self.path is None or self.value is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, bytes(encode(kept_arrays(self._kept))))


def _round_of(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# A file with this entry holds c_i under "c/<name>" and, for each of the client's last
# rounds, the round under "before<i>/round" and the c_i before it under "before<i>/c/<name>"
# (none: there was none yet). Without it (an earlier version's file): c_i by name alone.
_KEPT_FORMAT = "covey:kept"


def kept_arrays(kept: ByRound[dict[str, Array]]) -> dict[str, Array]:
    """``kept`` as the arrays of a ``c_i`` file: its value and the values before its last rounds.

    Kept on disk, not in memory only: a simulation killed while round r's checkpoint
    was written resumes from round r - 1, and its clients, built again from their
    files, must start round r again from the ``c_i`` before it.
    """
    arrays: dict[str, Array] = {f"c/{k}": v for k, v in (kept.value or {}).items()}
    before = kept.before
    arrays[_KEPT_FORMAT] = np.array(len(before), np.int64)
    for i, (rnd, value) in enumerate(before):
        arrays[f"before{i}/round"] = np.array(rnd, np.int64)
        arrays.update({f"before{i}/c/{k}": v for k, v in (value or {}).items()})
    return arrays


def read_kept(path: Path) -> ByRound[dict[str, Array]]:
    """The ``c_i`` (and those before the client's last rounds) kept in ``path``."""
    arrays = decode(path.read_bytes())
    count = arrays.pop(_KEPT_FORMAT, None)
    if count is None:  # an earlier version's file: c_i alone
        return ByRound({k: np.array(v) for k, v in arrays.items()})
    if count.shape != () or count.dtype.kind != "i":
        raise WeightsError(f"{path} holds no control variate: delete it to start over")

    def under(prefix: str) -> dict[str, Array] | None:
        found = {k[len(prefix) :]: np.array(v) for k, v in arrays.items() if k.startswith(prefix)}
        return found or None

    before: list[tuple[int, dict[str, Array] | None]] = []
    for i in range(int(count)):
        rnd = arrays.get(f"before{i}/round")
        if rnd is None or rnd.shape != () or rnd.dtype.kind != "i":
            raise WeightsError(f"{path} holds no round for its entry {i}: delete it to start over")
        before.append((int(rnd), under(f"before{i}/c/")))
    return ByRound(under("c/"), before)


def pending_path(path: Path) -> Path:
    """Where a client keeps the ``c_i+`` it sent, until the server says ``c`` took it."""
    return path.with_name(path.name + ".pending")


def write_pending(path: Path, rnd: int, value: Mapping[str, Array]) -> None:
    """Keep ``value``, made in round ``rnd``, at ``path`` (atomically)."""
    arrays = {"round": np.array(rnd, np.int64), **{f"c/{k}": v for k, v in value.items()}}
    atomic_write(path, bytes(encode(arrays)))


def read_pending(path: Path) -> tuple[int, dict[str, Array]] | None:
    """What :func:`write_pending` kept at ``path`` (None if nothing is)."""
    if not path.exists():
        return None
    arrays = decode(path.read_bytes())
    made = arrays.get("round")
    if made is None or made.shape != () or made.dtype.kind != "i":
        raise WeightsError(f"{path} holds no round of a control variate: delete it to start over")
    value = {k[2:]: np.array(v) for k, v in arrays.items() if k.startswith("c/")}
    return int(made), value


def torch_tensors(values: Mapping[str, Any], module: Any) -> dict[str, Any]:
    """``values`` (e.g. the round's correction) as tensors shaped for ``module``'s parameters.

    Convert once per round and pass the result to :func:`torch_add_correction` at
    every step, instead of copying NumPy arrays at every step.

    Args:
        values: NumPy arrays (or tensors) by parameter name, one for each of
            ``module``'s named parameters (a missing one raises ``KeyError``).
        module: The ``torch.nn.Module`` whose parameters give each tensor's device and dtype.
    """
    return as_tensors(values, named_parameters(module))


def torch_add_correction(module: Any, correction: Mapping[str, Any]) -> None:
    """Add SCAFFOLD's ``c - c_i`` to every trained parameter's ``.grad`` (after ``backward()``).

    Frozen parameters (``requires_grad=False``) are left without a gradient: given
    one, even of zeros, an optimizer's weight decay or momentum would move them.
    A sparse gradient (``nn.Embedding(sparse=True)``) becomes dense, as the
    correction is.

    Args:
        module: The ``torch.nn.Module`` being trained (parameters named as in the weights).
        correction: :meth:`ControlVariate.correction`'s result, better converted once
            per round with :func:`torch_tensors` (NumPy arrays are copied every call).
    """
    torch = torch_module()
    params = named_parameters(module)
    values = as_tensors(correction, params)
    with torch.no_grad():
        for name, p in params.items():
            if not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = values[name].clone()
            elif p.grad.is_sparse:  # nn.Embedding(sparse=True): the correction is dense
                p.grad = torch.add(values[name], p.grad)
            else:
                p.grad.add_(values[name])
