"""An MkDocs hook: an API reference page for every public subpackage of covey.

A subpackage with its own page in ``docs/reference/`` keeps it; one without
(a layer that just landed) gets a generated page holding ``::: covey.NAME``
and a line in the "API reference" section of the nav. So the reference
follows the package's layout, and a hand-written page can replace a
generated one at any time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "covey"
REFERENCE = ROOT / "docs" / "reference"
SECTION = "API reference"


def subpackages() -> list[str]:
    """The public top-level subpackages and modules of covey, found without importing them."""
    names = []
    for path in PACKAGE.iterdir():
        if path.name.startswith("_"):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            names.append(path.name)
        elif path.suffix == ".py":
            names.append(path.stem)
    return sorted(names)


def missing_pages() -> list[str]:
    """The subpackages that have no page in ``docs/reference/``."""
    return [name for name in subpackages() if not (REFERENCE / f"{name}.md").exists()]


def page(name: str) -> str:
    """The Markdown of a generated reference page."""
    return f"# covey.{name}\n\n::: covey.{name}\n"


def on_config(config: Any, **kwargs: Any) -> Any:
    """Add a nav entry for every generated page to the API reference section."""
    for section in config.nav or []:
        if isinstance(section, dict) and SECTION in section:
            entries = section[SECTION]
            entries.extend({f"covey.{n}": f"reference/{n}.md"} for n in missing_pages())
    return config


def on_files(files: Any, *, config: Any, **kwargs: Any) -> Any:
    """Add the generated pages to the site's files."""
    from mkdocs.structure.files import File

    for name in missing_pages():
        files.append(File.generated(config, f"reference/{name}.md", content=page(name)))
    return files
