"""What a q-FedAvg server asks of its clients: their loss at the weights received.

q-FedAvg weighs each update by the client's loss at the global weights it was
sent, before it trains (Li et al., ICLR 2020). The :func:`covey.QFedAvg` preset
puts the metric's name in every fit config under :data:`LOSS_BEFORE_FIT`; the
built-in clients (``TorchClient``, ``SklearnClient``, ``LogisticClient``) then
report that loss on their training data under that name. A client of one's own
reports it as the preset's ``loss_key`` says.
"""

from __future__ import annotations

from typing import Final

from covey.core._messages import Config

LOSS_BEFORE_FIT: Final = "loss_before_fit"
"""The fit config entry naming the metric for the loss at the received weights."""

MAX_KEY_CHARS: Final = 128


def loss_before_fit(config: Config) -> str | None:
    """The metric name under which the server asks for the loss before training, if it asks.

    Args:
        config: The config a client's ``fit`` received.

    Returns:
        The metric name, or None when the server does not ask (not q-FedAvg).

    Raises:
        ValueError: The entry is not a metric name.

    Example:
        >>> loss_before_fit({"loss_before_fit": "loss"}), loss_before_fit({})
        ('loss', None)
    """
    key = config.get(LOSS_BEFORE_FIT)
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise ValueError(
            f"config {LOSS_BEFORE_FIT!r} must name a metric (1 to {MAX_KEY_CHARS} "
            f"characters), got {key!r}"
        )
    return key
