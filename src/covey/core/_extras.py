"""The optional extras: which one installs each optional library, and the error naming it.

``pip install covey`` brings the NumPy core, simulation and deployment; the
integrations need an extra (``pip install 'covey[analytics]'``). A feature whose
library is missing raises :class:`MissingExtraError`, one line that names the
extra, instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Final

EXTRAS: Final[dict[str, str]] = {
    "torch": "torch",
    "opacus": "torch",
    "xgboost": "xgboost",
    "ray": "ray",
    "starlette": "dashboard",
    "uvicorn": "dashboard",
    "plotly": "dashboard",
    "duckdb": "analytics",
    "sqlglot": "analytics",
    "pandas": "analytics",
    "pyarrow": "analytics",
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
}
"""Each optional library (top-level module) and the extra of covey that installs it."""


class MissingExtraError(ImportError):
    """A feature needs a library that one of covey's extras installs, and it is missing."""


MissingExtraError.__module__ = "covey.core"  # its public home, as tracebacks show it


def extra_for(exc: BaseException) -> str | None:
    """The extra that installs the library whose absence raised ``exc``, or None.

    Args:
        exc: An exception; only a ``ModuleNotFoundError`` for an optional library counts.

    Returns:
        The extra's name (``"analytics"``), or None when ``exc`` is something else.

    Example:
        >>> extra_for(ModuleNotFoundError("No module named 'duckdb'", name="duckdb"))
        'analytics'
    """
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    return EXTRAS.get(exc.name.split(".")[0])


def missing_extra(feature: str, exc: ModuleNotFoundError, extra: str) -> MissingExtraError:
    """The error saying ``feature`` needs ``extra``, whose library ``exc`` found missing.

    Args:
        feature: What the user asked for (``"covey.analytics.Site"``).
        exc: The ``ModuleNotFoundError`` of the missing library.
        extra: The extra that installs it.

    Returns:
        The error to raise (``from exc``).
    """
    return MissingExtraError(
        f"{feature} needs the {extra} extra ({exc.name} is not installed): "
        f"pip install 'covey[{extra}]'"
    )


def import_feature(module: str, feature: str) -> ModuleType:
    """Import ``module``; if an optional library it needs is missing, say which extra to install.

    Args:
        module: The covey module to import (``"covey.analytics._site"``).
        feature: What the user asked for, named in the error (``"covey.analytics.Site"``).

    Returns:
        The module.

    Raises:
        MissingExtraError: an optional library ``module`` imports is not installed.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        extra = extra_for(exc)
        if extra is None:
            raise
        raise missing_extra(feature, exc, extra) from exc
