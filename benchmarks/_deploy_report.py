"""The report of ``deploy_vs_flower.py``: markdown tables, ratios, targets, result files.

Every table is rendered by the shared writer in ``_mdtable.py``; the report is
printed and written to ``results/deploy_vs_flower-<stamp>.{json,md}``, and can
be rebuilt from an earlier invocation's folder (``--report-from``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _deploy_measure import machine_info
from _mdtable import fmt, table, write_results

__all__ = ["markdown", "report_from", "status_text", "write_report"]

_LABELS = {
    "covey": "covey deployed, insecure",
    "covey-tls": "covey deployed, mutual TLS",
    "covey-inplace": "covey deployed, insecure, client trains in place (writes_weights)",
    "covey-sim": "covey.simulate (inline, 1 process)",
    "flower": "Flower 1.42 deployed, insecure",
    "sockets": "raw TCP sockets",
}


def status_text(r: dict[str, Any]) -> str:
    """A run's status for a table cell: "completed", or what stopped it and how far it got."""
    s = str(r.get("status", "?"))
    if s == "ok":
        return "completed"
    done = r.get("rounds_done")
    return f"{s} ({done} of {r['rounds']} rounds done)".replace("|", "/")


def _label(r: dict[str, Any]) -> str:
    """The system of a run, in words."""
    return _LABELS[r["system"]]


def _mb(value: Any) -> str:
    """A size in MB, to the unit."""
    return fmt(value, "{:.0f}")


def digits_table(runs: list[dict[str, Any]]) -> list[str]:
    """One row per digits run: round times, wall time, accuracy, memory, CPU."""
    order = {s: i for i, s in enumerate(("covey-sim", "covey", "covey-tls", "flower"))}
    rows = []
    for r in sorted(
        (r for r in runs if r["part"] == "digits"), key=lambda r: (r["n"], order[r["system"]])
    ):
        big = r.get("max_process_pss_mb", {})
        rows.append(
            [
                str(r["n"]),
                _label(r),
                status_text(r),
                fmt(r.get("round_median_seconds"), "{:.4f}"),
                fmt(r.get("history_median_seconds"), "{:.4f}"),
                fmt(r.get("round1_seconds")),
                fmt(r.get("wall_seconds"), "{:.1f}"),
                fmt(r.get("final_accuracy"), "{:.4f}"),
                _mb(r.get("peak_pss_mb")),
                str(r.get("max_processes", "–")),
                f"{_mb(big.get('server', {}).get('pss_mb'))} / "
                f"{_mb(big.get('client', {}).get('pss_mb'))}",
                fmt(r.get("cpu_seconds"), "{:.1f}"),
                f"{fmt(100 * r['others_cpu_share'], '{:.0f}')} %",
            ]
        )
    header = [
        "N",
        "system",
        "status",
        "per-round s (median, rounds 2+)",
        "history s/round",
        "round 1 s",
        "wall s",
        "final acc",
        "peak PSS MB (all procs)",
        "procs",
        "largest process MB (server / client)",
        "CPU s",
        "other load",
    ]
    return table(header, ["---:", "---", "---", *["---:"] * 7, "---", "---:", "---:"], rows)


def overhead_table(runs: list[dict[str, Any]]) -> list[str]:
    """Per round, covey deployed (insecure and TLS) against covey.simulate."""
    by = {(r["system"], r["n"]): r for r in runs if r["part"] == "digits"}
    rows = []
    for n in sorted({r["n"] for r in runs if r["part"] == "digits" and r["system"] != "flower"}):
        sim = (by.get(("covey-sim", n)) or {}).get("round_median_seconds")
        cells = [str(n), fmt(sim, "{:.4f}")]
        for system in ("covey", "covey-tls"):
            dep = (by.get((system, n)) or {}).get("round_median_seconds")
            over = dep - sim if dep is not None and sim is not None else None
            ratio = dep / sim if dep is not None and sim else None
            cells += [fmt(dep, "{:.4f}"), fmt(over, "{:.4f}"), fmt(ratio, "{:.1f}")]
        rows.append(cells)
    header = [
        "N",
        "simulate s/round",
        "deployed insecure s/round",
        "overhead s/round",
        "ratio",
        "deployed TLS s/round",
        "overhead s/round",
        "ratio",
    ]
    return table(header, ["---:"] * 8, rows)


