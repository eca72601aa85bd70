"""How a history names what it holds: Flower's attribute names."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from pathlib import Path

import pytest

import covey
from covey.core import RoundRecord

GUIDE = Path(__file__).parent.parent / "docs" / "migrating-from-flower.md"


def guide_history_rows() -> dict[str, str]:
    """Flower's ``History`` attributes and covey's ways, as the migration guide's table has them."""
    rows: dict[str, str] = {}
    for line in GUIDE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `History."):
            continue
        flower, covey_side = line.split("|")[1:3]
        names = re.findall(r"`(?:History\.)?(\w+)`", flower)
        ways = re.findall(r"`([^`]+)`", covey_side)
        assert len(names) == len(ways), line
        rows.update(zip(names, ways, strict=True))
    return rows


FLOWER = [
    "losses_centralized",
    "losses_distributed",
    "metrics_centralized",
    "metrics_distributed",
    "metrics_distributed_fit",
]


def flower_s_history() -> covey.History:
    """A round with a loss and an accuracy from each source (the fit one being a metric)."""
    return covey.History(
        [
            RoundRecord(
                1,
                central_loss=1.0,
                central_metrics={"accuracy": 0.5},
                evaluate_loss=2.0,
                evaluate_metrics={"accuracy": 0.25},
                fit_metrics={"accuracy": 0.75},
            )
        ]
    )


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("losses_centralized", [(1, 1.0)]),
        ("metrics_centralized", [(1, 0.5)]),
        ("losses_distributed", [(1, 2.0)]),
        ("metrics_distributed", [(1, 0.25)]),
        ("metrics_distributed_fit", [(1, 0.75)]),
    ],
)
def test_a_flower_history_attribute_names_covey_s_way_as_the_guide_does(
    name: str, want: list[tuple[int, float]]
) -> None:
    rows = guide_history_rows()
    assert sorted(rows) == FLOWER
    history = flower_s_history()
    way = rows[name]
    with pytest.raises(AttributeError) as info:
        getattr(history, name)
    assert str(info.value) == (
        f"'History' object has no attribute {name!r}; Flower's History.{name} is covey's {way}"
    )
    assert info.value.name == name
    assert hasattr(history, name) is False
    assert getattr(history, name, "default") == "default"
    # the way named reads what Flower's attribute held (name="accuracy" for a metric)
    namespace = {"history": history, "name": "accuracy"}
    assert eval(way, namespace) == want  # noqa: S307 (the guide's code)


def test_only_flower_s_names_get_covey_s_and_a_history_still_copies() -> None:
    history = covey.History([RoundRecord(1, central_loss=0.5)], clients={0: "a"})
    with pytest.raises(AttributeError, match=r"Flower's History\.losses_centralized is covey's"):
        history.losses_centralized  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError, match=r"^'History' object has no attribute 'lossses'$"):
        history.lossses  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(history, "__deepcopy__")
    assert getattr(history, "anything", None) is None
    for twin in (
        copy.copy(history),
        copy.deepcopy(history),
        pickle.loads(pickle.dumps(history)),  # noqa: S301
        dataclasses.replace(history),
    ):
        assert twin == history
    assert dataclasses.asdict(history)["clients"] == {0: "a"}
