"""Public names of a package loaded on first use (PEP 562), so ``import covey`` stays fast.

A package imports its public names under ``if TYPE_CHECKING:`` (what type
checkers, IDEs and the API reference see), keeps its ``__all__``, and installs
the two module hooks this builds::

    if not TYPE_CHECKING:
        __getattr__, __dir__ = lazy_exports(__name__, {"serve": "_server"})

``package.serve`` then imports ``package._server`` the first time it is read,
and ``from package import serve``, ``from package import *`` and
``dir(package)`` work as if it had been imported at once. Nothing may count on
such a module having been imported for a side effect: the built-in task kinds
are loaded by the client runtime itself (``covey.clients._client._REGISTERED_BY``).
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_exports", "public_dir"]


def lazy_exports(
    package: str, where: Mapping[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose public names load on first use.

    Args:
        package: The package's ``__name__``.
        where: Each lazily loaded name and the module defining it, relative to
            ``package`` (``{"serve": "_server"}``) or whole (``"covey.core._weights"``).
        submodules: Public submodules, each loaded when first read as an attribute.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package's namespace.
    """
    namespace = sys.modules[package].__dict__
    modules = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in modules:
            value: Any = importlib.import_module(f"{package}.{name}")
        elif name in where:
            module = where[name]
            if not module.startswith("covey."):  # relative to the package
                module = f"{package}.{module}"
            value = getattr(importlib.import_module(module), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value  # later reads find it without this hook
        return value

    return __getattr__, public_dir(package, set(where) | modules)


def public_dir(package: str, names: Iterable[str] = ()) -> Callable[[], list[str]]:
    """The ``__dir__`` of a package whose public names may not be imported yet.

    It lists what a user may write after ``package.`` (``covey.<TAB>``): the
    names in ``__all__`` and ``names``, loaded or not, the public submodules
    imported so far and the dunders; not the helpers the package imports for
    itself (``Any``, ``TYPE_CHECKING``, ``importlib``).

    Args:
        package: The package's ``__name__``.
        names: Public names beyond ``__all__`` (lazily loaded submodules, say).
    """
    namespace = sys.modules[package].__dict__
    more = frozenset(names)

    def __dir__() -> list[str]:
        public = set(namespace.get("__all__", ())) | more
        shown = {
            n
            for n, v in namespace.items()
            if n.startswith("__") or n in public or (n[0] != "_" and _submodule(v, package))
        }
        return sorted(shown | public)

    return __dir__


def _submodule(value: Any, package: str) -> bool:
    """Whether ``value`` is a module of ``package`` (set as its attribute once imported)."""
    return isinstance(value, types.ModuleType) and value.__name__.startswith(f"{package}.")
