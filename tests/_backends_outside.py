"""Clients shared by the outside-in backend tests: module-level, so every backend can build them.

The process backend forks (clients need not pickle); the Ray tests ship this
module to the actors by value.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

import covey
from covey import EvaluateResult, FitResult
from covey.clients import ControlVariate
from covey.sim import SimulationResult


class Stateful(covey.Client):
    """Keeps a fit counter and a momentum buffer on the object; client 3 fails in round 2."""

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.calls = 0
        self.momentum: np.ndarray | None = None

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        self.calls += 1
        grad = np.random.default_rng([self.cid, config["round"]]).normal(size=weights["w"].shape)
        self.momentum = grad if self.momentum is None else 0.9 * self.momentum + grad
        if self.cid == 3 and config["round"] == 2:
            raise RuntimeError("client 3 breaks in round 2")
        return FitResult(
            weights={"w": weights["w"] - 0.1 * self.momentum},
            num_examples=self.cid + 1,
            metrics={"calls": self.calls},
        )

    def evaluate(self, weights: Any, config: dict[str, Any]) -> EvaluateResult:
        loss = float(np.square(weights["w"] - self.cid).mean())
        return EvaluateResult(loss=loss, num_examples=self.cid + 1, metrics={"calls": self.calls})


class Noisy(covey.Client):
    """A seeded random delta per client and round (for top-k error feedback)."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        rng = np.random.default_rng([self.cid, config["round"]])
        return FitResult(delta={"w": rng.normal(size=weights["w"].shape)}, num_examples=1)


class SlottedNoisy:
    """:class:`Noisy` with ``__slots__`` and no ``__weakref__``: takes no weak reference."""

    __slots__ = ("cid",)

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        return Noisy.fit(self, weights, config)  # type: ignore[arg-type]


class ScaffoldClient(covey.Client):
    """SCAFFOLD with its control variate on the object: three corrected local steps."""

    def __init__(self, cid: int, folder: str | None = None) -> None:
        self.cid = cid
        self.control = ControlVariate(None if folder is None else f"{folder}/{cid}.covey")

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        correction = self.control.correction(weights, config)
        rng = np.random.default_rng([self.cid, config["round"]])
        w = {k: v.copy() for k, v in weights.items()}
        for _ in range(3):
            grad = w["w"] - rng.normal(size=w["w"].shape) - self.cid
            w["w"] = w["w"] - 0.1 * (grad + correction["w"])
        return self.control.fit_result(w, num_examples=1 + self.cid, steps=3, lr=0.1)


class Mistaken(covey.Client):
    """Client 1 makes one mistake (``mode``); every other client is well behaved."""

    def __init__(self, cid: int, mode: str) -> None:
        self.cid = cid
        self.mode = mode if cid == 1 else "ok"
        self.lock = threading.Lock() if mode == "unpicklable" else None

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        w = weights["w"]
        bad: dict[str, Any] = {
            "missing": {"weights": {}},
            "extra": {"weights": {"w": w + 1, "z": np.ones(1)}},
            "shape": {"weights": {"w": np.ones(w.size + 1)}},
            "dtype": {"weights": {"w": (w + 1).astype(np.float32)}},
            # dtypes no pipe or network carries: the process worker used to say it
            # could not send them, where the inline backend named the wrong dtype
            "object_dtype": {"weights": {"w": (w + 1).astype(object)}},
            "complex_delta": {"delta": {"w": np.ones(w.size, dtype=complex)}},
        }
        if self.mode in bad:
            return FitResult(**bad[self.mode], num_examples=1)
        if self.mode == "negative":
            return FitResult(weights={"w": w + 1}, num_examples=-1)
        if self.mode == "float":
            return FitResult(weights={"w": w + 1}, num_examples=2.0)  # type: ignore[arg-type]
        if self.mode == "metric_name":
            return FitResult(weights={"w": w + 1}, num_examples=1, metrics={3: 1.0})  # type: ignore[dict-item]
        if self.mode == "metric_surrogate":  # stopped a run that logged to TensorBoard
            return FitResult(weights={"w": w + 1}, num_examples=1, metrics={"x\udcff": 1.0})
        if self.mode == "metric_text":
            return FitResult(weights={"w": w + 1}, num_examples=1, metrics={"a": "v\udcff"})
        if self.mode == "metric_count":  # 200,000 names made every round's record grow
            many: dict[str, Any] = {f"m{i}": 1.0 for i in range(1001)}
            return FitResult(weights={"w": w + 1}, num_examples=1, metrics=many)
        if self.mode == "metric_long_name":  # capped only by the wire's 1 Mi characters
            long_name: dict[str, Any] = {"n" * 1025: 1.0}
            return FitResult(weights={"w": w + 1}, num_examples=1, metrics=long_name)
        if self.mode == "metric_value":
            return FitResult(weights={"w": w + 1}, num_examples=1, metrics={"a": object()})  # type: ignore[dict-item]
        if self.mode == "unlock":  # makes the shared array writable, then trains in place
            w.flags.writeable = True
            w += 100.0
            return FitResult(weights={"w": w.copy()}, num_examples=1)
        if self.mode == "in_place":
            w += 100.0
        return FitResult(weights={"w": w + 1}, num_examples=1)


