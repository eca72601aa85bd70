"""A full disk (or a file-size limit) under a run folder: clear errors, nothing left running."""

from __future__ import annotations

import errno
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from safetensors import SafetensorError

import covey
from covey.core._files import atomic_write
from covey.core._history import History, RoundRecord
from covey.deploy._goodbye import STOPPED
from covey.server._store import RunStore

sys.path.insert(0, str(Path(__file__).parent))
from _live import Joined, Served
from _procs import python_json


class Plus(covey.Client):
    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={k: v + 1 for k, v in weights.items()}, num_examples=1)


def _no_space(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_names_the_file_and_leaves_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "history.json"
    target.write_text("old")

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic_write(target, full)
    assert caught.value.errno == errno.ENOSPC
    assert str(target) in str(caught.value)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_a_folder_turned_read_only_names_the_file_not_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the error named the temporary `.history.json.<hex>.tmp` it could not make.
    target = tmp_path / "history.json"
    target.write_text("old")
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(PermissionError) as caught:
        atomic_write(target, "new")
    monkeypatch.undo()
    assert caught.value.filename == str(target)
    assert str(caught.value) == f"[Errno {errno.EACCES}] {os.strerror(errno.EACCES)}: '{target}'"
    assert target.read_text() == "old"


def test_a_simulation_whose_disk_fills_stops_its_workers_and_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shm_files: list[str]
) -> None:
    run_dir = tmp_path / "run"

    def fill_disk(record: RoundRecord) -> None:
        if record.round == 2:  # from now on every write of the run folder fails
            monkeypatch.setattr(os, "fsync", _no_space)

    # An OSError, or, when round 3 folds its first reply before the save of round 2 (written
    # while round 3 trains) has failed, the round's FederationError caused by it.
    with pytest.raises((OSError, covey.FederationError), match="No space left on device") as caught:
        covey.simulate(
            lambda cid: Plus(),
            2,
            6,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.zeros(4)},
            run_dir=run_dir,
            backend="process",
            num_workers=2,
            on_round=fill_disk,
        )
    monkeypatch.undo()
    if isinstance(caught.value, covey.FederationError):
        assert "saving round 2" in str(caught.value), str(caught.value)
    # The run's own error (the save of round 3, which fails with the history written beside
    # it, or on a loaded machine that of round 2, written while round 3 trains), not the
    # run.json written after it.
    named = [run_dir / "weights" / f"round-0000{r}.safetensors" for r in (2, 3)]
    assert any(str(path) in str(caught.value) for path in named), str(caught.value)
    assert multiprocessing.active_children() == []
    # The last history written whole is still there, and no temporary file is left.
    assert [r.round for r in History.load(run_dir).rounds] == [0, 1, 2]
    names = ["history.json", "run.json", "run.lock", "run.sqlite", "weights"]
    assert sorted(p.name for p in run_dir.iterdir()) == names
    # The checkpoints kept are whole rounds: 0 and 1, or with round 2 if its save (written
    # while round 3 trains) was done before the disk filled (round 0 then pruned, unless
    # the disk filled first); no temporary file is left.
    saved = sorted(p.name for p in (run_dir / "weights").iterdir())
    whole = [f"round-0000{r}.safetensors" for r in range(3)]
    assert saved in (whole[:2], whole[1:], whole)


def test_a_simulation_whose_folder_turns_read_only_names_the_round_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: `[Errno 13] Permission denied: '.../.history.json.c1f092e0e212.tmp'`,
    # naming neither the round nor the file.
    run_dir = tmp_path / "run"
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any) -> int:
        if Path(path).name.startswith(".history.json."):  # its temporary file
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)

    def turn_read_only(record: RoundRecord) -> None:
        if record.round == 2:  # round 3's history.json is refused (the weights, never)
            monkeypatch.setattr(os, "open", read_only)

    with pytest.raises(OSError, match=r"history\.json") as caught:
        covey.simulate(
            lambda cid: Plus(),
            2,
            6,
            covey.FedAvg(fraction_evaluate=0.0),
            {"w": np.zeros(4)},
            run_dir=run_dir,
            on_round=turn_read_only,
        )
    monkeypatch.undo()
    said = f"round 3: cannot write {run_dir / 'history.json'}: {os.strerror(errno.EACCES)}"
    assert str(caught.value) == said
    assert caught.value.errno == errno.EACCES
    assert [r.round for r in History.load(run_dir).rounds] == [0, 1, 2]


