"""The process backend against inline when clients compute: a torch MLP, several local epochs.

Each client trains a 64-256-256-10 MLP (about 85k parameters) on its share of
scikit-learn's digits for ``--epochs`` epochs of minibatch SGD per round;
torch runs one thread per process (the main process and every worker), so
the process backend's speed-up comes from running clients side by side. The
script runs the same federation with ``backend="inline"`` and
``backend="process"`` (``--workers`` processes), checks that both end with the
same weights, and prints wall and CPU time of each ``simulate`` call.

Example::

    .venv/bin/python benchmarks/process_heavy.py --n 8 --rounds 3 --epochs 5 --workers 2
"""

from __future__ import annotations

import argparse
import functools
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _workload as wl
import numpy as np

import covey

HIDDEN = 256


def _torch() -> Any:
    import torch

    torch.set_num_threads(1)
    return torch


def initial_weights() -> dict[str, np.ndarray]:
    """The MLP's parameters, seeded: fc1, fc2, fc3 weights and biases (float32)."""
    rng = np.random.default_rng(0)
    sizes = [(wl.NUM_FEATURES, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, wl.NUM_CLASSES)]
    out: dict[str, np.ndarray] = {}
    for i, (fan_in, fan_out) in enumerate(sizes, start=1):
        bound = 1.0 / np.sqrt(fan_in)
        out[f"fc{i}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        out[f"fc{i}.bias"] = np.zeros(fan_out, dtype=np.float32)
    return out


class MLPClient(covey.Client):
    """Client ``k`` of ``n``: trains the MLP on its digits for ``epochs`` epochs."""

    def __init__(self, k: int, n: int, epochs: int) -> None:
        torch = _torch()
        x, y = wl.client_data(k, n)
        self.k, self.epochs = k, epochs
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.from_numpy(np.ascontiguousarray(y))

    def fit(self, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Any:
        torch = _torch()
        params = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
        gen = torch.Generator().manual_seed(1000 * int(config["round"]) + self.k)
        for _ in range(self.epochs):
            order = torch.randperm(self.x.shape[0], generator=gen)
            for start in range(0, self.x.shape[0], 16):
                idx = order[start : start + 16]
                h = torch.relu(self.x[idx] @ params["fc1.weight"].T + params["fc1.bias"])
                h = torch.relu(h @ params["fc2.weight"].T + params["fc2.bias"])
                out = h @ params["fc3.weight"].T + params["fc3.bias"]
                loss = torch.nn.functional.cross_entropy(out, self.y[idx])
                grads = torch.autograd.grad(loss, list(params.values()))
                with torch.no_grad():
                    for p, g in zip(params.values(), grads, strict=True):
                        p -= 0.05 * g
        new = {k: v.detach().numpy() for k, v in params.items()}
        return covey.FitResult(weights=new, num_examples=int(self.x.shape[0]))


def run(backend: str, n: int, rounds: int, epochs: int, workers: int) -> tuple[Any, float, float]:
    """``(result, wall seconds, CPU seconds of this process and its children)``."""
    _torch()
    cpu0 = _cpu()
    t0 = time.perf_counter()
    result = covey.simulate(
        functools.partial(MLPClient, n=n, epochs=epochs),
        n,
        rounds,
        covey.FedAvg(fraction_fit=1.0, min_fit_clients=n, fraction_evaluate=0.0),
        initial_weights(),
        backend=backend,  # type: ignore[arg-type]
        num_workers=workers if backend == "process" else None,
        seed=0,
    )
    return result, time.perf_counter() - t0, _cpu() - cpu0


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    """Run both backends and print the comparison."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    wl.load_data()
    inline, t_inline, c_inline = run("inline", args.n, args.rounds, args.epochs, args.workers)
    proc, t_proc, c_proc = run("process", args.n, args.rounds, args.epochs, args.workers)
    same = all(np.array_equal(inline.weights[k], proc.weights[k]) for k in inline.weights)
    print(f"N={args.n} R={args.rounds} epochs={args.epochs} workers={args.workers}")
    print(f"inline : wall {t_inline:.2f} s, CPU {c_inline:.2f} s")
    print(f"process: wall {t_proc:.2f} s, CPU {c_proc:.2f} s (workers' CPU counted at exit)")
    print(f"speed-up (inline wall / process wall): {t_inline / t_proc:.2f}x")
    print(f"same final weights: {same}")


if __name__ == "__main__":
    main()
