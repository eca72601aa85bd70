"""``dp_accounting``, loaded on first use.

Importing ``dp_accounting`` pulls in much of SciPy, about two thirds of a second
on the project's machine: more than the rest of covey together. Every covey
module that needs it imports it from here, so ``import covey`` stays fast and a
run that never accounts a budget never pays for it.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any


class LazyModule:
    """A module imported by a plain ``import`` the first time one of its attributes is read.

    Two threads reading the first attribute at once both get the whole module:
    the import runs under Python's import lock. (``importlib.util.LazyLoader``
    does not ensure that before Python 3.13: the second thread could read the
    module half executed, ``AttributeError: module 'dp_accounting' has no
    attribute 'LaplaceDpEvent'`` in two concurrent DP queries.)

    Args:
        name: An importable module name.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None
        self._lock = threading.Lock()

    def __getattr__(self, attr: str) -> Any:
        """The module's attribute ``attr``, the module imported first if need be."""
        module = self._module
        if module is None:
            with self._lock:
                if self._module is None:
                    self._module = importlib.import_module(self._name)
                module = self._module
        return getattr(module, attr)

    def __repr__(self) -> str:
        """``<lazy module 'name'>``, and whether it is loaded yet."""
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r}, {state}>"


dpa: Any = LazyModule("dp_accounting")
