"""The benchmark scripts from outside: their flags, their refusals, their comparisons.

Nothing here measures anything: the scripts are run (or their argument parsing is
called) on inputs that must be refused, and the weight comparison of
``vs_flower.py`` is fed files written here.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_modules() -> Iterator[dict[str, ModuleType]]:
    sys.path.insert(0, str(BENCH))
    try:
        yield {
            name: importlib.import_module(name)
            for name in ("vs_flower", "_vs_flower_report", "deploy_vs_flower")
        }
    finally:
        sys.path.remove(str(BENCH))


def _refused(module: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        module.parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--n", "0"], "--n"),
        (["--n", "10", "-3"], "--n"),
        (["--covey-only-n", "0"], "--covey-only-n"),
        (["--rounds", "0"], "--rounds"),
        (["--big-rounds", "0"], "--big-rounds"),
        (["--large-n", "0"], "--large-n"),
        (["--large-rounds", "0"], "--large-rounds"),
        (["--repeat", "0"], "--repeat"),
        (["--timeout", "-1"], "--timeout"),
        (["--interval", "0"], "--interval"),
        (["--sampler-duty", "0"], "--sampler-duty"),
        (["--sampler-duty", "nan"], "--sampler-duty"),
        (["--idle-below", "25"], "--idle-below"),
        (["--idle-max-wait", "-5"], "--idle-max-wait"),
        (["--systems", ","], "--systems"),
    ],
)
def test_vs_flower_refuses_values_that_measure_nothing(
    bench_modules: dict[str, ModuleType],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    named: str,
) -> None:
    err = _refused(bench_modules["vs_flower"], argv, capsys)
    assert named in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--n", "0"], "--n"),
        (["--flower-n", "10", "0"], "--flower-n"),
        (["--tls-n", "-1"], "--tls-n"),
        (["--rounds", "0"], "--rounds"),
        (["--big-clients", "0"], "--big-clients"),
        (["--big-rounds", "0"], "--big-rounds"),
        (["--huge-clients", "0"], "--huge-clients"),
        (["--big-mb", "0"], "--big-mb"),
        (["--huge-gib", "-2"], "--huge-gib"),
        (["--timeout", "0"], "--timeout"),
        (["--interval", "0"], "--interval"),
        (["--sampler-duty", "0"], "--sampler-duty"),
        (["--mem-budget-gib", "0"], "--mem-budget-gib"),
        (["--idle-below", "25"], "--idle-below"),
        (["--systems", " , "], "--systems"),
    ],
)
def test_deploy_vs_flower_refuses_values_that_measure_nothing(
    bench_modules: dict[str, ModuleType],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    named: str,
) -> None:
    err = _refused(bench_modules["deploy_vs_flower"], argv, capsys)
    assert named in err


def test_deploy_vs_flower_keeps_the_documented_commands(
    bench_modules: dict[str, ModuleType],
) -> None:
    deploy = bench_modules["deploy_vs_flower"]
    args = deploy.parse_args([])
    assert args.n == [10, 100]
    assert args.big_rounds == 2
    assert "covey-inplace" in args.systems
    args = deploy.parse_args(
        [
            "--systems",
            "covey,sockets",
            "--no-digits",
            "--no-huge",
            "--load-max-wait",
            "10",
            "--tls-n",
            "--flower-n",
            "--mem-guard-gib",
            "0",
            "--big-mb",
            "0.5",
        ]
    )
    assert args.systems == ["covey", "sockets"]
    assert args.tls_n == []
    assert args.flower_n == []


def test_vs_flower_refuses_a_flower_python_that_is_not_there(
    bench_modules: dict[str, ModuleType], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-venv" / "bin" / "python"
    err = _refused(
        bench_modules["vs_flower"], ["--systems", "flower", "--flower-python", str(missing)], capsys
    )
    assert str(missing) in err
    assert "no such file" in err


def test_vs_flower_keeps_the_documented_commands(bench_modules: dict[str, ModuleType]) -> None:
    vs = bench_modules["vs_flower"]
    args = vs.parse_args([])
    assert args.n == [10, 100, 1000]
    assert args.systems == [
        "covey",
        "covey-process",
        "plain",
        "flower",
    ]
    args = vs.parse_args(
        [
            "--systems",
            "covey-process",
            "--n",
            "10",
            "--rounds",
            "1",
            "--large-client",
            "fresh",
            "--repeat",
            "3",
            "--interval",
            "0.002",
            "--sampler-duty",
            "1",
            "--idle-max-wait",
            "0",
        ]
    )
    assert args.systems == ["covey-process"]
    assert args.sampler_duty == 1
    # Without flower among the systems, a --flower-python not (yet) there is not used.
    args = vs.parse_args(["--systems", "plain", "--flower-python", "/nowhere/python"])
    assert args.systems == ["plain"]


def _npz(path: Path, **arrays: Any) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_max_abs_diff_never_calls_a_diverged_run_equal(
    bench_modules: dict[str, ModuleType], tmp_path: Path
) -> None:
    diff = bench_modules["_vs_flower_report"].max_abs_diff
    w = np.zeros((3, 2))
    b = np.array([0.5, -0.25])
    good = _npz(tmp_path / "good.npz", W=w, b=b)
    nan_w = w.copy()
    nan_w[1, 1] = np.nan
    diverged = _npz(tmp_path / "diverged.npz", W=nan_w, b=b)
    assert diff(good, good) == 0.0
    assert math.isnan(diff(good, diverged))
    assert math.isnan(diff(diverged, good))
    assert diff(diverged, diverged) == 0.0  # the same NaN in both: nothing differs
    inf_b = np.array([np.inf, -0.25])
    assert (
        diff(_npz(tmp_path / "i1.npz", W=w, b=inf_b), _npz(tmp_path / "i2.npz", W=w, b=inf_b)) == 0
    )
    shifted = _npz(tmp_path / "shifted.npz", W=w, b=b + np.array([0.0, 0.125]))
    assert diff(good, shifted) == 0.125
    assert math.isnan(diff(good, _npz(tmp_path / "other.npz", W=w)))


def _bench_run(system: str, weights: str) -> dict[str, Any]:
    numbers = ("wall_seconds", "sim_seconds", "cpu_seconds", "startup_seconds", "peak_pss_mb")
    shares = ("loadavg_before", "busy_before", "others_cpu_share", "sampler_cpu_share")
    return {
        "workload": "digits",
        "n_clients": 10,
        "system": system,
        "ok": True,
        "max_processes": 1,
        "final_accuracy": 0.9,
        "round_seconds": [1.0, 1.0],
        "round_peak_pss_mb": [1.0, 1.0],
        "weights_path": weights,
        **dict.fromkeys(numbers, 1.0),
        **dict.fromkeys(shares, 0.0),
    }


def test_every_repeat_is_compared_not_only_the_first(
    bench_modules: dict[str, ModuleType], tmp_path: Path
) -> None:
    # Before, only each system's first repeat was compared: a later repeat that
    # diverged or drifted was reported as matching covey.
    w = np.zeros((3, 2))
    good = _npz(tmp_path / "good.npz", W=w)
    drifted = _npz(tmp_path / "drifted.npz", W=w + 0.25)
    diverged = _npz(tmp_path / "diverged.npz", W=np.full((3, 2), np.nan))
    runs = [
        _bench_run("covey", good),
        _bench_run("plain", good),
        _bench_run("flower", good),
        _bench_run("covey", good),
        _bench_run("plain", drifted),
        _bench_run("flower", diverged),
    ]
    rows = {r["system"]: r for r in bench_modules["_vs_flower_report"].summarize(runs)}
    assert rows["covey"]["max_abs_diff_vs_covey"] == 0.0
    assert rows["plain"]["max_abs_diff_vs_covey"] == 0.25
    assert math.isnan(rows["flower"]["max_abs_diff_vs_covey"])
    assert math.isnan(rows["flower"]["max_abs_diff_vs_plain"])


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=120, check=False
    )


def test_runners_refuse_no_clients_and_no_rounds(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "r.json"), "--weights", str(tmp_path / "w.npz")]
    for flag in ("--n", "--rounds"):
        done = _run(str(BENCH / "run_plain.py"), flag, "0", *out)
        assert done.returncode == 2
        assert f"{flag} must be at least 1" in done.stderr
    assert not (tmp_path / "r.json").exists()


def _has_flwr() -> bool:
    return importlib.util.find_spec("flwr") is not None


@pytest.mark.skipif(_has_flwr(), reason="needs a Python without flwr")
def test_flower_runners_say_flwr_is_missing(tmp_path: Path) -> None:
    done = _run(str(BENCH / "run_flower.py"), "--help")
    assert done.returncode == 0
    assert "--workload" in done.stdout
    out = ["--out", str(tmp_path / "r.json"), "--weights", str(tmp_path / "w.npz")]
    done = _run(str(BENCH / "run_flower.py"), "--n", "2", "--rounds", "1", *out)
    assert done.returncode == 1
    assert "flwr is not installed" in done.stderr
    assert "Traceback" not in done.stderr
    missing = tmp_path / "python"
    done = _run(str(BENCH / "flower_parity.py"), "--flower-python", str(missing))
    assert done.returncode == 2
    assert f"{missing}: no such file" in done.stderr
    done = _run(str(BENCH / "flower_parity.py"), "--flower-python", sys.executable)
    assert done.returncode == 1
    assert "the Flower half failed" in done.stderr
    assert "No module named 'flwr'" in done.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_bench_flower_installs_what_its_systems_need() -> None:
    root = BENCH.parent
    done = subprocess.run(
        ["make", "-n", "-B", "bench-flower"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    run = next(line for line in lines if "benchmarks/vs_flower.py" in line)
    assert "covey-ray" in run
    # The covey-ray row runs in .venv: covey's ray extra must be installed there.
    assert any(".venv/bin/python -m pip install" in line and "[ray]" in line for line in lines)
    assert any("flwr[simulation]==1.42.0" in line for line in lines)


@pytest.fixture(scope="module")
def more_bench() -> Iterator[dict[str, ModuleType]]:
    sys.path.insert(0, str(BENCH))
    try:
        yield {
            name: importlib.import_module(name)
            for name in ("analytics_sites", "fleet_scale", "hostile_peers", "startup")
        }
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize(
    ("script", "argv", "named"),
    [
        ("analytics_sites", ["--sites", "1"], "--sites"),
        ("analytics_sites", ["--rows", "20"], "--rows"),
        ("analytics_sites", ["--repeat", "0"], "--repeat"),
        ("fleet_scale", ["--clients", "0"], "--clients"),
        ("fleet_scale", ["--procs", "0"], "--procs"),
        ("fleet_scale", ["--clients", "4", "--procs", "5"], "--procs"),
        ("fleet_scale", ["--rounds", "0"], "--rounds"),
        ("fleet_scale", ["--idle", "0"], "--idle"),
        ("fleet_scale", ["--fraction", "0"], "--fraction"),
        ("fleet_scale", ["--fraction", "1.5"], "--fraction"),
        ("fleet_scale", ["--heartbeat", "-1"], "--heartbeat"),
        ("fleet_scale", ["--deadline", "nan"], "--deadline"),
        ("hostile_peers", ["--rounds", "0"], "--rounds"),
        ("hostile_peers", ["--mb", "-1"], "--mb"),
        ("hostile_peers", ["--mb", "nan"], "--mb"),
        ("hostile_peers", ["stall", "flood"], "flood"),
        ("startup", ["--repeat", "0"], "--repeat"),
    ],
)
def test_analytics_fleet_and_hostile_scripts_refuse_values_that_measure_nothing(
    more_bench: dict[str, ModuleType],
    capsys: pytest.CaptureFixture[str],
    script: str,
    argv: list[str],
    named: str,
) -> None:
    err = _refused(more_bench[script], argv, capsys)
    assert named in err


def test_analytics_fleet_and_hostile_scripts_keep_the_documented_commands(
    more_bench: dict[str, ModuleType],
) -> None:
    args = more_bench["analytics_sites"].parse_args(
        ["--sites", "5", "--rows", "1000000", "--repeat", "3", "--json", "out.json"]
    )
    assert (args.sites, args.rows, args.repeat) == (5, 1_000_000, 3)
    fleet = more_bench["fleet_scale"].parse_args
    args = fleet(
        ["--clients", "300", "--procs", "2", "--idle", "30", "--rounds", "20", "--fraction", "0.1"]
    )
    assert (args.clients, args.procs, args.rounds, args.fraction) == (300, 2, 20, 0.1)
    assert (
        fleet(
            [
                "--clients",
                "300",
                "--procs",
                "2",
                "--idle",
                "5",
                "--rounds",
                "10",
                "--fraction",
                "1.0",
            ]
        ).idle
        == 5
    )
    # The children get the parent's flags and need no checking of their own.
    assert fleet(["--child", "clients", "--count", "3", "--procs", "0"]).count == 3
    assert more_bench["hostile_peers"].parse_args(["park", "stall", "empty"]).mb == 7.0


def test_analytics_sites_check_takes_no_missing_or_withheld_group_for_a_match(
    more_bench: dict[str, ModuleType],
) -> None:
    check = more_bench["analytics_sites"].check
    duck = pd.DataFrame({"condition": ["asthma", "copd"], "avg(age)": [50.0, 60.0]})
    ours = pd.DataFrame({"condition": ["copd", "asthma"], "AVG(age)": [60.0, 50.0]})
    check(ours, duck, "same")  # rows in another order
    with pytest.raises(AssertionError, match=r"no row for \['copd'\]"):
        check(ours.iloc[1:], duck, "missing")
    withheld = ours.assign(**{"AVG(age)": [60.0, np.nan]})
    with pytest.raises(AssertionError, match="'asthma' is nan"):
        check(withheld, duck, "withheld")


def test_fleet_scale_names_a_rounds_phase_that_did_not_finish(
    more_bench: dict[str, ModuleType], tmp_path: Path
) -> None:
    finished = more_bench["fleet_scale"].finished
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with sqlite3.connect(run_dir / "run.sqlite") as con:
        con.execute("CREATE TABLE rounds (round INTEGER PRIMARY KEY, record TEXT)")
        con.executemany("INSERT INTO rounds VALUES (?, '{}')", [(0,), (1,), (2,)])
    con.close()
    log = tmp_path / "server.log"
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    finished(done, run_dir, 2, 60.0, log)
    with pytest.raises(SystemExit, match="ran 2 of 3 rounds"):
        finished(done, run_dir, 3, 60.0, log)
    with pytest.raises(SystemExit, match="ran 0 of 3 rounds"):
        finished(done, tmp_path / "nothing", 3, 60.0, log)
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    failed.wait()
    with pytest.raises(SystemExit, match="exit status 3"):
        finished(failed, run_dir, 2, 60.0, log)
    going = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(SystemExit, match="not over within --deadline 60 s"):
            finished(going, run_dir, 2, 60.0, log)
    finally:
        going.kill()
        going.wait()


def test_hostile_peers_stops_when_its_server_ends_before_listening(
    more_bench: dict[str, ModuleType], tmp_path: Path
) -> None:
    listening = more_bench["hostile_peers"]._listening
    port_file, log = tmp_path / "port", tmp_path / "server.log"
    ended = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(SystemExit, match=r"exited \(status 1\) before it listened"):
        listening(ended, port_file, log)
    port_file.write_text("4321")
    up = subprocess.Popen([sys.executable, "-c", "pass"])
    up.wait()
    assert listening(up, port_file, log) == 4321


@pytest.mark.parametrize("rounds", [0, 5])
def test_fleet_scale_serves_a_fleet_of_1000_within_the_server_cap(
    more_bench: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rounds: int
) -> None:
    # The idle phase waits for one client more than --clients: 1001 passed the default
    # max_clients=1000, and the server refused to start.
    import covey.deploy
    from covey.deploy._servechecks import check_capacity

    served: list[int] = []

    def serve(strategy: Any, *args: Any, max_clients: int = 1000, **kwargs: Any) -> None:
        check_capacity(strategy, max_clients)  # as covey.deploy.serve does first
        served.append(strategy.min_available_clients)

    monkeypatch.setattr(covey.deploy, "serve", serve)
    fleet = more_bench["fleet_scale"]
    args = fleet.parse_args(["--child", "server", "--clients", "1000", "--rounds", str(rounds)])
    args.log, args.run_dir = str(tmp_path / "server.log"), str(tmp_path / "run")
    fleet.serve_child(args)
    assert served == [1001 if rounds == 0 else 1000]


@pytest.mark.timeout(120)
def test_fleet_scale_stops_at_once_when_its_server_cannot_start(tmp_path: Path) -> None:
    # A heartbeat over a day passes the script's flags but not serve(): the server
    # exits at once, and the script used to wait for its port until --deadline.
    flags = ["--clients", "2", "--procs", "1", "--heartbeat", "1e6", "--deadline", "600"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "fleet_scale.py"), *flags, "--idle", "1", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode != 0
    assert "heartbeat must be between" in done.stderr
    assert "idle phase: the server exited (exit status 1) before it listened" in done.stderr


@pytest.mark.timeout(150)
def test_tls_data_port_moves_a_small_message_both_ways_with_and_without_tls() -> None:
    flags = ["--mb", "1", "--clients", "2", "--rounds", "1"]
    done = _run(str(BENCH / "tls_data_port.py"), *flags)
    assert done.returncode == 0, done.stderr
    plain, tls = done.stdout.splitlines()
    assert plain.startswith("plain: cipher None;")
    assert tls.startswith("tls: cipher (")
    assert "TLSv1." in tls


def test_tls_data_port_refuses_an_empty_message_and_unknown_modes() -> None:
    for flags, said in ((["--mb", "0"], "at least 1"), (["--modes", "ssl"], "unknown mode")):
        done = _run(str(BENCH / "tls_data_port.py"), *flags)
        assert done.returncode == 2
        assert said in done.stderr
