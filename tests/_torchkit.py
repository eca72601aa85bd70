"""Shared pieces of the torch tests: one intra-op thread, a tiny classification loader."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, TensorDataset


def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread while the caller yields: tiny models, a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_loader(n: int = 16, seed: int = 0) -> DataLoader:
    """``n`` examples of 4 features and 3 classes, in batches of 8."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)),
        batch_size=8,
    )
