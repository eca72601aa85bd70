"""Run folders damaged as an operator's get damaged: a seeded pass over every file.

Each file of a real simulated run folder is truncated, flipped, zeroed, emptied,
replaced by a folder or a link, or swapped with another run's; ``covey runs``
and ``RunStore.load_round`` must then give the run's own values or an error
naming the file, never a traceback or another run's history.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.dashboard._runs import read_run
from covey.data import dirichlet, load_digits
from covey.models import LogisticClient, logistic_init
from covey.server import RunStore


def _simulate(folder: Path, seed: int, *, resume: bool = False) -> None:
    data = load_digits()
    parts = dirichlet(data.y_train, num_clients=6, alpha=0.5, seed=0)

    def client_fn(cid: int) -> LogisticClient:
        return LogisticClient(cid, *data.client(parts[cid]), lr=0.5, epochs=1)

    strategy = covey.FedAdam(eta=0.05, fraction_fit=0.5, fraction_evaluate=0.0)
    covey.simulate(
        client_fn,
        6,
        4 if resume else 3,
        strategy,
        logistic_init(64, 10),
        seed=seed,
        run_dir=folder,
        keep_last=None,
        resume=resume,
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    top = tmp_path_factory.mktemp("runs")
    _simulate(top / "a", 0)
    _simulate(top / "b", 1)
    return top / "a", top / "b"


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to / "run", symlinks=True)
    return to / "run"


def test_a_history_json_from_another_run_is_not_shown_as_this_runs(
    two_runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    a, b = two_runs
    run = _copy(a, tmp_path)
    shutil.copy(b / "history.json", run / "history.json")  # a partial copy, mixed up
    with RunStore.open(a) as store:
        own = store.history()
    result = CliRunner().invoke(app, ["runs", "show", str(run)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "seed 0," in said
    assert f"{own.rounds[1].fit_metrics['train_loss']:.4f}" in said
    assert "is not the history of the run" in said
    assert "its rounds were read from" in said
    shown = read_run("run", run)
    assert [r["fit_participants"] for r in shown.rounds] == [r.fit_participants for r in own.rounds]
    assert shown.meta["seed"] == 0
    assert shown.warning is not None
    assert "history.json" in shown.warning


def _replace(path: Path, make: Callable[[Path], object]) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    make(path)


def _damage(rng: random.Random, path: Path, other: Path) -> str:
    """Damage ``path`` one way, drawn from ``rng``; say how."""
    kinds = ["truncate", "flip", "zero", "empty", "folder", "link", "swap", "delete"]
    if path.name.endswith(".safetensors"):
        kinds += ["huge header", "huge offsets"]
    kind = rng.choice(kinds if path.is_file() else ["empty", "link", "swap", "delete"])
    if kind in ("empty", "folder", "link", "delete", "swap"):
        _replace(
            path,
            {
                "empty": lambda p: p.write_bytes(b""),
                "folder": lambda p: p.mkdir(),
                "link": lambda p: p.symlink_to(path.parent / "nowhere"),
                "delete": lambda p: None,
                "swap": lambda p: (shutil.copytree if other.is_dir() else shutil.copy)(other, p),
            }[kind],
        )
        return kind
    data = bytearray(path.read_bytes())
    if kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "zero":
        start = rng.randrange(len(data))
        data[start : start + rng.randint(1, 4096)] = bytes(len(data[start : start + 4096]))
    elif kind == "huge header":
        data[:8] = struct.pack("<Q", rng.choice([2**63, 2**40, 10**8 + 1]))
    else:  # an array declared to end a terabyte in
        text = data.decode("latin-1")
        end = text.index('"data_offsets":[') + len('"data_offsets":[')
        stop = text.index("]", end)
        text = text[:end] + text[end:stop].split(",")[0] + ",1000000000000" + text[stop:]
        data = bytearray(text.encode("latin-1"))
    path.write_bytes(bytes(data))
    return kind


@pytest.mark.parametrize("seed", range(4))
def test_seeded_damage_to_every_file_is_tolerated_or_named(
    two_runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    a, b = two_runs
    with RunStore.open(a) as store:
        own = {r: store.load_round(r)[0] for r in store.rounds()}
    files = sorted(p.relative_to(a) for p in a.rglob("*"))
    rng = random.Random(seed)
    for i, rel in enumerate(files):
        run = _copy(a, tmp_path / f"{i}")
        how = f"{rel} ({_damage(rng, run / rel, b / rel)}, seed {seed})"
        for args in (["runs", "show", str(run)], ["runs", "list", str(run.parent)]):
            result = CliRunner().invoke(app, args)
            assert result.exception is None or isinstance(result.exception, SystemExit), how
            assert result.exit_code in (0, 2), how
        for said in _loaded(run, own):
            assert str(run) in said, how


def _loaded(run: Path, own: dict[int, dict[str, np.ndarray]]) -> list[str]:
    """Load every round of ``run``: each must be ``own``'s; return the errors said."""
    errors = []
    try:
        with RunStore.open(run) as store:
            for r in store.rounds():
                try:
                    weights = store.load_round(r)[0]
                except (ValueError, OSError) as exc:
                    errors.append(str(exc))
                    continue
                assert all(np.array_equal(weights[k], own[r][k]) for k in own[r]), r
    except (ValueError, OSError) as exc:
        errors.append(str(exc))
    return errors


def test_a_corrupt_page_of_run_sqlite_is_named_and_no_round_is_discarded(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    run = _copy(two_runs[0], tmp_path)
    db = run / "run.sqlite"
    with sqlite3.connect(db) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'rounds'"
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray(db.read_bytes())
    data[(root - 1) * size : root * size] = bytes(size)  # the rounds table's page, zeroed
    db.write_bytes(bytes(data))
    files = sorted((run / "weights").iterdir())
    with RunStore.open(run) as store, pytest.raises(ValueError, match="is damaged") as caught:
        store.rounds()
    assert str(db) in str(caught.value)
    with pytest.raises(ValueError, match="is damaged") as caught:
        _simulate(run, 0, resume=True)
    assert str(db) in str(caught.value)
    assert sorted((run / "weights").iterdir()) == files
