"""A safetensors file's metadata written in one order, so the same weights make the same bytes.

safetensors keeps a file's metadata in a hash map whose order changes from
one map to the next: the same weights of the same round, written twice, made
files of other bytes (and SHA-256) whenever the metadata had two keys or more.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

__all__ = ["sort_metadata"]


def sort_metadata(path: Path) -> None:
    """Rewrite the header of the safetensors file at ``path`` with its metadata's keys sorted.

    The header is written over in place at its own length; one that would not
    come out as long is left as it is.
    """
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        raw = f.read(length)
        header = json.loads(raw)
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict):
            return
        header["__metadata__"] = dict(sorted(metadata.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length or json.loads(text) != json.loads(raw):
            return
        f.seek(8)
        f.write(text.ljust(length, b" "))
