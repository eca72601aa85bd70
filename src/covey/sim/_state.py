"""Per-client state on disk: a federation of 100,000 clients needs memory for the sampled few.

A client of a large simulation is built from its id when it is sampled and
dropped after (``simulate(client_cache=0)``). What it must remember between
rounds (a counter, a personalised layer, an optimizer's moments) goes into a
:class:`ClientState` store: one small file per client, written atomically in
covey's checksummed codec (never pickle), read back only when that client runs.
Every backend's workers see the same folder, so it works inline, in worker
processes and in Ray actors on one machine (on a cluster, give a shared folder).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from covey.core._codec import CodecError, decode, encode
from covey.core._files import atomic_write
from covey.core._weights import Array, WeightsError


class ClientState:
    """Named arrays per client id, one file each under ``directory``.

    Args:
        directory: The folder of the store (created if missing).

    Example:
        >>> import tempfile, numpy as np
        >>> store = ClientState(tempfile.mkdtemp())
        >>> store.load(7) is None
        True
        >>> store.save(7, {"count": np.array(3)})
        >>> int(store.load(7)["count"])
        3
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, cid: int) -> Path:
        """The file of client ``cid``.

        Args:
            cid: The client's id, an int >= 0 (anything else raises ``ValueError``).
        """
        if isinstance(cid, bool) or not isinstance(cid, int | np.integer) or cid < 0:
            raise ValueError(f"a client id is a non-negative int, got {cid!r}")
        return self.directory / f"{int(cid)}.covey"

    def load(self, cid: int) -> dict[str, Array] | None:
        """Client ``cid``'s arrays (writable copies), or None if it has saved nothing.

        Args:
            cid: The client's id, an int >= 0.

        Raises:
            covey.CodecError: if the file is corrupt or truncated.
        """
        path = self.path(cid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            arrays = decode(data)
        except CodecError as exc:
            raise CodecError(
                f"client {cid}'s state file {path} is damaged ({exc}); delete it to start "
                "that client's state afresh"
            ) from exc
        return {name: np.array(value) for name, value in arrays.items()}

    def save(self, cid: int, arrays: Mapping[str, Array | np.generic[Any]]) -> None:
        """Replace client ``cid``'s arrays (atomically: a reader sees the old or the new).

        A NumPy scalar (``np.int64(3)``, what ``state["n"] + 1`` gives for a 0-d
        array) is kept as the 0-d array holding it, as a client's weights take it.

        Args:
            cid: The client's id, an int >= 0.
            arrays: The arrays to keep, by name (they replace all the saved ones).

        Raises:
            WeightsError: ``arrays`` is no mapping of names to arrays, named with the client.
        """
        path = self.path(cid)
        given: Any = arrays  # typed a mapping, but called with what a client has
        if isinstance(given, Mapping):
            given = {k: np.asarray(v) if isinstance(v, np.generic) else v for k, v in given.items()}
        try:
            data = bytes(encode(given))
        except WeightsError as exc:
            raise WeightsError(f"client {cid}'s state: {exc}") from None
        atomic_write(path, data)

    def __contains__(self, cid: object) -> bool:
        """Whether client ``cid`` has saved arrays (False for anything that is no client id)."""
        if isinstance(cid, bool) or not isinstance(cid, int | np.integer) or cid < 0:
            return False
        return self.path(int(cid)).exists()

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.covey"))
