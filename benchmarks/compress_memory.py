"""Peak memory of the compression encoders on one large update.

Encodes one float64 array of ``--mb`` megabytes with every scheme, and top-k's
error feedback with a residual, then decodes each encoding as the server does,
under ``tracemalloc``, and prints a markdown table: the peak of Python
allocations during the call, what the call returns (the encoded parts, the new
residual for error feedback, the decoded update), and the difference, the
call's temporaries, in MB and in copies of the input.

Example::

    .venv/bin/python benchmarks/compress_memory.py --mb 100
"""

from __future__ import annotations

import argparse
import tracemalloc
from typing import Any

import numpy as np

from covey.compress import Cast, Quantize, TopK, topk_with_feedback
from covey.core import WeightsSpec


def _measure(call: Any) -> tuple[float, float]:
    """``(peak, kept)`` bytes of Python allocations while ``call()`` runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = call()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return float(peak), float(kept)


def main() -> None:
    """Print the table for an update of ``--mb`` megabytes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the update in MB")
    args = parser.parse_args()
    x = {"w": np.random.default_rng(0).standard_normal(args.mb * 1_000_000 // 8)}
    spec = WeightsSpec.of(x)
    rows: list[tuple[str, float, float]] = []
    for scheme in (Cast("float16"), Cast("bfloat16"), Quantize(8), Quantize(4), TopK(0.01)):
        rows.append(
            (scheme.name, *_measure(lambda s=scheme: s.encode(x, np.random.default_rng(0))))
        )
    _, residual = topk_with_feedback(TopK(0.01), x, None, spec)
    rows.append(
        (
            "top-k 1% + error feedback",
            *_measure(lambda: topk_with_feedback(TopK(0.01), x, residual, spec)),
        )
    )
    for scheme in (Cast("float16"), Cast("bfloat16"), Quantize(8), Quantize(4), TopK(0.01)):
        parts = scheme.encode(x, np.random.default_rng(0))
        rows.append(
            (f"decode {scheme.name}", *_measure(lambda s=scheme, p=parts: s.decode(p, spec)))
        )
    size = x["w"].nbytes
    print(f"update: {size / 1e6:.0f} MB of float64\n")
    print("| call | peak MB | returned MB | temporaries MB | temporaries / input |")
    print("|---|---:|---:|---:|---:|")
    for name, peak, kept in rows:
        extra = peak - kept
        cells = [f"{peak / 1e6:.1f}", f"{kept / 1e6:.1f}", f"{extra / 1e6:.1f}"]
        print(f"| {name} | {' | '.join(cells)} | {extra / size:.3f} |")


if __name__ == "__main__":
    main()
