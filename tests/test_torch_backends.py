"""Torch clients on the process backend: forked workers, torch threads, the same bits as inline."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import covey

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from covey.torch import TorchClient, to_weights  # noqa: E402


class _ParallelOp(covey.Client):
    """Runs one op large enough for torch to split it across its threads."""

    def fit(self, weights: covey.Weights, config: dict[str, Any]) -> covey.FitResult:
        total = float(torch.ones(200_000).add_(1).sum())
        return covey.FitResult(
            weights=dict(weights),
            num_examples=1,
            metrics={"total": total, "threads": torch.get_num_threads()},
        )


@pytest.fixture
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("_two_threads")
def test_forked_workers_run_torch_after_the_parent_did() -> None:
    # The parent's OpenMP pool exists now; before the fix a forked worker's first
    # parallel op waited for its threads forever (here: until the round timed out).
    assert float(torch.ones(200_000).add_(1).sum()) == 400_000.0
    result = covey.simulate(
        lambda cid: _ParallelOp(),
        2,
        1,
        covey.FedAvg(fraction_evaluate=0.0),
        {"w": np.zeros(1)},
        backend="process",
        num_workers=2,
        round_timeout=20,
    )
    assert result.history.failures() == []
    assert result.history.metric("total", "fit") == [(1, 400_000.0)]
    assert result.history.metric("threads", "fit") == [(1, 1.0)]  # one thread per worker


class _Net(nn.Module):
    """BatchNorm (with its int64 counter) and a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x: Any) -> Any:
        return self.frozen(self.body(x))


def _client(cid: int) -> TorchClient:
    g = torch.Generator().manual_seed(cid)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=8,
        shuffle=True,
        generator=torch.Generator().manual_seed(cid),
    )
    return TorchClient(_Net(), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), loader)


def test_batchnorm_and_frozen_layers_give_the_same_bits_inline_and_in_processes() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what a forked worker runs on
    try:
        torch.manual_seed(0)
        init = to_weights(_Net(), copy=True)
        runs = {
            backend: covey.simulate(
                _client, 3, 2, covey.FedAvg(fraction_evaluate=0.0), init, backend=backend
            ).weights
            for backend in ("inline", "process")
        }
    finally:
        torch.set_num_threads(before)
    for name, value in init.items():
        assert runs["inline"][name].dtype == value.dtype
        np.testing.assert_array_equal(runs["inline"][name], runs["process"][name])
    assert runs["process"]["body.1.num_batches_tracked"] == 2 * 4  # two rounds of 4 batches
    np.testing.assert_array_equal(runs["process"]["frozen.weight"], init["frozen.weight"])


_NO_TORCH_IN_PARENT = """
import sys
import numpy as np
import covey

class Threads(covey.Client):
    def fit(self, weights, config):
        import torch
        return covey.FitResult(weights=dict(weights), num_examples=1,
                               metrics={"threads": torch.get_num_threads()})

def client_fn(cid):
    import torch
    torch.set_num_threads(2)
    return Threads()

result = covey.simulate(client_fn, 2, 1, covey.FedAvg(fraction_evaluate=0.0),
                        {"w": np.zeros(1)}, backend="process", num_workers=2, round_timeout=60)
assert "torch" not in sys.modules
print(result.history.metric("threads", "fit"))
"""


@pytest.mark.slow
def test_workers_run_torch_on_one_thread_when_only_the_clients_load_it() -> None:
    # The same threads, so the same bits, whether or not the parent had loaded torch.
    src = str(Path(covey.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_IN_PARENT],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[(1, 1.0)]"


def _loader_client(workers: int) -> Any:
    def client_fn(cid: int) -> TorchClient:
        g = torch.Generator().manual_seed(cid)
        x, y = torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g)
        loader = DataLoader(TensorDataset(x, y), batch_size=8, num_workers=workers)
        return TorchClient(
            _Net(), nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1), loader
        )

    return client_fn


def test_a_data_loader_with_worker_processes_runs_in_the_process_backend() -> None:
    # The pool's workers are daemons, which multiprocessing refuses any child: before
    # the fix every fit failed with "daemonic processes are not allowed to have children".
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what a forked worker runs on
    try:
        torch.manual_seed(0)
        init = to_weights(_Net(), copy=True)
        strategy = covey.FedAvg(fraction_evaluate=0.0)
        alone = covey.simulate(_loader_client(0), 2, 1, strategy, init)
        loaders = covey.simulate(
            _loader_client(1), 2, 1, strategy, init, backend="process", round_timeout=120
        )
    finally:
        torch.set_num_threads(before)
    assert loaders.history.failures() == []
    for name in init:  # the loader's worker gives the same batches, in the same order
        np.testing.assert_array_equal(loaders.weights[name], alone.weights[name])
