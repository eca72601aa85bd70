"""``covey runs list`` and ``show`` read as a user reads them: narrow terminals, failed runs."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

import covey
from covey.cli import app
from covey.cli._runs import print_table
from covey.core import RoundRecord
from covey.dashboard._runs import run_name


class Shrink(covey.Client):
    """Scales the weights down; its loss shrinks with them."""

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] * 0.9}, num_examples=1)

    def evaluate(self, weights: Any, config: Any) -> covey.EvaluateResult:
        loss = float(np.abs(weights["w"]).sum())
        return covey.EvaluateResult(loss=loss, num_examples=1, metrics={"accuracy": 1 / (1 + loss)})


def _central(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
    loss = float(np.abs(weights["w"]).sum())
    return loss, {"accuracy": 1 / (1 + loss)}


def _broken(rnd: int, weights: Any) -> tuple[float, dict[str, float]]:
    if rnd == 2:
        raise RuntimeError("the test set is gone")
    return 1.0, {"accuracy": 0.5}


def _simulate(run_dir: Path, rounds: int, evaluate: Any = _central) -> None:
    covey.simulate(
        lambda cid: Shrink(),
        num_clients=3,
        rounds=rounds,
        strategy=covey.FedAvg(),
        initial_weights={"w": np.ones(3)},
        evaluate_fn=evaluate,
        run_dir=run_dir,
    )


@pytest.mark.parametrize("columns", ["80", "60"])
def test_list_keeps_every_figure_whole_in_a_narrow_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    """At 80 or 60 columns (or piped), rounds and metrics print whole, never cut to '0.3…'."""
    monkeypatch.setenv("COLUMNS", columns)
    name = "héllo wörld ☃ with spaces"
    _simulate(tmp_path / name, rounds=12)
    history = covey.History.load(tmp_path / name)
    accuracy = history.metric("accuracy", "central")[-1][1]
    loss = history.metric("loss", "central")[-1][1]
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    flat = " ".join(listed.output.split())
    assert "…" not in listed.output
    for text in ("12/12", f"{accuracy:.4f}", f"{loss:.4f}", "finished"):
        assert text in flat
    assert all(word in flat for word in name.split())


def test_show_keeps_every_figure_whole_in_a_narrow_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`covey runs show` at 60 columns still prints every round's numbers."""
    monkeypatch.setenv("COLUMNS", "60")
    _simulate(tmp_path / "run", rounds=3)
    history = covey.History.load(tmp_path / "run")
    shown = CliRunner().invoke(app, ["runs", "show", "run", "--dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "…" not in shown.output
    for _, value in history.metric("accuracy", "central"):
        assert f"{value:.4f}" in shown.output


def test_show_says_why_a_simulation_failed(tmp_path: Path) -> None:
    """A failed simulation's reason (kept in run.json) is printed by `covey runs show`."""
    with pytest.raises(RuntimeError, match="the test set is gone"):
        _simulate(tmp_path / "broken", rounds=4, evaluate=_broken)
    shown = CliRunner().invoke(app, ["runs", "show", "broken", "--dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "failed" in shown.output
    assert "RuntimeError: the test set is gone" in " ".join(shown.output.split())


def test_a_narrow_terminal_folds_text_and_keeps_numbers() -> None:
    """In a 40-column terminal a long name folds within the width; the number stays whole."""
    table = Table()
    table.add_column("run", overflow="fold")
    table.add_column("accuracy", no_wrap=True, overflow="fold")
    table.add_row("a-run-with-a-very-long-name-" * 3, "0.123456789")
    out = io.StringIO()
    print_table(table, Console(file=out, width=40, force_terminal=True, color_system=None))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 40 for line in lines)
    assert any("0.123456789" in line for line in lines)
    assert "…" not in out.getvalue()


def test_list_finds_the_runs_the_dashboard_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs grouped in subfolders (searched three levels deep, as the dashboard does) are listed."""
    monkeypatch.setenv("COLUMNS", "200")
    _simulate(tmp_path / "exp-1" / "seed-0", rounds=2)
    _simulate(tmp_path / "exp-1" / "seed-1", rounds=3)
    _simulate(tmp_path / "top", rounds=1)
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    for name, rounds in (("exp-1/seed-0", "2/2"), ("exp-1/seed-1", "3/3"), ("top", "1/1")):
        row = next(line for line in listed.output.splitlines() if f" {name} " in line)
        assert rounds in row
    shown = CliRunner().invoke(app, ["runs", "show", "exp-1/seed-1", "--dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "finished" in shown.output


def test_a_run_named_with_bytes_that_are_not_utf8_is_shown_by_its_listed_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `runs list` writes such a byte \xNN (as the dashboard names the run), and
    # `runs show` took no such name: "no run 'caf\\xe9'".
    monkeypatch.setenv("COLUMNS", "200")
    _simulate(tmp_path / os.fsdecode(b"caf\xe9") / "seed-0", rounds=2)
    _simulate(tmp_path / "back\\slash", rounds=1)
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert " caf\\xe9/seed-0 " in listed.output
    assert " back\\\\slash " in listed.output
    for name, rounds in (("caf\\xe9/seed-0", "rounds 2"), ("back\\\\slash", "rounds 1")):
        shown = CliRunner().invoke(app, ["runs", "show", name, "--dir", str(tmp_path)])
        assert shown.exit_code == 0, shown.output
        assert rounds in shown.output


def test_runs_show_heads_a_run_named_with_bytes_not_utf8_as_runs_list_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its heading wrote the byte as the lone surrogate Python reads it as, caf\udce9,
    # where `runs list` and the dashboard write caf\xe9.
    monkeypatch.setenv("COLUMNS", "200")
    _simulate(tmp_path / os.fsdecode(b"caf\xe9"), rounds=1)
    _simulate(tmp_path / "back\\slash", rounds=1)
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(tmp_path)])
    assert " caf\\xe9 " in listed.output
    for name in ("caf\\xe9", "back\\\\slash"):
        by_name = ["runs", "show", name, "--dir", str(tmp_path)]
        by_path = ["runs", "show", str(tmp_path / run_name(name))]
        for args in (by_name, by_path):
            shown = CliRunner().invoke(app, args)
            assert shown.exit_code == 0, shown.output
            assert shown.output.splitlines()[0] == f"{tmp_path / name}: finished"


def test_a_folder_named_like_markup_is_printed_as_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--dir '[red]x[/]'` is printed as given in the title and in 'no runs in'."""
    monkeypatch.setenv("COLUMNS", "200")
    runs = tmp_path / "[red]x[/]"
    runs.mkdir(parents=True)  # an empty folder: a missing one is a mistake, named as well
    empty = CliRunner().invoke(app, ["runs", "list", "--dir", str(runs)])
    assert f"no runs in {runs}" in empty.output
    _simulate(runs / "[bold]r", rounds=1)
    listed = CliRunner().invoke(app, ["runs", "list", "--dir", str(runs)])
    assert listed.exit_code == 0, listed.output
    assert f"Runs in {runs}" in " ".join(listed.output.split())
    assert "[bold]r" in listed.output


def test_run_files_that_link_outside_the_runs_folder_are_not_read(tmp_path: Path) -> None:
    # Before: `covey runs list` and `show` read a history.json (run.json, run.sqlite)
    # that was a symbolic link to a file anywhere, which the dashboard refuses.
    import shutil

    root, outside = tmp_path / "runs", tmp_path / "outside"
    outside.mkdir()
    for name in ("a", "b", "c", "d"):
        _simulate(root / name, rounds=1)
    secret = covey.History([RoundRecord(0)], config={"strategy": "SECRET-MARKER"})
    secret.save(outside / "secret.json")
    (root / "a" / "history.json").unlink()
    (root / "a" / "history.json").symlink_to(outside / "secret.json")
    (outside / "run.json").write_text('{"status": "failed", "stopped_reason": "SECRET-MARKER"}')
    (root / "b" / "run.json").unlink()
    (root / "b" / "run.json").symlink_to(outside / "run.json")
    shutil.copy(root / "c" / "run.sqlite", outside / "run.sqlite")
    (root / "c" / "run.sqlite").unlink()
    (root / "c" / "run.sqlite").symlink_to(outside / "run.sqlite")
    (root / "d" / "run.json").rename(root / "d" / "kept.json")  # a link inside: read
    (root / "d" / "run.json").symlink_to(Path("kept.json"))

    listed = CliRunner().invoke(app, ["runs", "list", str(root)], env={"COLUMNS": "300"})
    assert listed.exit_code == 0, listed.output
    said = " ".join(listed.output.split())
    assert "SECRET-MARKER" not in said
    statuses = ("unreadable", "finished")
    rows = {
        line.split()[0]: [s for s in statuses if f" {s} " in line]
        for line in listed.output.splitlines()[4:8]
    }
    assert rows == {"a": ["unreadable"], "b": ["unreadable"], "c": ["unreadable"]} | {
        "d": ["finished"]
    }
    for name, file in (("a", "history.json"), ("b", "run.json"), ("c", "run.sqlite")):
        link = root / name / file
        assert f"unreadable: {link} is a link to a file outside {root}" in said
        shown = CliRunner().invoke(app, ["runs", "show", str(root / name)])
        assert shown.exit_code == 2, shown.output
        assert f"error: {link} is a link to a file outside {root / name}" in " ".join(
            shown.output.split()
        )
        assert "SECRET-MARKER" not in shown.output
    shown = CliRunner().invoke(app, ["runs", "show", "d", "--dir", str(root)])
    assert shown.exit_code == 0, shown.output
