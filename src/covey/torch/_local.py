"""The layers a :class:`~covey.torch.TorchClient` keeps to itself (FedBN, FedPer).

A personalised client trains every layer but keeps some of them local: its
``fit`` and ``evaluate`` load the global model except those entries, which
keep the client's own values (the model's as built, at first), and its update
for them is zero, so the
global model's values of them stay as they were (under FedAvg) and no
client's local values reach the server.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np

from covey.clients._roundstate import TrainState
from covey.clients._scaffold import ControlVariate
from covey.core._weights import Array, Weights, WeightsError
from covey.torch._weights import _tensors, _tied, to_weights

_FILE = "the local layers' file"
"""How errors name ``local_path``."""

__all__ = ["LocalLayers", "local_names"]


def local_names(model: Any, local: Iterable[Any], torch: Any) -> list[str]:
    """The ``state_dict`` names ``local`` picks, in the ``state_dict``'s order.

    Each item of ``local`` is an ``fnmatch`` pattern over the names (``"head.*"``)
    or a module class (``torch.nn.BatchNorm2d``), which picks every entry of the
    model's modules of that class.

    Raises:
        TypeError: ``local`` is one string (not a list of them), or an item is
            neither a string nor a module class.
        ValueError: an item picks no entry of the model's ``state_dict``, or a tensor
            listed under several names (tied weights) is local under some only.
    """
    if isinstance(local, str):
        raise TypeError(f"local must be a list of patterns or module classes: [{local!r}]")
    names = list(to_weights(model))
    picked: set[str] = set()
    for item in local:
        if isinstance(item, str):
            found = {n for n in names if fnmatchcase(n, item)}
        elif isinstance(item, type) and issubclass(item, torch.nn.Module):
            found = _of_class(model, item, names)
        else:
            raise TypeError(
                "local takes fnmatch patterns of state_dict names ('head.*') and module "
                f"classes (torch.nn.BatchNorm2d), got {type(item).__name__} {item!r:.60}"
            )
        if not found:
            raise ValueError(_picks_none(item, names) + _unsent(item, names, model))
        picked |= found
    for group in _tied(_tensors(model.state_dict(keep_vars=True), torch)):
        if len({n in picked for n in group}) > 1:
            raise ValueError(
                f"local picks {[n for n in group if n in picked]} but not "
                f"{[n for n in group if n not in picked]}, the same tensor (tied weights): "
                "keep all of its names local, or none"
            )
    return [n for n in names if n in picked]


def _picks_none(item: Any, names: list[str]) -> str:
    """Why ``item`` of ``local`` is refused: it picks no name; a module's name says its pattern."""
    module = f"{item.rstrip('.')}." if isinstance(item, str) else ""
    under = [n for n in names if module and n.startswith(module)]
    if under:  # 'head' names a module, whose entries are 'head.weight', 'head.bias'
        return (
            f"local entry {item!r} picks none of the model's state_dict names: it names a "
            f"module, whose entries are {', '.join(under[:4])}{', ...' if len(under) > 4 else ''}"
            f"; give {module + '*'!r} to keep them all local"
        )
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return (
        f"local entry {getattr(item, '__name__', item)!r} picks none of the model's "
        f"state_dict names ({shown})"
    )


def _unsent(item: Any, names: list[str], model: Any) -> str:
    """Why what ``item`` picks is no state_dict entry, when it picks state no client sends."""
    if isinstance(item, str):
        unsaved = [n for n, _ in model.named_buffers() if n not in names and fnmatchcase(n, item)]
        if unsaved:
            return (
                "; it picks buffers registered with persistent=False ("
                f"{', '.join(unsaved[:4])}{', ...' if len(unsaved) > 4 else ''}), which are "
                "not in the state_dict: no client sends them, so leave them out of local"
            )
    elif any(isinstance(m, item) for m in model.modules()):
        return (
            f"; the model's {item.__name__} layers hold no parameters nor persistent "
            "buffers, so no client sends anything of them: leave them out of local"
        )
    return ""


def _of_class(model: Any, cls: type, names: list[str]) -> set[str]:
    """The names of the entries that belong to ``model``'s modules of class ``cls``."""
    found: set[str] = set()
    for prefix, module in model.named_modules(remove_duplicate=False):  # a shared module too
        if isinstance(module, cls):
            start = f"{prefix}." if prefix else ""
            found |= {n for n in names if n.startswith(start)}
    return found


