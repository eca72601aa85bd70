"""The version of covey running here, as clients, servers and run folders state it."""

from __future__ import annotations

__all__ = ["covey_version"]


def covey_version() -> str:
    """This covey's version (``covey.__version__``; ``0.0.0`` from a bare source tree)."""
    from covey import __version__

    return __version__