def _each(values: list[Any], spec: str = "{:.2f}") -> str:
    """A list of numbers in one cell, "–" if empty."""
    return ", ".join(fmt(x, spec) for x in values) or "–"


def big_table(runs: list[dict[str, Any]], part: str) -> list[str]:
    """One row per run of the big (or huge) model: throughput, memory, model copies."""
    rows = []
    for r in runs:
        if r["part"] != part:
            continue
        big = r.get("max_process_pss_mb", {})
        copies = r.get("copies", {})
        cpu = r.get("cpu_seconds_by_role", {})
        rows.append(
            [
                _label(r),
                status_text(r),
                _each(r.get("round_seconds", [])),
                _each(r.get("gbps_per_round", [])),
                _each(r.get("gbps_fit_per_round", [])),
                _mb(r.get("peak_pss_mb")),
                f"{_mb(r.get('server_mb_at_round0'))} / "
                f"{_each(r.get('round_peak_server_mb', []), '{:.0f}')}",
                f"{_mb(big.get('server', {}).get('pss_mb'))} "
                f"({fmt(copies.get('server'), '{:.2f}')}; "
                f"{fmt(r.get('copies_above_start', {}).get('server'), '{:.2f}')} above start)",
                f"{_mb(big.get('client', {}).get('pss_mb'))} "
                f"({fmt(copies.get('client'), '{:.2f}')}; "
                f"{fmt(r.get('copies_above_start', {}).get('client'), '{:.2f}')} above start)",
                f"{fmt(cpu.get('server'), '{:.1f}')} / {fmt(cpu.get('client'), '{:.1f}')}",
                fmt(r.get("final_max_error"), "{:.1e}"),
            ]
        )
    header = [
        "system",
        "status",
        "per-round s",
        "GB/s per round (wall)",
        "GB/s (covey history fit)",
        "peak PSS MB (all)",
        "server side MB: before round 1 / peak per round",
        "largest server process MB (copies; above its start-up plateau)",
        "largest client process MB (copies; above its start-up plateau)",
        "CPU s: server side / client side",
        "max error",
    ]
    align = ["---", "---", "---", "---", "---", "---:", "---", "---:", "---:", "---", "---:"]
    return table(header, align, rows)


def _get(runs: list[dict[str, Any]], part: str, system: str, n: int | None = None) -> Any:
    """The first run of ``part`` and ``system`` (and ``n`` if given), or None."""
    for r in runs:
        if r["part"] == part and r["system"] == system and (n is None or r["n"] == n):
            return r
    return None


def _ok(r: dict[str, Any] | None) -> bool:
    """Whether a run exists and completed."""
    return bool(r) and r.get("status") == "ok"


