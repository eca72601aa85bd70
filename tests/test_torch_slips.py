"""covey.torch and DPSGD given the usual slips of a PyTorch user: each named, with its fix."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from covey.torch import to_weights  # noqa: E402


def test_central_dp_names_batch_norms_counter_and_how_to_drop_it() -> None:
    import covey
    from covey import privacy

    dp = privacy.central(covey.FedAvg(), noise_multiplier=1.0, clip=1.0, delta=1e-5)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with pytest.raises(TypeError, match=r"\['1\.num_batches_tracked'\]") as caught:
        dp.aggregator.init(to_weights(model))
    said = str(caught.value)
    assert "BatchNorm's num_batches_tracked buffer" in said
    assert "m.num_batches_tracked = None" in said
    assert "track_running_stats=False" in said
    assert "GroupNorm" in said
    # The fix it gives works: the counter leaves the weights, and the model still trains.
    model[1].num_batches_tracked = None  # type: ignore[assignment]
    dp.aggregator.init(to_weights(model))
    model.train()(torch.randn(8, 4))
    # Integer arrays of another origin are told no more than before.
    with pytest.raises(TypeError) as caught:
        dp.aggregator.init({"w": np.zeros(3), "c": np.zeros(2, np.int64)})
    assert "BatchNorm" not in str(caught.value)
