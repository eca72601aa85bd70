"""``covey.deploy.ServerApp`` and ``ServeResult``: what a server runs, and how its run ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covey.compress import Scheme
from covey.core._history import History
from covey.core._signature import InitSignature
from covey.core._weights import Array, Weights
from covey.server._base import EvaluateFn
from covey.strategies._names import FLOWER_SERVER_APP, unknown_options
from covey.strategies._strategy import Strategy

__all__ = ["ServeResult", "ServerApp"]

_OPTIONS = ("strategy", "initial_weights", "rounds", "evaluate_fn", "seed", "compression")


@dataclass
class ServerApp:
    """Everything the server side of a federation needs; what ``covey server --app`` loads.

    Args:
        strategy: What to do each round.
        initial_weights: The global model at step 0 (or a function returning it).
        rounds: How many rounds to run (the CLI's ``--rounds`` overrides it).
        evaluate_fn: ``(round, weights) -> (loss, metrics)`` on the server.
        seed: Seeds client sampling.
        compression: How clients compress updates (:func:`covey.serve`; ``--compression`` wins).
    """

    strategy: Strategy
    initial_weights: Weights | Callable[[], Weights]
    rounds: int = 3
    evaluate_fn: EvaluateFn | None = None
    seed: int = 0
    compression: Scheme | str | None = None
    __signature__ = InitSignature()  # help(ServerApp) shows the fields, not __new__'s

    def __new__(cls, *args: Any, **kwargs: Any) -> ServerApp:
        # Flower's ServerApp(server_fn=...) and ServerApp(config=ServerConfig(...)) are
        # refused naming covey's options, rather than with the bare unexpected keyword.
        if unknown := [name for name in kwargs if name not in _OPTIONS]:
            raise unknown_options(cls.__name__, unknown, _OPTIONS, FLOWER_SERVER_APP)
        return object.__new__(cls)

    def weights(self) -> Weights:
        """The initial weights (calling ``initial_weights`` if it is a function)."""
        w = self.initial_weights
        return w() if callable(w) else w


@dataclass
class ServeResult:
    """How a served run ended: final weights (read-only arrays), history, where its state lives."""

    weights: dict[str, Array]
    history: History
    run_dir: Path | None
