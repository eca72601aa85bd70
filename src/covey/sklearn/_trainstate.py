"""What a scikit-learn model keeps between ``partial_fit`` calls, kept on disk between runs.

An MLP's optimiser (Adam's moments and step, SGD's velocities and adaptive rate),
its sample counter ``t_`` and the losses of its last round's passes (``loss_curve_``,
whose last entry its adaptive rate and stopping read; the client keeps no more, so
the file stays one size however long the run), and an
SGD-trained linear model's ``t_`` (its learning-rate schedule's step) carry on
from round to round. :class:`covey.clients._roundstate.TrainState` keeps them in a file, in covey's
checksummed codec (never pickle), for the state after each of the client's last
three rounds: a round sent again (by a simulation resumed after a kill, or a
restarted server) starts from the state before it, as the first time. Three,
because a run's checkpoint of round r is written while round r + 1 trains: a
kill then resumes from round r - 1 and sends round r again to a client that
may have trained r + 1 already.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from covey.clients._roundstate import damaged
from covey.core._weights import Array

_SCALARS = ("t_", "n_iter_", "_no_improvement_count", "best_loss_")
_LISTS = ("ms", "vs", "velocities")


def capture(model: Any) -> dict[str, Array]:
    """The training state of ``model`` (copies)."""
    out: dict[str, Array] = {}
    for name in _SCALARS:
        value = getattr(model, name, None)
        # LogisticRegression's n_iter_ is an array: what its last fit took, not carried on
        if value is not None and np.ndim(value) == 0 and math.isfinite(float(value)):
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


def check(model: Any, state: dict[str, Array], path: Path) -> None:
    """Refuse a ``state`` read from ``path`` that :func:`restore` cannot set into ``model``.

    Each value must be one :func:`capture` takes of ``model`` (primed by a first
    pass): a finite scalar, a 1-d loss history, the optimiser's arrays as many and
    of the shapes and dtypes its own are.
    """
    own = capture(model)
    for name, value in state.items():
        if name == "loss_curve_" and value.ndim == 1 and value.dtype == np.float64:
            continue
        like = own.get(name, np.asarray(0.0) if name.startswith("client.") else None)
        if like is None:
            raise damaged(path, f"holds {name}, which {type(model).__name__} has not")
        if (
            value.shape != like.shape
            or value.dtype.kind not in ("b", "i", "u", "f")
            or (value.ndim and value.dtype != like.dtype)
        ):
            shape = list(value.shape)
            raise damaged(path, f"holds {name} as {value.dtype}{shape}, not {list(like.shape)}")
        if value.ndim == 0 and not math.isfinite(float(value)):
            raise damaged(path, f"holds {name} = {value.item()}")
    missing = sorted(k for k in set(own) - set(state) if k.startswith("opt."))
    if missing or "client.rate_set" not in state:
        raise damaged(path, f"lacks {', '.join(missing or ['client.rate_set'])}")


def restore(model: Any, state: dict[str, Array]) -> None:
    """Set ``state`` (from :func:`capture`, passed by :func:`check`) into ``model``, primed."""
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