def ratios(runs: list[dict[str, Any]]) -> list[str]:
    """Flower against covey: time, memory and wall time per N; throughput and copies per model."""
    rows = []
    for n in sorted({r["n"] for r in runs if r["part"] == "digits"}):
        c, f = _get(runs, "digits", "covey", n), _get(runs, "digits", "flower", n)
        if not (c and f):
            continue
        for key, what, spec in (
            ("round_median_seconds", "s per round", "{:.4f}"),
            ("peak_pss_mb", "peak PSS MB, all processes", "{:.0f}"),
            ("wall_seconds", "wall s", "{:.1f}"),
        ):
            a, b = c.get(key), f.get(key)
            if key == "wall_seconds" and not _ok(f):
                b = None
            ratio = b / a if a and b is not None else None
            note = "" if _ok(f) else f" (Flower: {f.get('rounds_done')} of {f['rounds']} rounds)"
            rows.append(
                [f"digits N={n}: {what}{note}", fmt(a, spec), fmt(b, spec), fmt(ratio, "{:.1f}")]
            )
    for part in ("big", "huge"):
        c, f = _get(runs, part, "covey"), _get(runs, part, "flower")
        if not (c and f and _ok(c) and _ok(f)):
            continue
        gc, gf = max(c.get("gbps_per_round") or [0]), max(f.get("gbps_per_round") or [0])
        rows.append(
            [f"{part} model: best GB/s", f"{gc:.2f}", f"{gf:.2f}", fmt(gf / gc if gc else None)]
        )
        for role in ("server", "client"):
            a, b = c.get("copies", {}).get(role), f.get("copies", {}).get(role)
            rows.append(
                [
                    f"{part} model: largest {role} process, model copies",
                    fmt(a),
                    fmt(b),
                    fmt(b / a if a and b is not None else None),
                ]
            )
    header = ["comparison", "covey", "Flower", "Flower / covey"]
    return table(header, ["---", "---:", "---:", "---:"], rows)


