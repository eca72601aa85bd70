"""The summary and report of ``vs_flower.py``: medians over repeats, ratios, markdown.

Every table is rendered by the shared writer in ``_mdtable.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from typing import Any

import numpy as np
from _machine import cpu_model
from _mdtable import fmt, table
from _vs_flower_ray import ray_ratios, ray_table

__all__ = ["machine_info", "markdown", "ratios", "summarize"]


def max_abs_diff(path_a: str, path_b: str) -> float:
    """The largest absolute difference between two runs' final weights (.npz).

    NaN where the two cannot be compared (other names or shapes) or where one run
    holds a NaN the other does not: a run that diverged is never reported as
    matching. Entries equal in both (the same infinity, NaN in both) differ by 0.
    """
    with np.load(path_a) as a, np.load(path_b) as b:
        if sorted(a.files) != sorted(b.files):
            return float("nan")
        worst = 0.0
        for k in a.files:
            x, y = a[k].astype(np.float64), b[k].astype(np.float64)
            if x.shape != y.shape:
                return float("nan")
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            with np.errstate(invalid="ignore"):
                diff = np.where(same, 0.0, np.abs(x - y))
            if np.isnan(diff).any():
                return float("nan")
            if diff.size:
                worst = max(worst, float(diff.max()))
        return worst


def worst_diff(ref_path: str, paths: list[str]) -> float:
    """The largest :func:`max_abs_diff` of every repeat's weights against one reference.

    NaN as soon as one repeat cannot be compared, so a single diverged repeat is never
    hidden behind the others.
    """
    worst = 0.0
    for path in paths:
        diff = max_abs_diff(ref_path, path)
        if np.isnan(diff):
            return diff
        worst = max(worst, diff)
    return worst


def _median(values: list[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, N, system): medians over repeats, diffs vs covey."""
    keys: list[tuple[str, int, str]] = []
    for r in runs:
        key = (r["workload"], r["n_clients"], r["system"])
        if key not in keys:
            keys.append(key)
    rows = []
    for workload, n, system in keys:
        group = [
            r for r in runs if (r["workload"], r["n_clients"], r["system"]) == (workload, n, system)
        ]
        ok = [r for r in group if r["ok"]]
        row: dict[str, Any] = {
            "workload": workload,
            "n_clients": n,
            "system": system,
            "runs": len(group),
            "ok_runs": len(ok),
            "errors": [r["error"] for r in group if not r["ok"]],
        }
        if ok:
            row.update(
                wall_seconds=_median([r["wall_seconds"] for r in ok]),
                wall_seconds_all=[r["wall_seconds"] for r in ok],
                sim_seconds=_median([r["sim_seconds"] for r in ok]),
                cpu_seconds=_median([r["cpu_seconds"] for r in ok]),
                loadavg_before=max(r["loadavg_before"] for r in ok),
                busy_before=max(r["busy_before"] for r in ok),
                others_cpu_share=max(r["others_cpu_share"] for r in ok),
                sampler_cpu_share=max(r["sampler_cpu_share"] for r in ok),
                startup_seconds=_median([r["startup_seconds"] for r in ok]),
                peak_pss_mb=_median([r["peak_pss_mb"] for r in ok]),
                peak_pss_mb_all=[r["peak_pss_mb"] for r in ok],
                max_processes=max(r["max_processes"] for r in ok),
                final_accuracy=ok[0]["final_accuracy"],
                final_accuracy_all=[r["final_accuracy"] for r in ok],
                round_seconds=ok[0]["round_seconds"],
                # Rounds after the first: the first includes starting workers and clients.
                round_median=_median(
                    [_median(r["round_seconds"][1:] or r["round_seconds"]) or 0.0 for r in ok]
                ),
                round_peak_pss_mb=ok[0]["round_peak_pss_mb"],
                baseline_pss_mb=ok[0].get("baseline_pss_mb"),
                above_baseline_mb=ok[0].get("above_baseline_mb"),
                above_baseline_model_copies=ok[0].get("above_baseline_model_copies"),
                above_baseline_model_copies_all=[r.get("above_baseline_model_copies") for r in ok],
                above_baseline_model_copies_exact_all=[
                    r.get("above_baseline_model_copies_exact") for r in ok
                ],
                weights_path=ok[0]["weights_path"],
                weights_paths=[r["weights_path"] for r in ok],
            )
        rows.append(row)
    for row in rows:
        ref = next(
            (
                r
                for r in rows
                if r["system"] == "covey"
                and (r["workload"], r["n_clients"]) == (row["workload"], row["n_clients"])
                and r.get("weights_path")
            ),
            None,
        )
        if ref is not None and row.get("weights_path"):
            # Every repeat against covey's first: covey's own row shows its repeats agree.
            row["max_abs_diff_vs_covey"] = worst_diff(ref["weights_path"], row["weights_paths"])
        plain = next(
            (
                r
                for r in rows
                if r["system"] == "plain"
                and (r["workload"], r["n_clients"]) == (row["workload"], row["n_clients"])
                and r.get("weights_path")
            ),
            None,
        )
        if plain is not None and row.get("weights_path"):
            row["max_abs_diff_vs_plain"] = worst_diff(plain["weights_path"], row["weights_paths"])
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration, the ratios covey/plain and Flower/covey of time, CPU and memory."""
    out = []
    configs = []
    for r in rows:
        if (r["workload"], r["n_clients"]) not in configs:
            configs.append((r["workload"], r["n_clients"]))
    for workload, n in configs:
        by = {
            r["system"]: r
            for r in rows
            if (r["workload"], r["n_clients"]) == (workload, n) and r.get("ok_runs")
        }

        def ratio(a: str, b: str, key: str, by: dict[str, dict[str, Any]] = by) -> float | None:
            if a in by and b in by and by[b].get(key):
                return float(by[a][key] / by[b][key])
            return None

        out.append(
            {
                "workload": workload,
                "n_clients": n,
                "wall_covey_over_plain": ratio("covey", "plain", "wall_seconds"),
                "wall_flower_over_covey": ratio("flower", "covey", "wall_seconds"),
                "sim_covey_over_plain": ratio("covey", "plain", "sim_seconds"),
                "sim_flower_over_covey": ratio("flower", "covey", "sim_seconds"),
                "cpu_covey_over_plain": ratio("covey", "plain", "cpu_seconds"),
                "cpu_flower_over_covey": ratio("flower", "covey", "cpu_seconds"),
                "mem_covey_over_plain": ratio("covey", "plain", "peak_pss_mb"),
                "mem_flower_over_covey": ratio("flower", "covey", "peak_pss_mb"),
                **ray_ratios(by),
            }
        )
    return out


def machine_info(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The machine and each runner's Python, NumPy, BLAS and package versions."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "mem_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "orchestrator_python": platform.python_version(),
        "orchestrator_numpy": np.__version__,
        "pss_available": all(r.get("pss_fallbacks", 0) == 0 for r in runs),
    }
    envs: dict[str, dict[str, Any]] = {}
    for r in runs:
        rep = r.get("report")
        if rep and r["system"] not in envs:
            blas = [
                b
                for b in rep.get("blas", [])
                if b.get("internal_api") == "openblas" and "numpy" in str(b.get("filepath"))
            ]
            envs[r["system"]] = {
                "python": rep["python"],
                "numpy": rep["numpy"],
                "versions": rep["versions"],
                "blas": blas[:1],
            }
    info["runners"] = envs
    return info


def _failed(r: dict[str, Any]) -> str:
    """What went wrong in a row's runs, for one table cell."""
    return "; ".join(r["errors"])[:300].replace("|", "/")


