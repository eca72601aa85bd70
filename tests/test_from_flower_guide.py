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


def test_the_guide_names_the_datasets_covey_data_loads() -> None:
    import covey.data

    text = GUIDE.read_text(encoding="utf-8")
    said = " ".join(text.split("- Flower Datasets (`flwr_datasets`):")[1].split("\n- ")[0].split())
    loaders = sorted(name for name in covey.data.__all__ if name.startswith("load_"))
    assert loaders == ["load_breast_cancer", "load_digits"]  # name a new one in the guide
    assert all(f"`{name}`" in said for name in loaders)
    assert "the ones that ship with scikit-learn" not in said
