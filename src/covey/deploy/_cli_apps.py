"""The apps the command line names (``--app MODULE:OBJECT``), imported; errors name the flag."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from covey.deploy._cli_errors import fail

__all__ = ["load_object", "required_params"]


def _shadowed(missing: str) -> str:
    """Where the package holding ``missing`` came from, when a folder here has its name."""
    parent = missing.rpartition(".")[0]
    module = sys.modules.get(parent)
    where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), None)
    if not parent or where is None:
        return ""
    local = Path.cwd().joinpath(*parent.split("."))
    if not local.is_dir() or Path(where).resolve().is_relative_to(local.resolve()):
        return ""
    return f" ({parent!r} is {where}, not the folder {parent}/ here: rename that folder)"


def load_object(spec: str, flag: str = "--app", example: str = "myfed:server_app") -> Any:
    """Import ``pkg.module:attribute`` (the current folder is importable).

    Args:
        spec: ``MODULE:OBJECT``, e.g. ``myfed:server_app``.
        flag: The flag or setting ``spec`` came from, named in errors.
        example: A ``spec`` of the right kind, shown when ``spec`` is malformed.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        # A --config file's key ("server.app in fed.toml") is shown an example value alone.
        example = repr(example) if " in " in flag else f"{flag} {example}"
        fail(f"{flag} {spec!r}: expected MODULE:OBJECT, e.g. {example}")
    if module_name.startswith(".") or "/" in module_name or "\\" in module_name:
        # A path (./myfed, pkg/app.py) or a relative name (.app): import_module raised TypeError.
        fail(
            f"{flag} {spec}: MODULE is a module's dotted name, not a path or a relative name"
            f"{_dotted_example(module_name, attr)}; run from the folder holding it or add "
            "that folder to PYTHONPATH"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:  # a mistake in a file given: named with its line, exit 2
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else module_name
        fail(f"{flag} {spec}: {where}: {exc.msg} ({type(exc).__name__}); fix that line")
    except ImportError as exc:
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if missing is not None and (module_name + ".").startswith(missing + "."):
            fail(
                f"{flag} {spec}: cannot import {module_name!r} ({exc}); run from the folder "
                f"holding it or add that folder to PYTHONPATH{_shadowed(missing)}"
            )
        # The module is there; an import inside it failed (a package not installed here).
        fail(
            f"{flag} {spec}: {module_name!r} was found, but an import in it failed{_where(exc)}: "
            f"{exc}; install what it needs here, or fix that import"
        )
    except Exception as exc:  # the module's own code raised as it was imported
        exc.add_note(f"importing {module_name} for {flag} {spec}{_where(exc)}")
        raise
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            fail(
                f"{flag} {spec}: module {module_name!r} has no attribute {attr!r}"
                + (
                    f"; did you mean {module_name}:{attr.replace(part, close[0], 1)}?"
                    if close
                    else ""
                )
            )
        obj = getattr(obj, part)
    return obj


def _dotted_example(path: str, attr: str) -> str:
    """``, e.g. pkg.app:OBJECT`` for a MODULE given as a path (``pkg/app.py``), or nothing."""
    path = path.replace("\\", "/")
    parts = [part.strip(".") for part in path.removesuffix(".py").split("/")]
    parts = [part for part in parts if part]
    if path.startswith("/"):  # a folder of the machine's: its module is the file's name
        parts = parts[-1:]
    return f", e.g. {'.'.join(parts)}:{attr}" if parts else ""


def _where(exc: BaseException) -> str:
    """`` (at FILE:LINE)``: the last line of the user's code that ``exc`` passed through."""
    tb, at = exc.__traceback__, ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith("<") and "importlib" not in name:
            at = f" (at {name}:{tb.tb_lineno})"
        tb = tb.tb_next
    return at


def required_params(fn: Any) -> int:
    """How many arguments ``fn`` needs (those without a default); -1 if unknown."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return -1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(
        1
        for p in signature.parameters.values()
        if p.kind in kinds and p.default is inspect.Parameter.empty
    )
