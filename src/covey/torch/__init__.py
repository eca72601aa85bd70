"""PyTorch integration: weights to and from a ``state_dict``, and a ready :class:`TorchClient`.

Needs ``pip install 'covey[torch]'``; ``import covey`` never imports torch,
this subpackage does when it is imported.

Example::

    import torch
    from covey.torch import TorchClient, to_weights

    model = torch.nn.Linear(64, 10)
    client = TorchClient(model, torch.nn.CrossEntropyLoss(),
                         lambda params: torch.optim.SGD(params, lr=0.05), train_loader)
    initial = to_weights(model, copy=True)   # the global model before round 1
"""

from covey.clients._torch import torch_module
from covey.torch._client import TorchClient, evaluate_model
from covey.torch._weights import load_weights, to_state_dict, to_weights

torch_module()  # a clear ImportError now if PyTorch is missing

__all__ = ["TorchClient", "evaluate_model", "load_weights", "to_state_dict", "to_weights"]
