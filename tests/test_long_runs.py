"""What a long run costs per round stays flat: counted, never timed."""

from __future__ import annotations

import dataclasses
import itertools
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey
import covey.core._historyfile as historyfile_module
import covey.core._recordvalues as recordvalues_module
from _counting import count_calls
from _live import Joined, Served
from covey.core._history import History, RoundRecord
from covey.core._historyfile import HistoryFile
from covey.deploy import serve
from covey.server._outputs import RunOutputs
from covey.server._store import RunStore


class _Adder(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def _count_records_serialized(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the round records turned into JSON (``asdict`` of a record) from now on."""
    calls = [0]

    def counting(obj: Any) -> Any:
        if isinstance(obj, RoundRecord):
            calls[0] += 1
        return dataclasses.asdict(obj)

    monkeypatch.setattr(recordvalues_module, "asdict", counting)
    return calls


def test_simulate_run_dir_serializes_each_round_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_records_serialized(monkeypatch)
    rounds = 150
    result = covey.simulate(
        lambda cid: _Adder(),
        3,
        rounds,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(2)},
        run_dir=tmp_path / "run",
    )
    # history.json after every round, each record written into it a few times, not once
    # per later round (rounds * rounds / 2 = 11,000 before)
    assert calls[0] <= 4 * (rounds + 1), calls[0]
    assert History.load(tmp_path / "run").to_json() == result.history.to_json()


def test_ending_or_resuming_a_long_run_turns_no_earlier_record_into_json_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # history.json was written whole as every run ended: each record turned into JSON
    # again (seconds at 10,000 rounds), and a resumed run's end did it on top of its start.
    calls = [0]
    for module in (recordvalues_module, historyfile_module):  # the store's, the file's

        def counting(obj: Any, asdict: Any = dataclasses.asdict) -> Any:
            calls[0] += isinstance(obj, RoundRecord)
            return asdict(obj)

        monkeypatch.setattr(module, "asdict", counting)
    rounds, run = 150, tmp_path / "run"

    def simulate(upto: int, **resume: Any) -> covey.History:
        strategy = covey.FedAvg(fraction_evaluate=0.0)
        weights = {"w": np.zeros(2)}
        return covey.simulate(
            lambda cid: _Adder(), 3, upto, strategy, weights, run_dir=run, **resume
        ).history

    history = simulate(rounds)
    # saved to the store once, written into history.json as it is new and once more
    assert calls[0] <= 3 * (rounds + 1) + 3, calls[0]
    assert History.load(run).to_json() == history.to_json()
    calls[0] = 0
    history = simulate(rounds + 2, resume=True)
    # the resumed run's first write takes up the text of the file the run left: it made
    # every record's text again (rounds + 1 more)
    assert calls[0] <= 3 * 2 + 3, calls[0]
    assert History.load(run).to_json() == history.to_json()


def test_run_outputs_serialize_each_round_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_records_serialized(monkeypatch)
    outputs = RunOutputs(tmp_path, plot=False)
    history = History(config={"rounds": 200}, clients={0: "site-a"})
    for r in range(200):
        history.rounds.append(RoundRecord(r, fit_participants=[0], central_loss=1.0 / (r + 1)))
        outputs.round_done(history)
        if r in (0, 1, 57):
            assert (tmp_path / History.FILE_NAME).read_text() == history.to_json()
    assert calls[0] <= 3 * 200, calls[0]
    assert (tmp_path / History.FILE_NAME).read_text() == history.to_json()
    calls[0] = 0
    history.stopped_reason = "interrupted (SIGINT)"
    outputs.finish(history)  # the records' text as written, not made again
    assert calls[0] <= 1, calls[0]
    assert (tmp_path / History.FILE_NAME).read_text() == history.to_json()


def test_a_served_run_keeps_the_weights_of_its_last_rounds_only(tmp_path: Path) -> None:
    run = tmp_path / "run"
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    for rounds, resume in ((6, False), (9, True)):
        served = Served(strategy, rounds, run_dir=run, resume=resume, keep_last=2, plot=False)
        client = Joined(served.port)
        result = served.join(120)
        client.join(60)
        assert result.history.rounds[-1].round == rounds
        # one file per round would be rounds + 1 files; the run keeps two
        assert sorted(p.name for p in (run / "weights").iterdir()) == [
            f"round-{rounds - 1:05d}.safetensors",
            f"round-{rounds:05d}.safetensors",
        ]
        with RunStore.open(run) as store:
            assert len(store.rounds()) == rounds + 1  # every round's record stays
            np.testing.assert_array_equal(store.load_round(rounds)[0]["w"], result.weights["w"])


def test_a_served_run_resumed_without_keep_last_keeps_as_many_as_it_did(tmp_path: Path) -> None:
    # It kept every round's file after a resume that did not repeat --keep-last (a crash
    # gives no hint to copy): a large model's rounds would fill the disk.
    run = tmp_path / "run"
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    for rounds, resume, keep in ((4, False, 3), (8, True, None), (10, True, 1)):
        served = Served(strategy, rounds, run_dir=run, resume=resume, keep_last=keep, plot=False)
        client = Joined(served.port)
        result = served.join(120)
        client.join(60)
        assert result.history.rounds[-1].round == rounds
        kept = 3 if keep is None else keep
        files = sorted(p.name for p in (run / "weights").iterdir())
        assert files == [f"round-{r:05d}.safetensors" for r in range(rounds - kept + 1, rounds + 1)]
        with RunStore.open(run) as store:
            assert store.config["keep_last"] == kept  # recorded: a later resume reads it
        assert History.load(run).config["keep_last"] == kept
    new = tmp_path / "all"
    served = Served(strategy, 2, run_dir=new, plot=False)
    client = Joined(served.port)
    served.join(120)
    client.join(60)
    assert len(list((new / "weights").iterdir())) == 3  # rounds 0-2: None keeps every one
    with RunStore.open(new) as store:
        assert store.config["keep_last"] is None


def test_keep_last_must_be_a_whole_number_above_0() -> None:
    bad: Any
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="keep_last"):
            serve(covey.FedAvg(), 1, {"w": np.zeros(1)}, insecure=True, keep_last=bad)


def test_a_recorded_keep_last_that_is_not_valid_keeps_every_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from types import SimpleNamespace

    from covey.deploy._servechecks import kept_last

    for recorded, expected in ((4, 4), (None, None), ("4", None), (0, None), (True, None)):
        opened: Any = SimpleNamespace(config={"keep_last": recorded})
        assert kept_last(None, opened) == expected
        assert kept_last(2, opened) == 2  # one given now wins
    before: Any = SimpleNamespace(config={})  # a run from before keep_last was recorded
    assert kept_last(None, before) is None
    assert "is not valid: every round is kept" in caplog.text


def test_a_large_history_file_is_rewritten_within_a_share_of_the_runs_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rewriting the whole history.json after every round took time growing with the
    # round number: 18 ms a round at round 5,000 of a tiny model, against 3 at its start.
    clock = [0.0]

    def slow_write(path: Any, data: Any) -> None:
        clock[0] += 1.0  # every write takes a second here
        if callable(data):
            data(path)
        else:
            Path(path).write_bytes(data)

    monkeypatch.setattr(historyfile_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(historyfile_module, "atomic_write", slow_write)
    monkeypatch.setattr(historyfile_module, "SMALL_FILE", 2_000)
    path = tmp_path / History.FILE_NAME
    writer = HistoryFile(path, share=0.25)  # after a 1 s write, none for the next 4 s
    history = History(config={"rounds": 40})
    written = []
    for r in range(40):
        history.rounds.append(RoundRecord(r, fit_participants=[0], central_loss=1.0 / (r + 1)))
        clock[0] += 0.5  # the round's own time
        if writer.write(history):
            written.append(r)
        on_disk = History.load(path)
        assert on_disk.rounds[-1].round == written[-1]  # whole, and as of its last write
    small = [r for r in range(40) if len(History(history.rounds[: r + 1]).to_json()) <= 2_000]
    assert written[: len(small)] == small  # a small file: after every round
    later = written[len(small) :]
    # a 1 s write, then 3 s of rounds: a quarter of the time goes to the file
    assert len(later) > 3
    assert all(b - a == 6 for a, b in itertools.pairwise(later)), later
    history.rounds.append(RoundRecord(40))
    assert not writer.write(history)
    history.config = {"rounds": 80}  # a resume's new count: written at once
    assert writer.write(history)
    assert History.load(path).config == {"rounds": 80}
    history.save(path)  # the end of the run writes it whole
    assert path.read_text() == history.to_json()


def test_saving_a_round_reads_no_more_of_the_store_in_a_long_run(tmp_path: Path) -> None:
    # keep_last's pruning after every save looked for the rounds that keep a weights
    # file by reading every round's row: a save cost more with each round saved.
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    with RunStore.create(tmp_path / "run", config={}) as store:
        assert store._db._conn is not None
        store._db._conn.set_progress_handler(count, 1)
        cost = {}
        for r in range(400):
            before = steps[0]
            store.save_round(r, {"w": np.zeros(2)}, RoundRecord(r, central_loss=0.5), keep_last=2)
            cost[r] = steps[0] - before
    early = sum(cost[r] for r in range(40, 50))
    late = sum(cost[r] for r in range(390, 400))
    assert late < 1.3 * early, (early, late)


def test_the_history_writer_holds_no_more_for_a_longer_run(tmp_path: Path) -> None:
    # It kept the JSON text of every record it wrote, as much again as the file: a
    # served run's memory grew with every round for that alone.
    path = tmp_path / History.FILE_NAME
    writer = HistoryFile(path)
    history = History(config={"rounds": 600}, clients={0: "site-a"})
    held = {}
    for r in range(600):
        history.rounds.append(RoundRecord(r, fit_participants=[0], central_loss=1.0 / (r + 1)))
        assert writer.write(history)
        if r in (0, 1, 2, 57):
            assert path.read_text() == history.to_json()
        if r in (50, 599):
            held[r] = len(pickle.dumps(vars(writer)))
    assert held[599] < 1.2 * held[50], held  # what 50 rounds hold, not 12 times that
    assert path.read_text() == history.to_json()


def test_the_history_writer_rewrites_a_file_another_program_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / History.FILE_NAME
    writer = HistoryFile(path)
    history = History(config={"rounds": 9})
    for r in range(9):
        history.rounds.append(RoundRecord(r, fit_participants=[0], central_loss=float(r)))
        if r == 4:
            path.write_text("{}")  # its records are no longer in the file
        elif r == 6:
            path.unlink()
        writer.write(history)
        assert path.read_text() == history.to_json()
    history.rounds[0] = RoundRecord(0, central_loss=5.0)  # another first record: made anew
    history.rounds.append(RoundRecord(9))
    writer.write(history)
    assert path.read_text() == history.to_json()
    # changed between the check and the copy: the records are made anew all the same
    settled = historyfile_module._Written.reusable
    monkeypatch.setattr(historyfile_module._Written, "reusable", lambda w, rounds, p: w.settled)
    path.write_text(path.read_text() + " ")
    history.rounds.append(RoundRecord(10))
    writer.write(history)
    assert path.read_text() == history.to_json()
    monkeypatch.setattr(historyfile_module._Written, "reusable", settled)


def test_the_plot_of_a_longer_run_draws_no_more_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each plot.png drew every round's point (and its marker): what a drawing took
    # grew with the run, and a served run with plot on grew by kilobytes a round.
    import matplotlib.pyplot as plt

    from covey.server import _outputs

    drawn: list[int] = []
    figure = _outputs._figure

    def counted(history: History, title: str) -> Any:
        fig = figure(history, title)
        drawn.append(sum(np.size(line.get_xdata()) for ax in fig.axes for line in ax.get_lines()))
        return fig

    monkeypatch.setattr(_outputs, "_figure", counted)
    outputs = RunOutputs(tmp_path, plot_every=0.0)
    history = History(config={"rounds": 12_000})
    for size in (1_500, 12_000):
        history.rounds.extend(
            RoundRecord(r, central_loss=1.0 / (r + 1), central_metrics={"accuracy": r % 7 / 7})
            for r in range(len(history.rounds), size)
        )
        outputs.round_done(history)
    assert drawn[1] <= drawn[0], drawn  # 8 times the rounds, no more points
    assert plt.get_fignums() == []  # nothing kept by pyplot between drawings
    assert (tmp_path / _outputs.PLOT_NAME).read_bytes()[:4] == b"\x89PNG"


def _count_texts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the records the history writer turns into their text in the file."""
    return count_calls(monkeypatch, "_text", historyfile_module)


def test_a_resumed_runs_first_history_write_takes_up_the_file_it_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resumed run's first write turned every record into JSON again (0.35 ms a round:
    # 3.5 s at 10,000 rounds), though the file held their text already.
    path = tmp_path / History.FILE_NAME
    history = History(config={"rounds": 40}, clients={0: "site-é"})
    writer = HistoryFile(path)
    for r in range(30):
        metrics = {"accuracy": r / 30, "note": "a b\tc é", "n": r, "yes": True}
        history.rounds.append(
            RoundRecord(r, fit_participants=[0, 1], fit_metrics=metrics, central_loss=0.5)
        )
        writer.write(history)
    calls = _count_texts(monkeypatch)
    resumed = History.load(path)  # records read again: other objects, the same values
    resumed.rounds.append(RoundRecord(30, central_loss=0.25))
    assert HistoryFile(path).write(resumed)
    assert calls[0] == 1  # the new record only: 31 before
    assert path.read_text() == resumed.to_json()
    # a record its round's callbacks changed since is made anew, and those after it
    resumed = History.load(path)
    resumed.rounds[28].central_metrics["extra"] = 1.0
    resumed.rounds.append(RoundRecord(31))
    calls[0] = 0
    assert HistoryFile(path).write(resumed)
    assert calls[0] == 4  # rounds 28 to 31
    assert path.read_text() == resumed.to_json()


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[:-3],  # cut short
        lambda text: text.replace('"n": 1,', '"n": 7,'),  # another value
        lambda text: text.replace('"n": 1,', '"n": 1.0,'),  # the same number, another type
        lambda text: text.replace('"yes": true', '"yes": 1'),  # likewise
        lambda text: text.replace('"note": "a b', '"note":  "a b'),  # not as covey lays it out
        lambda text: text.replace("    {\n", "    [\n", 2),  # not JSON
        lambda text: "",
    ],
)
def test_a_history_file_not_intact_is_written_from_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Any
) -> None:
    path = tmp_path / History.FILE_NAME
    history = History(config={"rounds": 9})
    for r in range(6):
        metrics = {"n": r, "note": "a b", "yes": True}
        history.rounds.append(RoundRecord(r, fit_metrics=metrics, central_loss=0.5))
    history.save(path)
    damaged = damage(path.read_text())
    assert damaged != path.read_text()
    path.write_text(damaged)
    history.rounds.append(RoundRecord(6))
    HistoryFile(path).write(history)
    assert path.read_text() == history.to_json()


def test_a_history_file_of_values_json_says_otherwise_is_written_from_the_records(
    tmp_path: Path,
) -> None:
    # NaN and NumPy values, as History.save writes them (tagged, plain): made anew
    path = tmp_path / History.FILE_NAME
    history = History(config={"rounds": 9})
    history.rounds.append(RoundRecord(0, central_loss=float("nan")))
    history.rounds.append(RoundRecord(1, central_loss=np.float32(0.1)))  # type: ignore[arg-type]
    history.rounds.append(RoundRecord(2, fit_metrics={"a": np.int64(3)}))
    history.save(path)
    history.rounds.append(RoundRecord(3))
    HistoryFile(path).write(history)
    assert path.read_text() == history.to_json()