def test_a_round_the_disk_cannot_hold_is_named_and_the_saved_rounds_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    weights = {"w": np.arange(4.0)}
    with RunStore.create(tmp_path / "run", config={}) as store:
        store.save_round(0, weights, None)
        monkeypatch.setattr(safetensors.numpy, "save_file", full)
        with pytest.raises(OSError, match=r"cannot save round 1 to \S+round-00001.safetensors: "):
            store.save_round(1, weights, None)
        monkeypatch.undo()
        with store._db.reading() as conn:  # SQLite's own full disk: no page more
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(OSError, match=r"round 1: cannot write \S+run.sqlite: .*disk is full"):
            store.save_round(1, weights, {"round": 1, "fit_metrics": {"x": 1.0}}, b"s" * 65536)
        with pytest.raises(OSError, match=r"cannot write \S+run.sqlite: .*disk is full"):
            store.log_event("server", "stopped", "x" * 65536)
        assert store.rounds() == [0]
        with store._db.reading() as conn:  # room again: the same round saves
            conn.execute("PRAGMA max_page_count = 1073741823")
        store.save_round(1, weights, None, b"s" * 65536)
        assert store.rounds() == [0, 1]
        np.testing.assert_array_equal(store.load_round(0)[0]["w"], weights["w"])
    names = sorted(p.name for p in (tmp_path / "run" / "weights").iterdir())
    assert names == ["round-00000.safetensors", "round-00001.safetensors"]


def test_a_served_run_whose_disk_fills_tells_its_clients_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    stores: list[RunStore] = []
    real_init = RunStore.__init__

    def keep_store(self: RunStore, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        stores.append(self)

    def fill_disk(record: RoundRecord) -> None:
        if record.round == 2:  # every file and every write of run.sqlite fails from now
            monkeypatch.setattr(os, "fsync", _no_space)
            with stores[0]._db.reading() as conn:
                conn.execute("PRAGMA query_only = ON")

    monkeypatch.setattr(RunStore, "__init__", keep_store)
    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 5, run_dir=run_dir, on_round=fill_disk, plot=False)
    joined = Joined(served.port)
    # The history of round 3, or round 2's save if it was still in flight at the fault.
    with pytest.raises((OSError, covey.FederationError), match=r"No space left|readonly database"):
        served.join()
    joined.join()
    monkeypatch.undo()
    # The run could not record its end, but its clients are told it stopped, not that it is over.
    assert joined.result is not None
    assert joined.result.reason.startswith(STOPPED)
    with RunStore.open(run_dir) as store:
        saved = store.rounds()
        assert saved in ([0, 1], [0, 1, 2])
        store.load_round(saved[-1])  # the last complete round verifies
    resumed = Served(strategy, 5, run_dir=run_dir, resume=True, plot=False)
    Joined(resumed.port).join()
    result = resumed.join()
    assert [r.round for r in result.history.rounds][-1] == 5
    np.testing.assert_array_equal(result.weights["w"], np.full(8, 5.0))


def test_a_checkpoint_that_fails_names_its_file_not_a_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file = safetensors.numpy.save_file

    def full(*args: Any, **kwargs: Any) -> None:
        # Round 1's file may still be written in the background when round 1's callback
        # runs: only rounds from 2 on find the disk full.
        if int(kwargs["metadata"]["covey_round"]) < 2:
            save_file(*args, **kwargs)
            return
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    def fill_disk(record: RoundRecord) -> None:
        if record.round == 1:  # round 2's weights cannot be written; round 3 waits on them
            monkeypatch.setattr(safetensors.numpy, "save_file", full)

    strategy = covey.FedAvg(min_available_clients=1, min_fit_clients=1, fraction_evaluate=0.0)
    served = Served(strategy, 5, run_dir=tmp_path / "run", on_round=fill_disk, plot=False)
    joined = Joined(served.port)
    with pytest.raises(covey.FederationError) as caught:
        served.join()
    joined.join()
    final = tmp_path / "run" / "weights" / "round-00002.safetensors"
    assert str(caught.value).startswith("round 3: saving round 2 to ")
    assert f"OSError: cannot save round 2 to {final}: Error while serializing" in str(caught.value)
    assert "client" not in str(caught.value)


_LIMITED = """
import json, resource, signal, sys
import numpy as np
from covey.server._store import RunStore

folder = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
said = {}

def attempt(key, fn):
    try:
        fn()
        said[key] = "ok"
    except Exception as exc:
        said[key] = f"{type(exc).__name__}: {exc}"

resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 1 << 20))  # no room for a database
attempt("create", lambda: RunStore.create(folder, config={}, exclusive=True).close())
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # room for it, not for 2 MB
store = RunStore.create(folder, config={}, exclusive=True)
store.save_round(0, {"w": np.zeros(4)}, None)
attempt("save", lambda: store.save_round(1, {"w": np.zeros(1 << 18)}, None))
said["rounds"] = store.rounds()
store.close()
print(json.dumps(said))
"""


