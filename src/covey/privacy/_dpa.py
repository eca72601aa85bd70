"""``dp_accounting``, loaded on first use.

Importing ``dp_accounting`` pulls in much of SciPy, about two thirds of a second
on the project's machine: more than the rest of covey together. Every covey
module that needs it imports it from here, so ``import covey`` stays fast and a
run that never accounts a budget never pays for it.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """``name`` as a module whose code runs when one of its attributes is first read.

    Args:
        name: An importable module name.

    Returns:
        The module (already the real one if something imported it before).
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


dpa = lazy_module("dp_accounting")