class LocalLayers:
    """The local entries of one client's model, and where they are kept between runs.

    Args:
        names: The local ``state_dict`` names (see :func:`local_names`).
        path: A file the entries after each of the client's last three fits are
            written to, read by a client built again (a restart, a resumed run);
            None keeps them in memory only (a round sent again to this object
            starts from them as well).
    """

    def __init__(self, names: list[str], path: str | os.PathLike[str] | None) -> None:
        if path is not None and not names:
            raise ValueError(
                f"local_path={str(path)!r} keeps the local layers, but local= names none: "
                "give local=[...] the layers to keep (patterns such as 'head.*', or module "
                "classes), or leave local_path out"
            )
        self.names = names
        self.path = None if path is None else Path(path)
        self._state: TrainState | _InMemory | None = None
        self._trained = 0  # the last round this object's fit trained; 0: none yet
        self._started = False
        self._initial: dict[str, Array] | None = None  # the local entries at the first task

    def merged(self, weights: Weights, model: Any, rnd: Any, fit: bool) -> Weights:
        """``weights`` with the local entries taken from the client instead.

        From the model, or from the values kept (in ``path``, else in memory) after the
        client's last round before this one (``fit``) or up to it (``evaluate``) when the
        model has none of its own yet or has trained past it (a round sent again). A client with no
        values of its own yet (its first task; a round sent again that was its first)
        takes the model's as it was at its first task, never the server's copy of
        them: no update moves that copy, but central DP noises it every round.
        """
        if not self.names:
            return weights
        first = not self._started
        if first:  # the model as built: the local layers' start, kept for a round sent again
            self._initial = self._copied(model)
        own: Weights | None = None
        if self._state is None:
            if self.path is None:
                self._state = _InMemory()
            else:
                self._state = TrainState(self.path)
                self._state.claim(_FILE, "local_path")  # one file given to several: refused
        upto = self._round(rnd) + (0 if fit else 1)  # the stored rounds below it
        if first or upto <= self._trained:
            own = self._stored(self._state, upto, weights)
            if own is None:  # none before it: the start
                own = self._initial
        if own is None:
            own = self._copied(model)
        self._started = True
        return {**weights, **{n: own[n] for n in self.names}}

    def _round(self, rnd: Any) -> int:
        """The task's round: the config's, else the one after the newest kept."""
        if isinstance(rnd, int | np.integer) and not isinstance(rnd, bool):
            return int(rnd)
        return self._state.next_round() if self._state is not None else 1

    def _copied(self, model: Any) -> dict[str, Array]:
        """The model's local entries, copied (the rest of the model is not)."""
        views = to_weights(model)
        return {n: np.array(views[n], order="C") for n in self.names}

    def _stored(
        self, state: TrainState | _InMemory, before: int, weights: Weights
    ) -> Weights | None:
        kept = state.before(before)
        if kept is not None and sorted(kept) != sorted(self.names):
            raise WeightsError(
                f"the local layers' file {self.path} holds {sorted(kept)}, the client "
                f"keeps {sorted(self.names)} local: give each client a file of its own, "
                "or delete it to start them afresh from the model"
            )
        for name, value in (kept or {}).items():
            if value.shape != np.shape(weights[name]):
                raise WeightsError(
                    f"the local layers' file {self.path} holds {name!r} of shape "
                    f"{value.shape}, the model's is {np.shape(weights[name])}: it is another "
                    "model's; delete it to start the local layers afresh from the model"
                )
        return kept

    def kept_control(self, gradient: dict[str, Array], control: ControlVariate) -> Weights:
        """SCAFFOLD's new ``c_i`` from the fit's mean ``gradient``, the local entries' kept.

        The local layers take no correction, so their ``c_i`` stays as it was and the
        client sends no change of it: the server's ``c`` of them stays zero.
        """
        old = control.value
        if not self.names or old is None:
            return gradient
        return {**gradient, **{n: old[n] for n in self.names}}

    def save(self, model: Any, rnd: Any) -> None:
        """Keep the local entries after round ``rnd``'s fit (in ``path``, if there is one)."""
        if self._state is None:
            return
        r = self._round(rnd)
        if isinstance(self._state, TrainState):  # its first task's client, if opened outside one
            self._state.claim(_FILE, "local_path")
        self._state.keep(r, self._copied(model))
        self._trained = r


class _InMemory:
    """The local entries after the client's last three fits, kept in memory (no ``local_path``).

    A round sent again to the client as it is built (a restarted server's) starts
    from the entries before it, as with a file; a client built again has none.
    """

    def __init__(self) -> None:
        self.slots: list[tuple[int, dict[str, Array]]] = []  # newest first
        self._dropped = False  # whether the entries after a fit were let go

    def next_round(self) -> int:
        """The round after the newest kept (1 if none): a fit whose config names no round."""
        return self.slots[0][0] + 1 if self.slots else 1

    def before(self, rnd: int) -> dict[str, Array] | None:
        """The entries after the client's latest round before ``rnd`` (None: the start).

        Raises:
            ValueError: the client has trained in three rounds since ``rnd``.
        """
        for made, arrays in self.slots:
            if made < rnd:
                return arrays
        if not self._dropped:  # the oldest kept is the client's first round
            return None
        raise ValueError(
            f"round {rnd} was sent again after the client trained its local layers in "
            f"rounds {[made for made, _ in self.slots]}, and it keeps those before its last "
            f"{_KEPT} rounds only"
        )

    def keep(self, rnd: int, arrays: dict[str, Array]) -> None:
        """Keep the entries after round ``rnd`` (replacing those of a later or equal round)."""
        older = [(made, kept) for made, kept in self.slots if made < rnd]
        self._dropped = self._dropped or len(older) >= _KEPT
        self.slots = [(rnd, arrays), *older[: _KEPT - 1]]


_KEPT = 3
"""The fits whose local entries a client keeps, in memory as in ``local_path``'s file."""