def mistaken_fn(mode: str) -> Any:
    """``client_fn`` for :class:`Mistaken`; mode ``"int"`` returns a number for client 1."""

    def client_fn(cid: int) -> Any:
        if mode == "int" and cid == 1:
            return 42
        return Mistaken(cid, mode)

    return client_fn


MISTAKES = {
    "int": "client_fn(1) returned int, not a client: it has no fit() method",
    "missing": "client 1's weights do not match the model: missing ['w']",
    "extra": "client 1's weights do not match the model: unexpected ['z']",
    "shape": "client 1's weights: 'w' has shape (7,), expected (6,)",
    "dtype": "client 1's weights: 'w' has dtype float32, expected float64",
    "object_dtype": "client 1's weights: 'w' has dtype object, expected float64",
    "complex_delta": "client 1's delta: 'w' has dtype complex128, expected float64",
    "negative": "FitResult.num_examples must be a non-negative int, got -1",
    "float": "FitResult.num_examples must be a non-negative int, got 2.0",
    "in_place": "shared read-only arrays",
    "metric_name": "FitResult.metrics names a metric by int 3, not a str",
    "metric_value": "FitResult.metrics['a'] is object, expected a number",
    "metric_surrogate": "FitResult.metrics names a metric 'x\\udcff', which is not valid Unicode",
    "metric_text": "FitResult.metrics['a'] is a str holding a lone surrogate",
    "metric_count": "FitResult.metrics holds 1001 metrics, over the limit of 1000",
    "metric_long_name": (
        f"FitResult.metrics names a metric {'n' * 40!r}... of 1025 characters, over the limit "
        "of 1024: choose a shorter name"
    ),
    "unlock": "shared read-only arrays",
}


def run(client_fn: Any, backend: str, **kw: Any) -> SimulationResult:
    kw.setdefault("strategy", covey.FedAvg(fraction_fit=0.5, fraction_evaluate=0.5))
    kw.setdefault("seed", 1)
    if backend != "inline":
        kw.setdefault("num_workers", 2)
    num_clients, rounds = kw.pop("num_clients", 8), kw.pop("rounds", 4)
    return covey.simulate(
        client_fn,
        num_clients,
        rounds,
        initial_weights=kw.pop("initial", {"w": np.zeros(6)}),
        backend=backend,  # type: ignore[arg-type]
        **kw,
    )


def rows(result: SimulationResult) -> list[tuple[Any, ...]]:
    """Everything of the history that must not depend on the backend (not timings)."""
    return [
        (
            r.round,
            r.fit_participants,
            [(f.cid, f.error) for f in r.fit_failures],
            r.fit_metrics,
            r.evaluate_participants,
            r.evaluate_loss,
            r.evaluate_metrics,
        )
        for r in result.history.rounds
    ]


def same_bits(a: SimulationResult, b: SimulationResult) -> None:
    assert rows(a) == rows(b)
    assert a.weights.keys() == b.weights.keys()
    for name in a.weights:
        assert a.weights[name].dtype == b.weights[name].dtype
        assert a.weights[name].tobytes() == b.weights[name].tobytes(), name


class Diary(covey.Client):
    """Writes how many fits this object ran to ``folder/<cid>-<round>``; client 1 dies once."""

    def __init__(self, cid: int, folder: str) -> None:
        self.cid = cid
        self.folder = folder
        self.calls = 0

    def fit(self, weights: Any, config: dict[str, Any]) -> FitResult:
        import os
        from pathlib import Path

        self.calls += 1
        Path(self.folder, f"{self.cid}-{config['round']}").write_text(str(self.calls))
        marker = Path(self.folder, "died")
        if self.cid == 1 and config["round"] == 2 and not marker.exists():
            marker.write_text("")
            os._exit(1)  # the worker process dies in the middle of a round
        return FitResult(weights={"w": weights["w"] + 1}, num_examples=1)
