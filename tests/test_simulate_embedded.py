"""covey.simulate inside a larger application: the process-wide state a run leaves behind."""

from __future__ import annotations

import gc
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
from covey.core._gcstart import AT_IMPORT

sys.path.insert(0, str(Path(__file__).parent))
from _procs import python_json


class _Half(covey.Client):
    def fit(self, weights: covey.Weights, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] / 2}, num_examples=1)


def _run(**kwargs: Any) -> covey.sim.SimulationResult:
    return covey.simulate(
        lambda cid: _Half(),
        num_clients=3,
        rounds=2,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights={"w": np.ones(2)},
        **kwargs,
    )


def test_objects_the_application_froze_stay_frozen_after_a_run() -> None:
    gc.freeze()  # as a pre-fork server does, to keep its pages shared with its workers
    try:
        assert gc.get_freeze_count() > 0
        assert _run().weights["w"].tolist() == [0.25, 0.25]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_run_gives_back_what_it_froze_even_with_another_run_in_a_thread() -> None:
    assert gc.get_freeze_count() <= AT_IMPORT  # at most the interpreter's own (CPython 3.12)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(_run())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.weights["w"].tolist() for r in results] == [[0.25, 0.25]] * 2
    assert _run().weights["w"].tolist() == [0.25, 0.25]
    assert gc.get_freeze_count() == 0


def _bar_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]


def test_ctrl_c_while_the_progress_bar_starts_stops_its_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.live import _RefreshThread

    start = _RefreshThread.start

    def interrupted(self: threading.Thread) -> None:
        start(self)  # the thread runs; Ctrl-C lands while start() waits for it to say so
        raise KeyboardInterrupt

    monkeypatch.setattr(_RefreshThread, "start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(progress=True)
    monkeypatch.undo()
    for thread in _bar_threads():
        thread.join(10)
    assert not _bar_threads()
    assert _run(progress=True).weights["w"].tolist() == [0.25, 0.25]
    assert gc.get_freeze_count() == 0


class _Measured(_Half):
    def evaluate(self, weights: covey.Weights, config: Any) -> covey.EvaluateResult:
        return covey.EvaluateResult(loss=1.0, num_examples=1, metrics={"acc": 0.5})


def test_a_history_shown_in_a_notebook_is_a_summary_of_the_run() -> None:
    result = covey.simulate(
        lambda cid: _Measured(),
        num_clients=300,
        rounds=20,
        strategy=covey.FedAvg(),
        initial_weights={"w": np.ones(2)},
        evaluate_fn=lambda rnd, weights: (0.5, {"accuracy": 0.9}),
    )
    shown = repr(result.history)
    assert shown == (
        "History(rounds=0..20, strategy='FedAvg', metrics={'central': ['accuracy', 'loss'], "
        "'evaluate': ['acc', 'loss']}, failures=0, stopped_reason=None)"
    )
    assert len(repr(result)) < 2_000  # not every round's 300 participants, twice
    assert repr(covey.History()) == (
        "History(rounds=[], metrics={}, failures=0, stopped_reason=None)"
    )


def test_looking_a_round_up_by_position_says_how_to() -> None:
    history = _run().history
    assert history[2] is history.rounds[-1]
    with pytest.raises(KeyError, match=r"no round -1 .*rounds 0 to 2.*history\.rounds\[-1\]"):
        history[-1]


_DRAWS = """
import io, json, random, sys
import numpy as np, covey

class Draw(covey.Client):
    def fit(self, weights, config):
        return covey.FitResult(weights={"w": weights["w"] + random.random()}, num_examples=1)

def run(progress):
    random.seed(7)  # once, before the run, as a notebook's first cell does
    return covey.simulate(lambda cid: Draw(), 2, 2, covey.FedAvg(fraction_evaluate=0.0),
                          {"w": np.zeros(1)}, progress=progress).weights["w"].tolist()

sys.stdout = io.StringIO()  # the bar's
first = run(sys.argv[1] == "bar")  # the first bar of the process imports rich
print(json.dumps([first, run(False)]), file=sys.__stdout__)
"""


def test_the_progress_bar_does_not_shift_the_draws_of_pythons_random() -> None:
    with_bar, without = python_json(_DRAWS, "bar")
    assert with_bar == without


class _Waits(_Half):
    def __init__(self, go: threading.Event) -> None:
        self.go = go

    def fit(self, weights: covey.Weights, config: Any) -> covey.FitResult:
        self.go.wait(60)
        return super().fit(weights, config)


def test_a_run_dir_in_use_by_a_run_in_another_thread_is_named_so(tmp_path: Path) -> None:
    go = threading.Event()
    results: list[Any] = []
    first = threading.Thread(
        target=lambda: results.append(
            covey.simulate(
                lambda cid: _Waits(go),
                2,
                1,
                covey.FedAvg(fraction_evaluate=0.0),
                {"w": np.ones(2)},
                run_dir=tmp_path,
            )
        )
    )
    first.start()
    try:
        while not (tmp_path / "run.json").exists() and first.is_alive():
            first.join(0.01)
        with pytest.raises(ValueError, match=r"another run of this same process .*another thread"):
            _run(run_dir=tmp_path)
    finally:
        go.set()
        first.join(60)
    assert results[0].weights["w"].tolist() == [0.5, 0.5]


def test_runs_in_two_threads_keep_the_applications_warning_filters() -> None:
    # Two runs of scikit-learn clients overlap: run A's client is inside its fit when
    # run B's starts, and A finishes its fit while B's is still in progress. Each fit
    # quiets scikit-learn's ConvergenceWarning; neither may leave that filter behind
    # nor drop a filter the application adds in the meantime.
    pytest.importorskip("sklearn")
    from sklearn.linear_model import SGDClassifier

    from covey.sklearn import SklearnClient, initial_params

    a_in, b_in = threading.Event(), threading.Event()
    app_added, a_done = threading.Event(), threading.Event()

    class _Paced(SGDClassifier):
        def partial_fit(self, x: Any, y: Any, classes: Any = None, **kw: Any) -> Any:
            if classes is not None:  # priming the model, before the fit proper
                pass
            elif self.random_state == 0:  # run A: waits inside its fit for B to be in its own
                a_in.set()
                assert app_added.wait(30)
            else:  # run B: A finishes its fit (and its round) meanwhile
                b_in.set()
                assert a_done.wait(30)
            return super().partial_fit(x, y, classes=classes, **kw)

    x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    errors: list[Exception] = []

    def run(seed: int) -> None:
        try:
            covey.simulate(
                lambda cid: SklearnClient(_Paced(random_state=seed), x, y, classes=[0, 1]),
                1,
                1,
                covey.FedAvg(min_fit_clients=1, min_available_clients=1, fraction_evaluate=0.0),
                initial_params(SGDClassifier(), 3, [0, 1]),
                on_round=lambda record: a_done.set() if seed == 0 else None,
            )
        except Exception as e:  # noqa: BLE001 - reported by the test's thread
            errors.append(e)

    before = list(warnings.filters)
    threads = [threading.Thread(target=run, args=(seed,)) for seed in (0, 1)]
    try:
        threads[0].start()
        assert a_in.wait(30), errors
        threads[1].start()
        assert b_in.wait(30)
        warnings.filterwarnings("ignore", message="the application's own filter")
        mine = warnings.filters[0]
        app_added.set()
        for thread in threads:
            thread.join(60)
    finally:
        app_added.set()
        a_done.set()
    assert not errors
    assert warnings.filters == [mine, *before]
