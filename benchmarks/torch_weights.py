"""Cost of moving a PyTorch model's weights in and out of covey, against the usual copies.

Per direction, for a model of ``--mb`` megabytes of float32 in ``--layers``
tensors, the median of ``--repeats`` runs of:

- out: ``covey.torch.to_weights(model)`` (views of the tensors) against
  ``{k: v.detach().cpu().numpy().copy()}`` (the copy most hand-written clients make);
- in: ``covey.torch.load_weights(model, weights)`` (one copy, into the model's
  own tensors) against ``model.load_state_dict({k: torch.tensor(v)})`` (a copy
  into new tensors, then a second into the model).

Run: ``python benchmarks/torch_weights.py --mb 400``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from covey.torch import load_weights, to_weights


def _model(mb: int, layers: int) -> nn.Module:
    per_layer = mb * 2**20 // 4 // layers
    side = int(per_layer**0.5)
    return nn.Sequential(*(nn.Linear(side, side, bias=False) for _ in range(layers)))


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Measure both directions and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=400)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = _model(args.mb, args.layers)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weights = {k: np.array(v, copy=True) for k, v in to_weights(model).items()}
    for v in weights.values():
        v.setflags(write=False)
    rows = [
        ("out: to_weights (views)", lambda: to_weights(model)),
        (
            "out: detach().cpu().numpy().copy()",
            lambda: {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()},
        ),
        ("in: load_weights (one copy, in place)", lambda: load_weights(model, weights)),
        (
            "in: load_state_dict(torch.tensor(...))",
            lambda: model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()}),
        ),
    ]
    print(
        f"model: {nbytes / 2**20:.0f} MiB float32 in {args.layers} tensors, "
        f"median of {args.repeats}, torch {torch.__version__}"
    )
    print("| operation | seconds | GB/s |")
    print("| --- | ---: | ---: |")
    for name, fn in rows:
        seconds = _median_seconds(fn, args.repeats)
        rate = nbytes / seconds / 1e9 if seconds > 0 else float("inf")
        print(f"| {name} | {seconds:.4f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