def targets(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The targets covey set itself, each with what was measured and hit or miss."""
    rows = []
    c10 = _get(runs, "digits", "covey", 10)
    if c10 is not None:
        v = c10.get("round_median_seconds")
        hit = _ok(c10) and v is not None and v < 0.1
        rows.append(
            [
                "tiny-model round at N=10 in tens of milliseconds (< 100 ms)",
                f"{fmt(v and v * 1000, '{:.1f}')} ms per round (median, rounds 2+; "
                f"history {fmt((c10.get('history_median_seconds') or 0) * 1000, '{:.1f}')} ms)",
                "hit" if hit else "miss",
            ]
        )
    c100 = _get(runs, "digits", "covey", 100)
    if c100 is not None:
        rows.append(
            [
                "N=100 client processes run to the end",
                f"{status_text(c100)}, {c100.get('rounds_done')} of {c100['rounds']} rounds, "
                f"{c100.get('max_processes')} processes",
                "hit" if _ok(c100) else "miss",
            ]
        )
    big = _get(runs, "big", "covey")
    if big is not None:
        g = max(big.get("gbps_per_round") or [0])
        copies = big.get("copies", {})
        worst = max(copies.values()) if copies else None
        rows.append(
            [
                f"{args.big_mb:g} MB exchange at >= 0.8 GB/s",
                f"best round {g:.2f} GB/s (wall between evaluations)",
                "hit" if _ok(big) and g >= 0.8 else "miss",
            ]
        )
        rows.append(
            [
                "at most 3 model copies in any one process",
                f"server {fmt(copies.get('server'))}, client {fmt(copies.get('client'))} copies",
                "hit" if worst is not None and worst <= 3 else "miss",
            ]
        )
    for system, how in (("covey", "returning new arrays"), ("covey-inplace", "training in place")):
        run = _get(runs, "big", system)
        if run is None:
            continue
        copies = run.get("copies", {})
        server, client = copies.get("server"), copies.get("client")
        above = run.get("copies_above_start", {}).get("client")
        rows.append(
            [
                f"server at most 2.5, client at most 2 model copies (client {how})",
                f"server {fmt(server)}, client {fmt(client)} copies "
                f"(client {fmt(above)} above its start-up plateau)",
                "hit"
                if _ok(run)
                and server is not None
                and client is not None
                and server <= 2.5
                and client <= 2
                else "miss",
            ]
        )
    return table(["target", "measured", "verdict"], ["---", "---", "---"], rows)


def markdown(
    command: str, info: dict[str, Any], runs: list[dict[str, Any]], args: argparse.Namespace
) -> str:
    """The markdown section of one invocation: machine, tables, ratios, targets."""
    stamp = info["stamp"]
    parts = [
        f"### Run of {stamp}",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Machine: {info['cpu_model']}, nproc {info['nproc']}, "
        f"{info['mem_total_gib']:.0f} GiB RAM, Linux {info['kernel']}, Python {info['python']}; "
        f"covey {info.get('covey')}, grpcio {info.get('grpcio')}, NumPy {info.get('numpy')}; "
        f"flwr {info.get('flwr', '–')}. covey source: {info['covey_source']['files']} files, "
        f"sha256 {info['covey_source']['sha256']}, newest {info['covey_source']['newest_mtime']}. "
        f"Load average before the first run: {info['loadavg_start']:.2f}. Writing 1 GB of new "
        f"memory: {info['memory_first_touch']['after_idle_gbps']:.2f} GB/s after 5 s idle, "
        f"{info['memory_first_touch']['again_gbps']:.2f} GB/s right after (freed memory "
        "goes back to the hypervisor within seconds, and touching it again is slow)."
        + (f" Bytecode: {info['bytecode']}." if info.get("bytecode") else "")
        + _data_port_line(info)
        + (
            " (Machine figures measured when the report was rebuilt, not during the runs.)"
            if info.get("measured_at_report_time")
            else ""
        ),
        "",
    ]
    if any(r["part"] == "digits" for r in runs):
        parts += [
            f"#### Digits, FedAvg over all N clients, R = {args.rounds}",
            "",
            *digits_table(runs),
            "",
            "##### covey deployed vs covey.simulate, per round",
            "",
            *overhead_table(runs),
            "",
        ]
    for part, title in (
        (
            "big",
            f"{args.big_mb:g} MB model (float32), {args.big_clients} clients, "
            f"{args.big_rounds} round(s)",
        ),
        ("huge", f"{args.huge_gib:g} GiB model (float32), {args.huge_clients} client(s), 1 round"),
    ):
        if any(r["part"] == part for r in runs):
            parts += [f"#### {title}", "", *big_table(runs, part), ""]
    parts += ["#### covey vs Flower", "", *ratios(runs), ""]
    parts += ["#### Targets", "", *targets(runs, args), ""]
    return "\n".join(parts)


def write_report(
    command: str,
    info: dict[str, Any],
    runs: list[dict[str, Any]],
    args: argparse.Namespace,
    total_seconds: float | None,
) -> None:
    """Print the report and write it, with every run's measurements, to ``args.out_dir``."""
    md = markdown(command, info, runs, args)
    print()
    print(md)
    result = {
        "command": command,
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "total_seconds": total_seconds,
        "runs": runs,
    }
    json_path, md_path = write_results(args.out_dir, "deploy_vs_flower", info["stamp"], result, md)
    print(f"\nwrote {json_path}\nwrote {md_path}")


def report_from(folder: Path, args: argparse.Namespace) -> int:
    """Rebuild the report of an earlier invocation from its ``partial.json`` and ``run.json``."""
    runs = json.loads((folder / "partial.json").read_text())
    meta_path = folder / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    run_args = args
    if "args" in meta:
        saved = {**meta["args"], "out_dir": args.out_dir}
        saved["flower_bin"] = Path(saved["flower_bin"])
        run_args = argparse.Namespace(**saved)
    command = meta.get("command", "(unknown: no run.json)")
    info = meta.get("machine")
    if info is None:  # an invocation that stopped before writing run.json: measure now
        info = machine_info(args)
        info["measured_at_report_time"] = True
        info["stamp"] = folder.name.removeprefix("deploy-")
        info["loadavg_start"] = runs[0].get("loadavg_before", float("nan")) if runs else 0.0
    write_report(command, info, runs, run_args, None)
    return 0


def _data_port_line(info: dict[str, Any]) -> str:
    """How the covey servers moved the arrays (reports before the option say nothing)."""
    if "data_port" not in info:
        return ""
    if info["data_port"]:
        return " covey servers: `--data-port 0` (arrays on data connections beside the streams)."
    return " covey servers: no data port (arrays as chunk frames on the gRPC streams)."
