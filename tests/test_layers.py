"""The architecture holds: every import inside covey points down the layer order.

The order is written once, in ``docs/architecture.md`` (the numbered list under
"The layers"), and read from there, so the document and the check cannot drift.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "covey"
DOC = ROOT / "docs" / "architecture.md"


def layer_order() -> dict[str, int]:
    """Map each top-level covey module or package to its layer's rank (0 = bottom)."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    ranks: dict[str, int] = {}
    for line in section.splitlines():
        match = re.match(r"^(\d+)\. ", line)
        if match:
            for name in re.findall(r"\*\*`covey\.(\w+)`\*\*", line):
                ranks[name] = int(match.group(1))
    return ranks


def _owner(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "covey" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module == "covey":  # `from covey import sim` names a layer
                found.extend((node.lineno, f"covey.{alias.name}") for alias in node.names)
    return found


def _source_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "_pb2" not in p.name)


def test_the_document_ranks_every_top_level_module() -> None:
    ranks = layer_order()
    assert ranks, "docs/architecture.md lists no layers"
    present = {p.stem if p.is_file() else p.name for p in SRC.iterdir()}
    present = {name for name in present if not name.startswith("__") and name != "py"}
    present.discard("py.typed")
    missing = sorted(present - set(ranks))
    assert not missing, f"docs/architecture.md does not place these in a layer: {missing}"


def violations(path: Path, here: str, package: str) -> list[str]:
    """Every import in ``path`` (layer ``here``, module ``package``) that points up."""
    ranks = layer_order()
    mine = ranks[here]
    found = []
    for lineno, module in _imports(path, package):
        owner = _owner(module)
        if owner is None or owner == here or owner.startswith("__"):
            continue
        if owner not in ranks:
            found.append(f"{path.name}:{lineno} imports covey.{owner}, which has no layer")
        elif ranks[owner] > mine:
            found.append(
                f"{path.name}:{lineno} imports covey.{owner} (layer {ranks[owner]}) from "
                f"covey.{here} (layer {mine}): imports must point down (docs/architecture.md)"
            )
    return found


@pytest.mark.parametrize("path", _source_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    rel = path.relative_to(SRC)
    here = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    if here in ("__init__", "__main__"):  # the user API and `python -m covey` sit on top
        return
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    assert violations(path, here, package) == []


def test_the_check_catches_upward_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from covey.sim import simulate\n"
        "from covey.core import Weights\n"
        "from covey import deploy\n"
        "from ..server import RoundLoop\n"
        "import covey.analytics_unknown\n"
    )
    found = violations(bad, "core", "covey.core._bad")
    assert len(found) == 4, found
    assert "covey.sim" in found[0]
    assert "covey.deploy" in found[1]
    assert "covey.server" in found[2]
    assert "no layer" in found[3]
