"""What the inline backend's check of the lent weights costs, next to what a round does anyway.

The inline backend fingerprints the global weights before a round's first
client and after its last (``covey.sim._inline.fingerprint``). This script
times that fingerprint on models of 5 KB (the digits benchmark) to 40 MB and,
for scale, one fold of a reply into a weighted mean (``acc += n * w``, the
least work a round does per client). It prints a Markdown table of medians.

Usage::

    python benchmarks/inline_weights_check.py
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib
from collections.abc import Callable

import numpy as np

from covey.sim._inline import fingerprint


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    print("| model | floats | fingerprint ms | CRC-32 ms | one fold ms | 2 fingerprints / fold |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, size, dtype in (
        ("digits (650 float64)", 650, np.float64),
        ("1 MB float32", 250_000, np.float32),
        ("40 MB float32", 10_000_000, np.float32),
    ):
        weights = {"w": np.random.default_rng(0).standard_normal(size).astype(dtype)}
        acc = np.zeros_like(weights["w"])
        view = memoryview(weights["w"]).cast("B")
        fp = _median_ms(lambda: fingerprint(weights), args.repeats)  # noqa: B023
        crc = _median_ms(lambda: zlib.crc32(view), args.repeats)  # noqa: B023
        fold = _median_ms(
            lambda: np.add(acc, 3.0 * weights["w"], out=acc),  # noqa: B023
            args.repeats,
        )
        print(f"| {label} | {size:,} | {fp:.4f} | {crc:.4f} | {fold:.4f} | {2 * fp / fold:.2f} |")


if __name__ == "__main__":
    main()
