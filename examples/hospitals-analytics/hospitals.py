"""Five hospitals answer an analyst's SQL; no patient row ever leaves its hospital.

Each hospital holds a synthetic patient table generated with a seed: different
sizes, age distributions and mixes of conditions. One keeps it in a Parquet
file, one in a SQLite database, three as pandas DataFrames. The analyst asks
the question of federated analytics' classic example (the average age at
diagnosis per condition), a histogram of ages, the median age and the most
common conditions, through secure aggregation, without and with differential
privacy.

Run it:  python examples/hospitals-analytics/hospitals.py
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covey.analytics import Policy, Site, query

CONDITIONS = ["diabetes", "asthma", "copd", "hypertension", "cancer"]
# (patients, mean age, weights of the conditions) per hospital
HOSPITALS = [
    (4000, 58, [0.30, 0.15, 0.15, 0.30, 0.10]),
    (2500, 45, [0.20, 0.40, 0.05, 0.25, 0.10]),
    (6000, 66, [0.25, 0.05, 0.25, 0.30, 0.15]),
    (1500, 52, [0.35, 0.20, 0.10, 0.25, 0.10]),
    (3000, 61, [0.20, 0.10, 0.20, 0.35, 0.15]),
]
ONSET = {"diabetes": 0.0, "asthma": -20.0, "copd": 8.0, "hypertension": 2.0, "cancer": 5.0}


def patients(n: int, mean_age: float, weights: list[float], seed: int) -> pd.DataFrame:
    """A synthetic patient table: sex, condition, age at diagnosis, and an identifier."""
    rng = np.random.default_rng(seed)
    condition = rng.choice(CONDITIONS, n, p=weights)
    shift = np.array([ONSET[c] for c in condition])
    age = np.clip(rng.normal(mean_age + shift, 12.0), 1, 105).round(1)
    return pd.DataFrame(
        {
            "patient_id": np.arange(n),
            "sex": rng.choice(["F", "M"], n),
            "condition": condition,
            "age_at_diagnosis": age,
        }
    )


def hospitals(folder: Path, scale: float = 1.0) -> list[Site]:
    """The five hospitals as sites, each with its own policy (the same one here)."""
    policy = Policy(
        columns=["sex", "condition", "age_at_diagnosis"],  # never the patient id
        bounds={"age_at_diagnosis": (0, 110)},
        domains={"condition": CONDITIONS, "sex": ["F", "M"]},
        min_group_size=10,
        max_epsilon=1.0,  # DP queries up to epsilon 1 need not withhold small groups
    )
    tables: list[Any] = []
    for i, (n, mean_age, weights) in enumerate(HOSPITALS):
        tables.append(patients(max(20, int(n * scale)), mean_age, weights, seed=100 + i))
    tables[0].to_parquet(folder / "hospital-a.parquet")
    with sqlite3.connect(folder / "hospital-b.db") as con:
        tables[1].to_sql("patients", con, index=False)
    sources: list[Any] = [
        folder / "hospital-a.parquet",
        f"sqlite:///{folder / 'hospital-b.db'}",
        *tables[2:],
    ]
    return [
        Site({"patients": source}, policy, name=f"hospital-{'abcde'[i]}")
        for i, source in enumerate(sources)
    ]


def show(title: str, df: pd.DataFrame) -> None:
    """Print an answer and what came with it."""
    print(f"\n== {title}")
    with pd.option_context("display.width", 140, "display.max_colwidth", 60):
        print(df.to_string(index=False))
    privacy = df.attrs.get("privacy")
    notes = [f"sites: {len(df.attrs['sites'])}", f"suppressed: {df.attrs['suppressed']}"]
    if privacy:
        notes.append(f"epsilon spent: {privacy['epsilon']:.3f} ({privacy['mechanism']})")
    print("   " + "; ".join(notes))


def main(scale: float = 1.0, epsilon: float = 1.0) -> dict[str, pd.DataFrame]:
    """Ask the analyst's questions; return the answers by name."""
    with tempfile.TemporaryDirectory() as tmp:
        sites = hospitals(Path(tmp), scale)
        answers = {
            "average age at diagnosis": query(
                sites,
                "SELECT condition, AVG(age_at_diagnosis), STDDEV_SAMP(age_at_diagnosis), "
                "COUNT(*) FROM patients GROUP BY condition",
            ),
            "ages of diabetics": query(
                sites,
                "SELECT sex, HISTOGRAM(age_at_diagnosis, 0, 110, 11), MEDIAN(age_at_diagnosis) "
                "FROM patients WHERE condition = 'diabetes' GROUP BY sex",
            ),
            "most common conditions": query(
                sites, "SELECT APPROX_TOP_K(condition, 3), COUNT(*) FROM patients"
            ),
            f"average age at diagnosis from 18 with DP (epsilon={epsilon})": query(
                sites,
                "SELECT condition, AVG(age_at_diagnosis), COUNT(*) FROM patients "
                "WHERE age_at_diagnosis >= 18 GROUP BY condition",
                epsilon=epsilon,
            ),
        }
    for title, df in answers.items():
        show(title, df)
    return answers


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each table")
    parser.add_argument("--epsilon", type=float, default=1.0, help="DP budget of the DP query")
    args = parser.parse_args()
    main(args.scale, args.epsilon)
