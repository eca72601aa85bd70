"""The Ray section of the vs_flower report: covey's Ray backend vs Flower's, per round and memory.

Rounds after the first are what a long simulation costs per round; round 1
also starts the workers and builds the clients, and is shown apart.
"""

from __future__ import annotations

from typing import Any


def _f(value: Any, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def ray_ratios(by: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Flower over covey-ray for one configuration (rows by system)."""

    def ratio(a: str, b: str, key: str) -> float | None:
        if a in by and b in by and by[b].get(key):
            return float(by[a][key] / by[b][key])
        return None

    return {
        "round_flower_over_covey_ray": ratio("flower", "covey-ray", "round_median"),
        "sim_flower_over_covey_ray": ratio("flower", "covey-ray", "sim_seconds"),
        "wall_flower_over_covey_ray": ratio("flower", "covey-ray", "wall_seconds"),
        "mem_covey_ray_over_flower": ratio("covey-ray", "flower", "peak_pss_mb"),
    }


def ray_table(rows: list[dict[str, Any]], rat: list[dict[str, Any]]) -> list[str]:
    """Per-round time (median of rounds 2..R) and memory of every system, and Flower's ratios."""
    lines = [
        "| N | R | system | wall s | simulate s | round s (median, rounds 2..R) | round 1 s "
        "| peak PSS MB | procs |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["workload"] != "digits" or not r.get("ok_runs"):
            continue
        lines.append(
            f"| {r['n_clients']} | {len(r['round_seconds'])} | {r['system']} "
            f"| {_f(r['wall_seconds'])} | {_f(r['sim_seconds'])} "
            f"| {_f(r['round_median'], '{:.3f}')} | {_f(r['round_seconds'][0])} "
            f"| {_f(r['peak_pss_mb'], '{:.0f}')} | {r['max_processes']} |"
        )
    lines += [
        "",
        "| N | per round flwr/covey-ray | simulate flwr/covey-ray | wall flwr/covey-ray "
        "| peak mem covey-ray/flwr |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rat:
        if r["workload"] == "digits":
            lines.append(
                f"| {r['n_clients']} | {_f(r.get('round_flower_over_covey_ray'), '{:.1f}')} "
                f"| {_f(r.get('sim_flower_over_covey_ray'), '{:.1f}')} "
                f"| {_f(r.get('wall_flower_over_covey_ray'), '{:.1f}')} "
                f"| {_f(r.get('mem_covey_ray_over_flower'))} |"
            )
    return lines
