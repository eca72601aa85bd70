"""Run folders an older covey wrote, whose strategy record means the values given now."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from _steps import Shift
from covey.aggregate import Step, chain, mean
from covey.aggregate._order import described


def _init() -> dict[str, np.ndarray]:
    return {"w": np.zeros((2, 2), np.float32)}


@dataclass(frozen=True)
class _Prox(covey.Strategy):
    """A subclass with a field of its own, which may hold a NumPy number."""

    proximal_mu: Any = 0.0


def _older_subclass_options(strategy: Any, base: Any) -> dict[str, Any]:
    """How an older covey recorded a subclass's own fields: NumPy's repr or type name."""
    kind = type(strategy)
    out: dict[str, Any] = {"class": f"{kind.__module__}.{kind.__qualname__}"}
    own = {f.name for f in fields(strategy)} - {f.name for f in fields(base)}
    for name in sorted(own):
        value = getattr(strategy, name)
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(value)
        scalar = value is None or isinstance(value, bool | int | float | str)
        out[name] = value if scalar else type(value).__name__
    return out


def _prox(mu: Any) -> _Prox:
    return _Prox(proximal_mu=mu, fraction_evaluate=0.0)


def _older_run(run: Path, strategy: covey.Strategy, monkeypatch: pytest.MonkeyPatch) -> None:
    from covey.strategies import _describe

    with monkeypatch.context() as older:
        older.setattr(_describe, "subclass_options", _older_subclass_options)
        covey.simulate(Shift, 3, 1, strategy, _init(), run_dir=run)


def _resumed(run: Path, strategy: covey.Strategy) -> int:
    result = covey.simulate(Shift, 3, 2, strategy, _init(), run_dir=run, resume=True)
    return result.history.rounds[-1].round


@pytest.mark.parametrize(
    ("started", "same", "other", "said"),
    [
        (np.float64("nan"), float("nan"), 1.0, "'np.float64(nan)' (the run's) is 1.0 now"),
        (np.float64("-inf"), np.float64("-inf"), 1.0, "'np.float64(-inf)' (the run's) is 1.0"),
    ],
)
def test_an_older_runs_numpy_repr_of_a_subclass_field_resumes_with_the_same_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: Any, same: Any, other: Any, said: str
) -> None:
    # Before: the run recorded 'np.float64(nan)', covey records 'nan' now: refused.
    for k, again in enumerate((same, other)):
        run = tmp_path / f"run{k}"
        _older_run(run, _prox(started), monkeypatch)
        if again is other:
            with pytest.raises(ValueError, match=re.escape(f"strategy proximal_mu {said}")):
                _resumed(run, _prox(again))
        else:
            assert _resumed(run, _prox(again)) == 2


def test_an_older_runs_numpy_type_name_of_a_subclass_field_resumes_with_that_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the run recorded 'float32' (its value unknown), covey records 0.5 now: refused.
    run = tmp_path / "run"
    _older_run(run, _prox(np.float32(0.5)), monkeypatch)
    said = (
        "strategy proximal_mu 'float32' (the run's) is 0.5 now (an older covey recorded only "
        "the type of the run's NumPy float32: give the field as a float32 again to resume)"
    )
    with pytest.raises(ValueError, match=re.escape(said)):
        _resumed(run, _prox(0.5))  # a Python float: refused, as the older covey did
    with pytest.raises(ValueError, match=re.escape("'float32' (the run's) is 3 now")):
        _resumed(run, _prox(np.int64(3)))
    with caplog.at_level(logging.WARNING, logger="covey"):
        assert _resumed(run, _prox(np.float32(0.5))) == 2
    assert "recorded the strategy's proximal_mu only as a NumPy float32" in caplog.text


@described
def _noting(value: Any = 0) -> Step:
    """A step of one's own, described by its call as the built-in ones are."""
    return Step(lambda params: None, lambda state, event: (state, (event,)))


def _with(value: Any) -> covey.Strategy:
    return covey.Strategy(aggregator=chain(_noting(value), mean()), fraction_evaluate=0.0)


@pytest.mark.parametrize(
    ("started", "same", "other"),
    [
        (np.complex128(1 + 2j), 1 + 2j, 1 + 3j),
        (np.complex64(0.5 - 0.25j), 0.5 - 0.25j, 0.5 + 0.25j),
        (np.longdouble("0.5"), 0.5, 0.25),
        (np.clongdouble(2j), np.complex128(2j), 3j),
    ],
    ids=["complex128", "complex64", "longdouble", "clongdouble"],
)
def test_an_older_runs_numpy_repr_of_a_complex_or_long_double_resumes_with_the_same_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: Any, same: Any, other: Any
) -> None:
    # Before: the aggregator text was compared as written: np.complex128(1+2j) was not (1+2j).
    from covey.aggregate import _order

    for k, again in enumerate((same, started, other)):
        run = tmp_path / f"run{k}"
        with monkeypatch.context() as older:  # an older covey wrote NumPy's repr
            older.setattr(_order, "_python", lambda value: value)
            assert "np." in _with(started).describe()["aggregator"]
            covey.simulate(Shift, 3, 1, _with(started), _init(), run_dir=run)
        if again is other:
            with pytest.raises(ValueError, match=r"strategy aggregator .*_noting\(value=np\."):
                _resumed(run, _with(again))
        else:
            assert _resumed(run, _with(again)) == 2


def test_a_long_double_no_float_equals_is_still_told_from_the_float(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.aggregate import _order

    started = np.longdouble("0.1")
    if started == 0.1:  # a platform whose long double is the double
        pytest.skip("long double is float64 here")
    assert _with(started).describe()["aggregator"].startswith("chain(_noting(value=np.longdouble(")
    with monkeypatch.context() as older:
        older.setattr(_order, "_python", lambda value: value)
        covey.simulate(Shift, 3, 1, _with(started), _init(), run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"strategy aggregator .*is 'chain\(_noting\(value=0\.1\)"):
        _resumed(tmp_path, _with(0.1))
    assert _resumed(tmp_path, _with(np.longdouble("0.1"))) == 2


def test_a_complex_argument_is_described_as_the_python_number() -> None:
    described_as = _with(np.complex64(0.1 + 0.2j)).describe()["aggregator"]
    assert described_as == _with(0.1 + 0.2j).describe()["aggregator"]
    assert "_noting(value=(0.1+0.2j))" in described_as
