"""Folders whose absolute path is exactly so many bytes long (SQLite refuses 512 and over)."""

from __future__ import annotations

import os
from pathlib import Path


def deep_folder(root: Path, length: int) -> Path:
    """Make a folder under ``root`` whose absolute path is ``length`` bytes long."""
    folder = root.absolute()
    while (left := length - len(os.fsencode(folder))) > 0:
        name = min(200, left - 1)  # a separator and the name
        if left - 1 - name == 1:  # the next step would be a separator and no name
            name -= 1
        assert name > 0, f"{root} is too long for a path of {length} bytes"
        folder /= "d" * name
    folder.mkdir(parents=True)
    assert len(os.fsencode(folder)) == length
    return folder