def digits_table(rows: list[dict[str, Any]]) -> list[str]:
    """One row per digits configuration and system."""
    lines: list[list[str] | str] = []
    for r in rows:
        if r["workload"] != "digits":
            continue
        if not r.get("ok_runs"):
            lines.append(f"| {r['n_clients']} | {r['system']} | FAILED: {_failed(r)} |||||||||||")
            continue
        lines.append(
            [
                str(r["n_clients"]),
                r["system"],
                fmt(r["wall_seconds"]),
                fmt(r["startup_seconds"]),
                fmt(r["sim_seconds"], "{:.3f}"),
                fmt(r["cpu_seconds"]),
                fmt(r["peak_pss_mb"], "{:.0f}"),
                str(r["max_processes"]),
                fmt(r["final_accuracy"], "{:.4f}"),
                fmt(r.get("max_abs_diff_vs_covey"), "{:.1e}"),
                fmt(r.get("max_abs_diff_vs_plain"), "{:.1e}"),
                f"{fmt(100 * r['others_cpu_share'], '{:.0f}')} %",
            ]
        )
    header = [
        "N",
        "system",
        "wall s",
        "of which setup s",
        "simulate s",
        "CPU s",
        "peak PSS MB",
        "procs",
        "final acc",
        "max abs diff vs covey",
        "vs plain",
        "other load",
    ]
    return table(header, ["---:", "---", *["---:"] * 10], lines)


def ratio_table(rat: list[dict[str, Any]]) -> list[str]:
    """The ratios of wall time, simulate time, CPU and peak memory per configuration."""
    keys = (
        "wall_covey_over_plain",
        "wall_flower_over_covey",
        "sim_covey_over_plain",
        "sim_flower_over_covey",
        "cpu_covey_over_plain",
        "cpu_flower_over_covey",
        "mem_covey_over_plain",
        "mem_flower_over_covey",
    )
    rows = [[r["workload"], str(r["n_clients"]), *(fmt(r[k]) for k in keys)] for r in rat]
    header = [
        "workload",
        "N",
        "wall covey/plain",
        "wall flwr/covey",
        "simulate covey/plain",
        "simulate flwr/covey",
        "CPU covey/plain",
        "CPU flwr/covey",
        "peak mem covey/plain",
        "peak mem flwr/covey",
    ]
    return table(header, ["---", *["---:"] * 9], rows)


