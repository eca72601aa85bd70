"""What making a new run folder created, so that a failed creation takes back exactly that.

A run folder whose ``run.sqlite`` cannot be made (a path too deep for SQLite, a
disk that fills up) must not stay behind half made: its ``run.lock`` and empty
``weights/`` would show as a broken run, and refuse a second try at the same
path. What existed before (a folder the user made for the run, say) is kept.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from covey.server._readcopy import LOCK_NAME
from covey.server._roundfiles import WEIGHTS_DIR
from covey.server._rundb import DB_NAME

__all__ = ["NewRunFolder"]


class NewRunFolder:
    """The run folder ``path`` as it was before a run is created in it.

    Args:
        path: The run folder; it and the folders above it may be missing.

    Raises:
        FileExistsError: ``path`` holds a run already (or weights files), or is a file.
    """

    def __init__(self, path: Path) -> None:
        """Note which of ``path``, the folders above it and its run files are missing."""
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"cannot create a run in {path}: it exists and is a file")
        if (path / DB_NAME).exists():
            raise FileExistsError(
                f"a covey run already exists in {path}; resume it with RunStore.open "
                "or choose another directory"
            )
        weights_dir = path / WEIGHTS_DIR
        if weights_dir.is_dir() and any(weights_dir.glob("*.safetensors")):
            raise FileExistsError(
                f"cannot create a run in {path}: {weights_dir} already holds weights files"
            )
        self._path = path
        self._folders: list[Path] = []  # made by mkdir(parents=True), deepest first
        folder = path
        while not os.path.lexists(folder) and folder.parent != folder:
            self._folders.append(folder)
            folder = folder.parent
        self._missing = [
            name for name in (LOCK_NAME, WEIGHTS_DIR) if not os.path.lexists(path / name)
        ]

    def take_back(self, *, lock: bool, weights: bool) -> None:
        """Remove what was made since, if still as made (an empty folder, the lock file).

        Folders go only if empty, so a file another process put there is kept.
        Never raises: the error that stopped the creation is the one to report.

        Args:
            lock: This process made and holds ``run.lock``, if it was missing.
            weights: This process made ``weights/``, if it was missing.
        """
        if lock and LOCK_NAME in self._missing:
            with contextlib.suppress(OSError):
                (self._path / LOCK_NAME).unlink()
        made = [self._path / WEIGHTS_DIR] if weights and WEIGHTS_DIR in self._missing else []
        for folder in made + self._folders:
            try:
                folder.rmdir()
            except OSError:
                return  # the folders above it are not empty either
