"""docs/migrating-from-flower.md: its ported examples run as written and learn."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from test_readme import blocks, run_page

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "migrating-from-flower.md"


def test_the_guide_is_in_the_nav_under_guides() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    guides = nav.split("  - Guides:")[1].split("\n  - ")[0]
    assert "migrating-from-flower.md" in guides


def test_only_flower_code_and_shell_commands_are_skipped() -> None:
    skipped = [b for b in blocks(GUIDE) if b.skip is not None]
    assert len(skipped) == 2
    assert all("Flower" in (b.skip or "") for b in skipped)


@pytest.mark.slow
def test_the_guide_s_examples_run_and_learn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # the checkpoints land in a scratch folder
    torch = sys.modules["torch"]
    threads = torch.get_num_threads()
    try:
        ns = run_page(GUIDE)
    finally:
        torch.set_num_threads(threads)
    sk_history = ns["sk_result"].history  # type: ignore[attr-defined]
    assert sk_history.metric("accuracy", source="evaluate")[-1][1] > 0.9
    history = ns["result"].history  # type: ignore[attr-defined]
    assert [r for r, _ in history.metric("accuracy")] == [0, 1, 2, 3, 4]
    assert history.metric("accuracy")[-1][1] > 0.7
    assert len(history.metric("train_loss", source="fit")) == 4
    custom = ns["custom_result"].history.metric("accuracy")  # type: ignore[attr-defined]
    assert custom[-1][1] > custom[0][1] + 0.2
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["round-0.npz", "round-1.npz", "round-2.npz"]
    with np.load(tmp_path / "checkpoints" / "round-0.npz") as first:
        assert set(first.files) == {"conv.weight", "conv.bias", "fc.weight", "fc.bias"}
