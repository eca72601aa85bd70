"""``covey.deploy.ServerApp`` and ``ServeResult``: what a server runs, and how its run ended."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covey.compress import Scheme
from covey.core._history import History
from covey.core._signature import InitSignature
from covey.core._weights import Array, Weights, made
from covey.server._base import EvaluateFn
from covey.strategies._names import FLOWER_SERVER_APP, unknown_options
from covey.strategies._strategy import Strategy

__all__ = ["ServeResult", "ServerApp"]

_OPTIONS = ("strategy", "initial_weights", "rounds", "evaluate_fn", "seed", "compression", "main")
_ROUND_LOOP = ("strategy", "initial_weights", "evaluate_fn", "compression")
"""What covey's round loop takes, which a ServerApp running a ``main`` of its own has no use for."""


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
        main: A server loop of the app's own, run instead of covey's rounds (then give no
            ``strategy``, ``initial_weights``, ``evaluate_fn`` nor ``compression``): a
            function called with the listening server's transport (a
            :class:`~covey.transport.grpc.GrpcServerTransport`), which waits for its
            clients and sends them tasks of its kinds (see ``docs/custom-tasks.md``).
            The server says goodbye to the clients once it returns.
    """

    strategy: Strategy | None = None  # given unless main is
    initial_weights: Weights | Callable[[], Weights] | None = None
    rounds: int = 3
    evaluate_fn: EvaluateFn | None = None
    seed: int = 0
    compression: Scheme | str | None = None
    main: Callable[[Any], Any] | None = None
    __signature__ = InitSignature()  # help(ServerApp) shows the fields, not __new__'s

    def __new__(cls, *args: Any, **kwargs: Any) -> ServerApp:
        # Flower's ServerApp(server_fn=...) and ServerApp(config=ServerConfig(...)) are
        # refused naming covey's options, rather than with the bare unexpected keyword.
        if unknown := [name for name in kwargs if name not in _OPTIONS]:
            raise unknown_options(cls.__name__, unknown, _OPTIONS, FLOWER_SERVER_APP)
        return object.__new__(cls)

    def __post_init__(self) -> None:
        problem = main_problem(self)
        if problem is not None:
            raise TypeError(f"ServerApp: {problem}")

    def weights(self) -> Weights:
        """The initial weights (calling ``initial_weights`` if it is a function)."""
        w = self.initial_weights
        if w is None:
            raise ValueError("this ServerApp runs its own main: it has no initial_weights")
        return made(w)  # what a function raises is noted with its name


def main_problem(app: ServerApp) -> str | None:
    """What is wrong with ``app``'s choice of loop (covey's rounds or its ``main``), if anything."""
    if app.main is None:
        missing = [n for n in _ROUND_LOOP[:2] if getattr(app, n) is None]
        if missing:
            return (
                f"give {' and '.join(f'{n}=' for n in missing)} for covey's rounds, or main=, "
                "a server loop of the app's own"
            )
        return None
    main: Any = app.main  # a dataclass field holds whatever it was given
    if not callable(main):
        return (
            f"main= must be a function taking the server's transport, got "
            f"{type(main).__name__} {main!r:.80}"
        )
    try:
        inspect.signature(main).bind(None)
    except ValueError:  # no signature to read (a builtin): it is called as it is
        pass
    except TypeError as exc:
        return (
            f"main= {getattr(main, '__qualname__', main)!r} cannot be called with one "
            f"argument, the server's transport ({exc})"
        )
    given = [n for n in _ROUND_LOOP if getattr(app, n) is not None]
    if given:
        return (
            f"main= runs the app's own loop, which takes no {', '.join(f'{n}=' for n in given)} "
            "(those are for covey's rounds): give main= or a strategy, not both"
        )
    return None


@dataclass
class ServeResult:
    """How a served run ended: final weights (read-only arrays), history, where its state lives.

    Attributes:
        weights: The global model after the last round, by array name (read-only arrays).
        history: The run's history (:class:`~covey.History`).
        run_dir: The run folder holding its state (``serve(run_dir=...)``); None when
            the run kept none.
    """

    weights: dict[str, Array]
    history: History
    run_dir: Path | None
