"""What a scikit-learn model keeps between ``partial_fit`` calls, kept on disk between runs.

An MLP's optimiser (Adam's moments and step, SGD's velocities and adaptive rate),
its sample counter ``t_`` and the loss history its adaptive rate reads, and an
SGD-trained linear model's ``t_`` (its learning-rate schedule's step) carry on
from round to round. :class:`TrainState` keeps them in a file, in covey's
checksummed codec (never pickle), for the state after each of the client's last
two rounds: a round sent again (by a simulation resumed after a kill, or a
restarted server) starts from the state before it, as the first time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from covey.core._codec import decode, encode
from covey.core._files import atomic_write
from covey.core._weights import Array

_SCALARS = ("t_", "n_iter_", "_no_improvement_count", "best_loss_")
_LISTS = ("ms", "vs", "velocities")


def capture(model: Any) -> dict[str, Array]:
    """The training state of ``model`` (copies)."""
    out: dict[str, Array] = {}
    for name in _SCALARS:
        value = getattr(model, name, None)
        if value is not None and math.isfinite(float(value)):
            out[name] = np.asarray(value)
    if hasattr(model, "loss_curve_"):
        out["loss_curve_"] = np.asarray(model.loss_curve_, dtype=np.float64)
    opt = getattr(model, "_optimizer", None)
    if opt is not None:
        out["opt.learning_rate"] = np.asarray(opt.learning_rate)
        out["opt.learning_rate_init"] = np.asarray(opt.learning_rate_init)
        if hasattr(opt, "t"):
            out["opt.t"] = np.asarray(opt.t)
        for key in _LISTS:
            for i, value in enumerate(getattr(opt, key, ())):
                out[f"opt.{key}.{i}"] = np.array(value)
    return out


def restore(model: Any, state: dict[str, Array]) -> None:
    """Set ``state`` (from :func:`capture`) into ``model``, primed by a first pass."""
    for name in _SCALARS:
        if name in state:
            setattr(model, name, state[name].item())
    if "loss_curve_" in state:
        model.loss_curve_ = [float(v) for v in state["loss_curve_"]]
    opt = getattr(model, "_optimizer", None)
    if opt is None or "opt.learning_rate" not in state:
        return
    opt.learning_rate = state["opt.learning_rate"].item()
    opt.learning_rate_init = state["opt.learning_rate_init"].item()
    if "opt.t" in state:
        opt.t = state["opt.t"].item()
    for key in _LISTS:
        arrays = getattr(opt, key, None)
        if arrays is not None:
            setattr(opt, key, [np.array(state[f"opt.{key}.{i}"]) for i in range(len(arrays))])


class TrainState:
    """The training state after a client's last two rounds, in ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.slots: list[tuple[int, dict[str, Array]]] = []  # newest first
        if self.path.exists():
            stored = decode(self.path.read_bytes())
            for slot in ("a", "b"):
                if f"{slot}/round" in stored:
                    prefix = f"{slot}/"
                    arrays = {
                        k[len(prefix) :]: np.array(v)
                        for k, v in stored.items()
                        if k.startswith(prefix) and k != f"{slot}/round"
                    }
                    self.slots.append((int(stored[f"{slot}/round"]), arrays))

    def before(self, rnd: int) -> dict[str, Array] | None:
        """The state after the client's latest round before ``rnd`` (None: it has none)."""
        for made, arrays in self.slots:
            if made < rnd:
                return arrays
        if self.slots:
            rounds = [made for made, _ in self.slots]
            raise ValueError(
                f"the training state in {self.path} is of rounds {rounds}, none before round "
                f"{rnd}: it is another run's; delete it to start the client's state afresh"
            )
        return None

    def keep(self, rnd: int, arrays: dict[str, Array]) -> None:
        """Keep the state after round ``rnd`` (replacing that of a later or equal round)."""
        older = [(made, kept) for made, kept in self.slots if made < rnd]
        self.slots = [(rnd, arrays), *older[:1]]
        data: dict[str, Array] = {}
        for slot, (made, kept) in zip(("a", "b"), self.slots, strict=False):
            data[f"{slot}/round"] = np.asarray(made)
            data.update({f"{slot}/{k}": v for k, v in kept.items()})
        atomic_write(self.path, bytes(encode(data)))
