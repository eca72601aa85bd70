"""How many objects the permanent generation held when covey was imported.

CPython 3.12 starts with objects of its own there (``gc.get_freeze_count()``
is a few hundred before any code runs); 3.11 and 3.13 start with none. Only
objects frozen beyond these are taken for the application's own (a pre-fork
server keeping its pages shared with its workers): :mod:`covey.sim._frozen`
and the process backend leave those as they are, and freeze the rest
themselves.
"""

from __future__ import annotations

import gc

#: The permanent generation's size at ``import covey``: the interpreter's own objects.
AT_IMPORT = gc.get_freeze_count()


def others_frozen() -> bool:
    """Whether objects beyond the interpreter's own are frozen (by the application, or a run)."""
    return gc.get_freeze_count() > AT_IMPORT
