"""Checks of the options of :func:`covey.secagg.secure`, before anything is built."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from covey.secagg._dp import Noise
from covey.secagg._params import ThreatModel
from covey.secagg._ring import smallest_range
from covey.strategies._checks import name_of
from covey.strategies._metrics import LARGEST, weighted_metrics


def check_options(
    clip_range: float, max_examples: int, complete: object, signed: object, reducer: object
) -> None:
    """Refuse option values ``secure()`` does not know, before anything is built."""
    number = isinstance(clip_range, int | float) and not isinstance(clip_range, bool)
    if not (number and math.isfinite(clip_range) and clip_range > 0):
        raise ValueError(f"clip_range must be a positive finite number, got {clip_range!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive int, got {max_examples!r}")
    if reducer not in ("auto", "weighted_mean", "mean"):
        raise ValueError(f"reducer must be 'auto', 'weighted_mean' or 'mean', got {reducer!r}")
    if complete is not None and not isinstance(complete, bool):
        raise ValueError(f"complete must be True, False or None, got {complete!r}")
    if not isinstance(signed, bool):
        raise ValueError(f"signed must be True or False, got {signed!r}")


def _check_kinds(threat: object, noise: object) -> None:
    if threat is not None and not isinstance(threat, ThreatModel):
        raise ValueError(f"threat must be a covey.secagg.ThreatModel or None, got {threat!r}")
    if noise is not None and not isinstance(noise, Noise):
        raise ValueError(f"noise must be a covey.secagg.Noise or None, got {noise!r}")


def _whole(name: str, value: object, *, optional: bool, most: int | None = None) -> None:
    """Refuse ``value`` unless it is a whole number >= 0 (at most ``most``), or None if optional."""
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or value < 0
        or (most is not None and value > most)
    ):
        upper = "" if most is None else f" and <= {most}"
        none = " or None" if optional else ""
        raise ValueError(f"{name} must be a whole number >= 0{upper}{none}, got {value!r}")


def check_sum_options(
    sizes: tuple[int, object, object, object],
    threat: object,
    noise: object,
    complete: object,
    signed: object,
    directory: object,
) -> None:
    """Refuse :func:`secure_sum` options of the wrong kind before anything is sent, naming each.

    ``sizes`` is the vector's length and the ``noise_entries``, ``min_survivors``
    and ``seed`` given (the length already checked).
    """
    length, noise_entries, min_survivors, seed = sizes
    _check_kinds(threat, noise)
    _whole("noise_entries", noise_entries, optional=True, most=length)
    _whole("min_survivors", min_survivors, optional=False)
    _whole("seed", seed, optional=True)
    if complete is not None and not isinstance(complete, bool):
        raise ValueError(f"complete must be True, False or None, got {complete!r}")
    if not isinstance(signed, bool):
        raise ValueError(f"signed must be True or False, got {signed!r}")
    check_directory(directory, signed)


def check_parts(threat: object, noise: object, metrics: object, bits: int) -> None:
    """Refuse a threat model, noise or metric table of the wrong type, naming it.

    A metric's bound is also refused when it is too small for ``bits``-bit fixed
    point (its scale would overflow, and every client would fail in the round).
    """
    _check_kinds(threat, noise)
    if metrics is None:
        return
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must map each metric's name to its bound, got {metrics!r}")
    for name, bound in metrics.items():
        if not isinstance(name, str):  # a client's metrics are named by text: never found
            raise ValueError(f"metrics names a metric by {type(name).__name__} {name!r}, not a str")
        if name in LARGEST:  # a mean of budgets understates the most exposed client's
            raise ValueError(
                f"metric {name!r} is a privacy budget, which a round records as the largest "
                "any client reported; secure aggregation reveals only the example-weighted "
                "mean, which understates it: leave it out of metrics= (each LocalDP site "
                "keeps its own ledger, see ledger_path)"
            )
        ok = isinstance(bound, int | float) and not isinstance(bound, bool)
        if not (ok and math.isfinite(bound) and bound > 0):
            raise ValueError(f"metric {name!r} needs a positive finite bound, got {bound!r}")
        if isinstance(bits, int) and 2 <= bits <= 48 and bound < smallest_range(bits):
            raise ValueError(
                f"metric {name!r} has a bound of {bound!r}, too small for {bits}-bit fixed "
                f"point (its scale overflows a float64): use a bound of at least "
                f"{smallest_range(bits):g}, rescaling the metric if it is that small"
            )


def check_directory(directory: object, signed: bool) -> None:
    """Refuse a directory without ``signed=True``, or one that is not names to 32-byte keys."""
    if directory is None:
        return
    if not signed:
        raise ValueError("a directory needs signed=True: it checks the clients' signatures")
    if not isinstance(directory, Mapping):
        raise ValueError(f"directory must map client names to public keys, got {directory!r}")
    for name, key in directory.items():
        if not isinstance(name, str) or not isinstance(key, bytes) or len(key) != 32:
            raise ValueError(
                f"directory entry {name!r} must be a name and its raw 32-byte Ed25519 public key"
            )


def check_fit_metrics(fit_metrics: Callable[..., Any]) -> None:
    """Refuse a strategy's ``fit_metrics`` of its own, which secure aggregation never calls.

    The server sees only the example-weighted means of the metrics named in
    ``secure(metrics=...)``, never a client's metrics: a function combining them
    would be left out silently, and the round record what it did not compute.
    """
    if fit_metrics is not weighted_metrics:
        raise ValueError(
            f"the strategy's fit_metrics {name_of(fit_metrics)} would never be called: "
            "under secure aggregation the server sees no client's metrics, only the "
            "example-weighted mean of each metric named in secure(metrics={name: bound}); "
            "leave fit_metrics out, and name the metrics to average there"
        )
