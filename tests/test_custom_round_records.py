"""What an aggregation step of one's own reports, as the round records it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _steps import Shift as _Shift
from _steps import reporting as _reporting
from covey.aggregate import Aggregate, End, chain, mean


def _init() -> dict[str, np.ndarray]:
    return {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


#: Per-client values as code of one's own writes them: int keys, tuples, NumPy values.
PER_CLIENT = {
    "by_client": {0: np.float32(0.5), 1: np.float32(0.25)},
    "pair": (1, 2),
    "all": np.array([1.0, 2.0], np.float32),
    "nested": {"counts": [np.int64(3), np.int64(4)]},
}

#: PER_CLIENT as history.json gives it back.
READ_BACK = {
    "by_client": {"0": 0.5, "1": 0.25},
    "pair": [1, 2],
    "all": [1.0, 2.0],
    "nested": {"counts": [3, 4]},
}


def _strategy(**options: Any) -> covey.Strategy:
    return covey.Strategy(fraction_evaluate=0.0, **options)


@pytest.mark.parametrize("at", [End, Aggregate])
def test_a_steps_info_reads_the_same_live_and_loaded(at: type, tmp_path: Path) -> None:
    # Before: the live aggregate_info kept the step's int keys, tuples and NumPy values.
    steps = (_reporting({"mine": PER_CLIENT, 3: "three"}, at), mean())
    aggregator = chain(*(steps if at is End else steps[::-1]))
    result = covey.simulate(
        _Shift, 3, 1, _strategy(aggregator=aggregator), _init(), run_dir=tmp_path
    )
    live = result.history[1].aggregate_info
    assert live["mine"] == READ_BACK
    assert live["3"] == "three"
    assert covey.History.load(tmp_path)[1].aggregate_info == live


def _event(at: type, info: Any) -> Any:
    """An ``End`` or ``Aggregate`` of round 1 with ``info``."""
    return End(1, info=info) if at is End else Aggregate(1, 1, 1, delta=_init(), info=info)


@pytest.mark.parametrize("at", [End, Aggregate])
def test_a_steps_info_shaped_as_a_history_tag_is_named(at: type) -> None:
    # Before: accepted; a run folder failed to save the round ("fromhex() argument must be
    # str"), and history.json read {"__float__": "1"} back as the float 1.0.
    said = (
        rf"{at.__name__}\(round=1\)\.info\['meta'\]\[0\] is a dict of the one key '__float__', "
        "the form history.json writes bytes and NaN or infinite floats in"
    )
    meta = {"meta": [{"__float__": "1"}]}
    with pytest.raises(TypeError, match=said):
        _event(at, meta)
    steps = (_reporting({"meta": {"__bytes__": 1.0}}, at), mean())
    aggregator = chain(*(steps if at is End else steps[::-1]))
    with pytest.raises(covey.FederationError, match=r"info\['meta'\] is a dict of the one key"):
        covey.simulate(_Shift, 3, 1, _strategy(aggregator=aggregator), _init())
