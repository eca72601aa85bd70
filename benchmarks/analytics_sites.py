"""Federated SQL over five sites of a million rows each, against DuckDB on the pooled data.

Generates the sites' patient tables with a seed (one Parquet file per site),
then times, for each query: the federated answer without secure aggregation,
the same with secure aggregation (SecAgg over the sites' fixed-point answers),
and DuckDB running the same SQL over all the rows pooled in one table. Every
run uses a slightly different WHERE threshold, so no site answers from its
cache. The federated answers are checked against DuckDB's before timing.

    .venv/bin/python benchmarks/analytics_sites.py --sites 5 --rows 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from covey.analytics import Policy, Site, query

CONDITIONS = ["diabetes", "asthma", "copd", "hypertension", "cancer"]
QUERIES = {
    "mean": "SELECT condition, AVG(age), COUNT(*) FROM patients WHERE age > {t} GROUP BY condition",
    "spread": (
        "SELECT condition, AVG(age), STDDEV_SAMP(age), COUNT(*) FROM patients "
        "WHERE age > {t} GROUP BY condition"
    ),
    "median": "SELECT condition, MEDIAN(age) FROM patients WHERE age > {t} GROUP BY condition",
}


def make_site_file(folder: Path, i: int, rows: int) -> Path:
    """Write site ``i``'s table (sex, condition, age, bmi) to a Parquet file."""
    rng = np.random.default_rng(1000 + i)
    frame = pd.DataFrame(
        {
            "sex": rng.choice(["F", "M"], rows),
            "condition": rng.choice(CONDITIONS, rows, p=[0.3, 0.15, 0.15, 0.3, 0.1]),
            "age": np.clip(rng.normal(50 + 3 * i, 15, rows), 0, 110).round(2),
            "bmi": np.clip(rng.normal(27, 5, rows), 10, 70).round(2),
        }
    )
    path = folder / f"site-{i}.parquet"
    frame.to_parquet(path)
    return path


def timed(fn: Any) -> tuple[float, Any]:
    """Wall time of one call and its result."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


MIN_ROWS = 1000  # every site's every group passes the minimum group size (10)


class Mismatch(AssertionError):
    """A federated answer that is not DuckDB's on the pooled rows."""


def check(ours: pd.DataFrame, theirs: pd.DataFrame, name: str) -> None:
    """Raise ``Mismatch`` unless the federated answer is DuckDB's (means 1e-9, medians 1e-4).

    Every group DuckDB finds in the pooled rows must be in the federated answer, with
    every aggregate within the tolerance (a NaN, a withheld or suppressed group, is no
    match); ``assert`` is not used, so ``python -O`` checks the same.
    """
    ours = ours.set_index("condition")
    theirs = theirs.set_index("condition")
    missing = sorted(set(theirs.index) - set(ours.index))
    if missing:
        raise Mismatch(f"{name}: the federated answer has no row for {missing}")
    if len(ours.columns) != len(theirs.columns):
        raise Mismatch(f"{name}: columns {list(ours.columns)}, DuckDB's {list(theirs.columns)}")
    for group, ref in theirs.iterrows():
        for col, value in zip(ours.columns, ref.to_numpy(), strict=True):  # DuckDB: avg(age)
            got = float(ours.loc[group, col])
            tol = 1e-4 if "MEDIAN" in col else 1e-9 * max(1.0, abs(float(value)))
            if not abs(got - float(value)) <= tol:  # also a NaN
                raise Mismatch(f"{name}: {col} of {group!r} is {got}, DuckDB says {value}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, refused with a message naming the flag when they measure nothing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per site")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.sites < 2:
        parser.error(f"--sites must be at least 2 (secure aggregation needs two), got {args.sites}")
    if args.rows < MIN_ROWS:
        parser.error(
            f"--rows must be at least {MIN_ROWS:,}, got {args.rows}: with fewer a site may "
            "withhold a group under the minimum group size (10), and the federated answer "
            "would rightly differ from DuckDB's on the pooled rows"
        )
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    return args


def main() -> None:
    """Run the benchmark and print a Markdown table (and JSON with --json)."""
    args = parse_args()
    policy = Policy(
        bounds={"age": (0, 110), "bmi": (10, 70)},
        domains={"condition": CONDITIONS, "sex": ["F", "M"]},
        min_group_size=10,
    )
    results: dict[str, Any] = {"sites": args.sites, "rows": args.rows, "queries": {}}
    with tempfile.TemporaryDirectory() as tmp:
        files = [make_site_file(Path(tmp), i, args.rows) for i in range(args.sites)]
        load, sites = timed(
            lambda: [Site({"patients": f}, policy, name=f"site-{i}") for i, f in enumerate(files)]
        )
        con = duckdb.connect()
        pooled_load, _ = timed(
            lambda: con.execute(
                "CREATE TABLE patients AS SELECT * FROM read_parquet(?)",
                [[str(f) for f in files]],
            )
        )
        results["load_seconds"] = {"sites": load, "pooled": pooled_load}
        query(sites, "SELECT COUNT(*) FROM patients WHERE age > 1", secure=True)  # warm up
        run = 0
        for name, template in QUERIES.items():
            times: dict[str, list[float]] = {"duckdb": [], "federated": [], "secure": []}
            for _ in range(args.repeat):
                for mode in ("duckdb", "federated", "secure"):
                    run += 1
                    sql = template.format(t=f"{18 + run * 1e-6:.6f}")
                    if mode == "duckdb":
                        seconds, _ = timed(lambda sql=sql: con.execute(sql).df())
                    else:
                        seconds, ours = timed(
                            lambda sql=sql, mode=mode: query(
                                sites, sql, secure=mode == "secure", precision=1e-5
                            )
                        )
                        check(ours, con.execute(sql).df(), f"{name}/{mode}")
                    times[mode].append(seconds)
            results["queries"][name] = {
                "sql": template.format(t="18"),
                **{m: statistics.median(v) for m, v in times.items()},
            }
    print(
        f"\n{args.sites} sites x {args.rows:,} rows; site tables loaded in {load:.2f} s, "
        f"pooled table in {pooled_load:.2f} s\n"
    )
    print(
        "| query | DuckDB pooled (s) | federated (s) | federated + SecAgg (s) "
        "| x DuckDB | x DuckDB (SecAgg) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results["queries"].items():
        print(
            f"| {name} | {r['duckdb']:.3f} | {r['federated']:.3f} | {r['secure']:.3f} | "
            f"{r['federated'] / r['duckdb']:.1f} | {r['secure'] / r['duckdb']:.1f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