def _each_run(row: dict[str, Any]) -> str:
    """The model copies of every run when there were several, and of the exact reads alone."""
    runs = row.get("above_baseline_model_copies_all") or []
    exact = [x for x in row.get("above_baseline_model_copies_exact_all") or [] if x is not None]
    said = f"; runs: {', '.join(fmt(x, '{:.2f}') for x in runs)}" if len(runs) > 1 else ""
    if exact:
        said += f"; exact reads: {', '.join(fmt(x, '{:.2f}') for x in exact)}"
    return said


def large_table(rows: list[dict[str, Any]]) -> list[str]:
    """One row per system on the large model: times, memory above baseline, model copies."""
    lines: list[list[str] | str] = []
    for r in rows:
        if r["workload"] != "large":
            continue
        if not r.get("ok_runs"):
            lines.append(f"| {r['system']} | FAILED: {_failed(r)} |||||||||||")
            continue
        lines.append(
            [
                r["system"],
                fmt(r["wall_seconds"]),
                fmt(r["sim_seconds"]),
                fmt(r["cpu_seconds"]),
                ", ".join(fmt(x) for x in r["round_seconds"]),
                fmt(r["peak_pss_mb"], "{:.0f}"),
                fmt(r["baseline_pss_mb"], "{:.0f}"),
                f"{fmt(r['above_baseline_mb'], '{:.0f}')} MB "
                f"({fmt(r['above_baseline_model_copies'], '{:.1f}')})" + _each_run(r),
                ", ".join(fmt(x, "{:.0f}") for x in r["round_peak_pss_mb"]),
                fmt(r.get("max_abs_diff_vs_covey"), "{:.1e}"),
                fmt(r.get("max_abs_diff_vs_plain"), "{:.1e}"),
                f"{fmt(100 * r['others_cpu_share'], '{:.0f}')} %",
            ]
        )
    header = [
        "system",
        "wall s",
        "simulate s",
        "CPU s",
        "per-round s",
        "peak PSS MB",
        "baseline MB",
        "above baseline (model copies)",
        "per-round peak MB",
        "max abs diff vs covey",
        "vs plain",
        "other load",
    ]
    align = ["---", "---:", "---:", "---:", "---", "---:", "---:", "---:", "---", "---:", "---:"]
    return table(header, [*align, "---:"], lines)


def machine_lines(info: dict[str, Any]) -> list[str]:
    """The machine, as markdown list items."""
    lines = [
        f"- CPU: {info['cpu_model']}, nproc {info['nproc']}, "
        f"{info['mem_total_gb']:.0f} GiB RAM, Linux {info['kernel']}",
        f"- OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE'] or '(unset)'}, "
        f"OPENBLAS_L2_SIZE={info['OPENBLAS_L2_SIZE'] or '(unset)'} "
        "(inherited unchanged by every runner)",
    ]
    if info.get("bytecode"):
        lines.append(f"- Bytecode: {info['bytecode']}")
    for system, env in info["runners"].items():
        versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        blas = env["blas"][0] if env["blas"] else {}
        blas_s = (
            f", OpenBLAS {blas.get('version')} ({blas.get('architecture')}, "
            f"{blas.get('num_threads')} threads)"
            if blas
            else ""
        )
        lines.append(
            f"- {system}: Python {env['python']}, NumPy {env['numpy']}"
            + (f", {versions}" if versions else "")
            + blas_s
        )
    if not info["pss_available"]:
        lines.append("- PSS was not readable for some processes; RSS was used for those")
    return lines


def markdown(
    command: str,
    args: argparse.Namespace,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    rat: list[dict[str, Any]],
    stamp: str,
) -> str:
    """The markdown section of one invocation: command, machine, tables."""
    parts = [
        f"### Run of {stamp}",
        "",
        "Command:",
        "",
        "```sh",
        command,
        "```",
        "",
        "Machine:",
        "",
        *machine_lines(info),
        "",
    ]
    if any(r["workload"] == "digits" for r in rows):
        parts += [
            f"#### Digits, logistic regression, R = {args.rounds} "
            f"({args.big_rounds} from N = {args.big_n:,})",
            "",
            *digits_table(rows),
            "",
        ]
    parts += ["#### Ratios", "", *ratio_table(rat), ""]
    if any(r["system"] == "covey-ray" for r in rows):
        parts += ["#### Ray backends: covey vs Flower", "", *ray_table(rows, rat), ""]
    if any(r["workload"] == "large" for r in rows):
        parts += [
            f"#### Large model: 10,000,000 float32 (40 MB), N = {args.large_n}, "
            f"R = {args.large_rounds}, covey's client: "
            f"{getattr(args, 'large_client', 'standard')}",
            "",
            *large_table(rows),
            "",
        ]
    return "\n".join(parts)
