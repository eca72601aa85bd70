"""Private key files other users can read: warned of when they are loaded, as ssh does.

A key file is not refused for its mode (a container's secrets are often
mounted readable by all, and refusing them would stop a federation over a
setting): the warning names the file, its mode and the command that fixes it.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
from pathlib import Path

__all__ = ["warn_if_open"]

logger = logging.getLogger("covey")


def warn_if_open(path: str | Path, what: str) -> bool:
    """Warn when the key file ``path`` can be read or written by its group or by others.

    Skipped on Windows, whose permissions the mode bits do not describe.

    Args:
        path: The private key file.
        what: What it is, as named in the warning ("the server's private key").

    Returns:
        Whether it warned.
    """
    if os.name == "nt":  # pragma: no cover - POSIX modes only
        return False
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:  # read by the caller, which names any error
        return False
    if not mode & 0o077:
        return False
    verbs = [verb for verb, bits in (("read", 0o044), ("changed", 0o022)) if mode & bits]
    done = " and ".join(verbs) or "used"  # "used": execute bits only
    who = "other users" if mode & 0o007 else "its group"
    logger.warning(
        "%s %s can be %s by %s (mode %04o): anyone who reads it can pose as its owner; "
        "make it private with `chmod 600 %s`",
        what,
        path,
        done,
        who,
        mode,
        shlex.quote(str(path)),
    )
    return True
