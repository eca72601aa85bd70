"""docs/migrating-from-flower.md is a guide in the nav; ``test_readme`` runs its examples."""

from __future__ import annotations

from pathlib import Path

from test_readme import GUIDES, blocks

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "migrating-from-flower.md"


def test_the_guide_is_in_the_nav_under_guides_and_run_as_one() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    guides = nav.split("  - Guides:")[1].split("\n  - ")[0]
    assert "migrating-from-flower.md" in guides
    assert "docs/migrating-from-flower.md" in GUIDES


def test_only_flower_code_and_its_command_are_skipped() -> None:
    skipped = [b for b in blocks(GUIDE) if b.skip is not None]
    assert len(skipped) == 2
    assert all("Flower" in (b.skip or "") for b in skipped)
    assert sum(b.lang == "python" for b in blocks(GUIDE) if b.skip is None) >= 6
