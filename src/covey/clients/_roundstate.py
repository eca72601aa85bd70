"""State a client keeps on disk for its last three rounds, so a round sent again starts alike.

A run's checkpoint of round r is written while round r + 1 trains: a kill then
resumes from round r - 1 and sends round r again to a client that may have
trained r + 1 already. Keeping the state after each of the client's last three
rounds lets such a round start from the state before it, as the first time.
Kept in covey's checksummed codec (never pickle).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from covey.clients._current import current_task
from covey.core._codec import CodecError, decode, encode
from covey.core._files import atomic_write, read_regular
from covey.core._weights import Array, WeightsError

__all__ = ["TrainState", "damaged"]


def damaged(path: Path, why: str) -> ValueError:
    return ValueError(
        f"the training state in {path} {why}: it is not this client's (another model's, or "
        "damaged); delete it to start the client's state afresh"
    )


_SLOTS = ("a", "b", "c")  # newest first: a kill in round r + 1 may resume from r - 1


class TrainState:
    """The training state after a client's last three rounds, in ``path``.

    :attr:`owner`, when set, is written beside it: the id of the client whose state
    it is (None: not known, as in a file of an earlier version).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.slots: list[tuple[int, dict[str, Array]]] = []  # newest first
        self.owner: int | None = None
        if self.path.exists():
            try:
                stored = decode(read_regular(self.path))
            except CodecError as exc:
                raise damaged(self.path, f"cannot be read ({exc})") from None
            owner = stored.get("owner")
            if owner is not None and (owner.shape or owner.dtype.kind not in ("i", "u")):
                raise damaged(self.path, f"holds owner as {owner.dtype}{owner.shape}")
            self.owner = None if owner is None else int(owner)
            for slot in _SLOTS:
                made = stored.get(f"{slot}/round")
                if made is not None and (made.shape or made.dtype.kind not in ("i", "u")):
                    raise damaged(self.path, f"holds {slot}/round as {made.dtype}{made.shape}")
                if made is not None:
                    prefix = f"{slot}/"
                    arrays = {
                        k[len(prefix) :]: np.array(v)
                        for k, v in stored.items()
                        if k.startswith(prefix) and k != f"{slot}/round"
                    }
                    self.slots.append((int(stored[f"{slot}/round"]), arrays))

    def claim(self, what: str, argument: str) -> None:
        """Refuse the file if another client wrote it (one file given to several clients).

        The owner is the id the runtime runs the task for (:func:`current_task`): a
        simulated client's ``cid``, a deployed one's id. It is kept with the next
        state; a call outside a task checks and claims nothing.

        Args:
            what: How the error names the file ("the local layers' file").
            argument: The client's argument that names it (``"local_path"``).
        """
        task = current_task()
        if task is None:
            return
        if self.owner is not None and self.owner != task.cid:
            raise WeightsError(
                f"{what} {self.path} is client {self.owner}'s, not client {task.cid}'s: give "
                f"each client a file of its own, e.g. {argument}=folder / f'{{cid}}.covey', "
                "or delete it if it is left from another federation (a deployed client keeps "
                "its id when restarted under the same name: --name, or its certificate's)"
            )
        self.owner = task.cid

    def next_round(self) -> int:
        """The round after the newest kept (1 if none): a fit whose config names no round."""
        return self.slots[0][0] + 1 if self.slots else 1

    def before(self, rnd: int) -> dict[str, Array] | None:
        """The state after the client's latest round before ``rnd`` (None: it has none)."""
        for made, arrays in self.slots:
            if made < rnd:
                return arrays
        if 0 < len(self.slots) < len(_SLOTS) and self.slots[-1][0] == rnd:
            # None dropped yet, so the oldest kept is the client's first round: sent
            # again (a kill while its checkpoint was written), it had no state before it
            return None
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
        self.slots = [(rnd, arrays), *older[: len(_SLOTS) - 1]]
        data: dict[str, Array] = {}
        if self.owner is not None:
            data["owner"] = np.asarray(self.owner, dtype=np.int64)
        for slot, (made, kept) in zip(_SLOTS, self.slots, strict=False):
            data[f"{slot}/round"] = np.asarray(made)
            data.update({f"{slot}/{k}": v for k, v in kept.items()})
        atomic_write(self.path, bytes(encode(data)))
