"""``InitSignature``: a class that checks its arguments in ``__new__`` shows its ``__init__``'s.

``inspect.signature`` (and so ``help()``, notebooks' call tips and editors that
ask the running interpreter) reads a class's ``__new__`` before its
``__init__``; a ``__new__(cls, *args, **kwargs)`` that only refuses wrong
arguments early would hide every real one behind ``(*args, **kwargs)``.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["InitSignature"]


class InitSignature:
    """A class attribute ``__signature__``: the owner's ``__init__`` without ``self``.

    Read from the class each time, so a subclass with its own ``__init__`` (or
    its own dataclass fields) shows its own arguments.
    """

    def __get__(self, instance: object, owner: type | None = None) -> inspect.Signature:
        cls: Any = type(instance) if owner is None else owner
        init = inspect.signature(cls.__init__)
        return init.replace(parameters=list(init.parameters.values())[1:])