def test_a_file_size_limit_is_an_error_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    said = python_json(_LIMITED, str(folder))
    # SQLite says "database or disk is full" or "disk I/O error", as the write failed.
    assert said["create"].startswith(f"OSError: cannot create {folder / 'run.sqlite'}: ")
    assert said["save"].startswith(
        f"OSError: cannot save round 1 to {folder / 'weights' / 'round-00001.safetensors'}: "
    )
    assert said["rounds"] == [0]
    assert sorted(p.name for p in (folder / "weights").iterdir()) == ["round-00000.safetensors"]


_CERTS = """
import json, resource, signal, sys
from pathlib import Path
from covey.deploy.certs import init_federation

fresh, old = Path(sys.argv[1]), Path(sys.argv[2])
init_federation(old)
before = {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (512, 1 << 20))  # keys fit, certificates do not
said = {}
for key, folder, overwrite in (("fresh", fresh, False), ("overwrite", old, True)):
    try:
        init_federation(folder, overwrite=overwrite)
        said[key] = "ok"
    except OSError as exc:
        said[key] = str(exc)
said["fresh_files"] = sorted(p.name for p in fresh.iterdir())
said["old_kept"] = before == {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()}
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
init_federation(fresh)  # room again: no --overwrite needed
said["fresh_after"] = sorted(p.name for p in fresh.iterdir())
print(json.dumps(said))
"""


def test_a_federation_that_does_not_fit_is_not_half_written(tmp_path: Path) -> None:
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    said = python_json(_CERTS, str(fresh), str(old))
    assert said["fresh"] == f"[Errno 27] File too large; nothing was written: '{fresh}'"
    assert said["overwrite"].endswith(f"nothing was written: '{old}'")
    assert said["fresh_files"] == [".covey-certs.lock", "clients"]
    assert said["old_kept"] is True
    assert said["fresh_after"] == [
        ".covey-certs.lock",
        "ca.key",
        "ca.pem",
        "clients",
        "revoked.json",
        "server.key",
        "server.pem",
    ]


def test_a_client_joining_while_the_run_cannot_record_it_is_told_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stores: list[RunStore] = []
    real_init = RunStore.__init__

    def keep_store(self: RunStore, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        stores.append(self)

    def writable(on: bool) -> None:
        with stores[0]._db.reading() as conn:  # a full disk, as SQLite sees it
            conn.execute(f"PRAGMA query_only = {'OFF' if on else 'ON'}")

    monkeypatch.setattr(RunStore, "__init__", keep_store)
    strategy = covey.FedAvg(min_available_clients=2, min_fit_clients=2, fraction_evaluate=0.0)
    served = Served(strategy, 1, run_dir=tmp_path / "run", plot=False)
    first = Joined(served.port, name="first")
    deadline = time.monotonic() + 30
    while not (stores[0].rounds() == [0] and "first" in stores[0].clients()):
        assert time.monotonic() < deadline, "round 0 was never saved"
        time.sleep(0.05)
    writable(False)
    second = Joined(served.port, name="second")
    deadline = time.monotonic() + 30
    while not any("could not connect to" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the second client never tried to join"
        time.sleep(0.05)
    writable(True)  # room again: the client that retried joins
    result = served.join()
    first.join()
    second.join()
    assert second.result is not None
    assert second.result.reason == "the run is over"
    assert [r.round for r in result.history.rounds] == [0, 1]
    failed = [r.getMessage() for r in caplog.records if "could not connect to" in r.getMessage()]
    assert failed
    assert all("the server cannot take new clients now" in m for m in failed), failed


def test_a_weights_folder_turned_read_only_names_the_rounds_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".tmp") and flags & os.O_CREAT:  # as for a user without write
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    with RunStore.create(tmp_path / "run", config={}) as store:
        store.save_round(0, {"w": np.zeros(2)}, None)
        monkeypatch.setattr(os, "open", read_only)
        with pytest.raises(OSError, match="Permission denied") as caught:
            store.save_round(1, {"w": np.zeros(2)}, None)
        monkeypatch.undo()
        final = tmp_path / "run" / "weights" / "round-00001.safetensors"
        assert str(caught.value) == f"cannot save round 1 to {final}: Permission denied"
        assert store.rounds() == [0]


def test_a_sites_privacy_ledger_that_cannot_be_written_is_named_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from covey.analytics._dp import Budget
    from covey.analytics._ledger_file import load_budget, save_budget

    ledger = tmp_path / "ledger.json"
    save_budget(Budget(1.0, 1e-6, owner="the site"), ledger)
    kept = ledger.read_bytes()
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(OSError, match="No space left on device") as caught:
        save_budget(load_budget(ledger, 2.0, 1e-6), ledger)
    monkeypatch.undo()
    assert str(ledger) in str(caught.value)
    assert ledger.read_bytes() == kept
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]
