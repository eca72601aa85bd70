"""Reading a project's ``pyproject.toml`` and checking its settings and ``--set`` overrides."""

from __future__ import annotations

import difflib
import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

from covey.core._files import MAX_SETTINGS_BYTES, read_given
from covey.deploy._cli_errors import fail

__all__ = ["project_above", "read_project", "same_kind", "toml_key", "unknown_keys"]


def _kind(value: Any) -> str | None:
    """What kind of setting ``value`` is: number, true or false, text, list, table; or None."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "table"
    return "text" if isinstance(value, str) else None


def same_kind(item: str, kept: Any, value: Any) -> None:
    """Refuse ``--set KEY=VALUE`` of an app setting whose VALUE is of another kind than its table's.

    ``--set lr=0,1`` (a comma) is text where ``lr = 0.5`` is a number: the app would
    fail in every client once the run started. A number for a number passes, whole or not.
    """
    was, now = _kind(kept), _kind(value)
    if was is None or now is None or was == now:
        return
    key = item.partition("=")[0].strip()
    a = "" if was in ("true or false", "text") else "a "
    an = "" if now in ("true or false", "text") else "a "
    fail(
        f"--set {item}: {key} is {a}{was} in [tool.covey.config] ({json.dumps(kept)}), "
        f"not {an}{now}; give {a}{was}, e.g. --set {key}={json.dumps(kept)}, or change its "
        "kind in pyproject.toml first"
    )


def toml_key(key: str) -> str:
    """A setting's name as pyproject.toml spells it (``runs_dir`` -> ``runs-dir``)."""
    return key.replace("_", "-")


def unknown_keys(
    table: dict[str, Any], known: set[str], where: str, tables: tuple[str, ...] = ()
) -> None:
    """Refuse a key of ``table`` (``where``) not in ``known``, naming the closest one.

    ``tables`` are the tables ``where`` holds (``config`` and ``federations`` of
    ``[tool.covey]``): a misspelled one (``[tool.covey.confg]``) is named with them.
    """
    unknown = sorted(toml_key(k) for k in set(table) - known)
    if unknown:
        names = sorted(toml_key(k) for k in known)
        spelled = {t.partition(".")[0]: f"{where[:-1]}.{t}]" for t in tables}
        near = difflib.get_close_matches(unknown[0], [*names, *spelled], n=1)
        hint = f" (did you mean {spelled.get(near[0], near[0])}?)" if near else ""
        also = f"; tables: {', '.join(spelled.values())}" if spelled else ""
        fail(
            f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {where} "
            f"of pyproject.toml{hint}; known: {', '.join(names)}{also}"
        )


def read_project(project: Path) -> dict[str, Any]:
    """The ``[tool.covey]`` table of ``project/pyproject.toml``."""
    path = project / "pyproject.toml"
    try:  # a named pipe no process writes is refused, not waited on
        raw = read_given(path, MAX_SETTINGS_BYTES)
        if len(raw) > MAX_SETTINGS_BYTES:
            fail(f"{path}: larger than {MAX_SETTINGS_BYTES:,} bytes; not a project's settings")
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        above = project_above(project)
        where = (
            f"; this folder is inside the project {above}: run `covey run "
            f"{shlex.quote(str(above))}`, or run `covey run` there"
            if above is not None
            else "; run in a project made by `covey new NAME`"
        )
        fail(f"no pyproject.toml in {project}{where}")
    except OSError as exc:
        fail(f"{path}: cannot read it ({exc.strerror or exc})")
    except tomllib.TOMLDecodeError as exc:
        fail(f"{path}: cannot read it ({exc})")
    except UnicodeDecodeError as exc:  # a binary file, another encoding: a mistake, exit 2
        fail(f"{path}: cannot read it (byte {exc.start} is not UTF-8 text); a TOML file is UTF-8")
    table = data.get("tool", {}).get("covey")
    if not isinstance(table, dict):
        fail(f"{path} has no [tool.covey] table; see a project made by `covey new NAME`")
    return dict(table)


def project_above(folder: Path) -> Path | None:
    """The nearest folder above ``folder`` whose ``pyproject.toml`` has a ``[tool.covey]``."""
    for parent in folder.resolve().parents:
        text = parent / "pyproject.toml"
        try:
            if text.is_file() and "[tool.covey" in text.read_text(encoding="utf-8"):
                return parent
        except (OSError, UnicodeError):
            continue
    return None
