"""Update compression: fewer bytes from clients to the server, for any strategy.

Pass a scheme to :func:`covey.simulate` (``compression=``): clients encode the
update they send (their delta), and the server decodes it before any
aggregation step sees it. Schemes: :class:`Cast` (float16 or bfloat16),
:class:`Quantize` (8 or 4 bits, stochastic rounding, unbiased), :class:`TopK`
(sparsification with error feedback kept on the client) and :class:`Identity`.

Example:
    >>> from covey.compress import Quantize, scheme_named
    >>> Quantize(4).name, scheme_named("bfloat16").name
    ('q4', 'bfloat16')
"""

from covey.compress._runtime import CompressedFitPayload, CompressedTransport
from covey.compress._schemes import (
    Cast,
    Encoded,
    Identity,
    Quantize,
    Scheme,
    TopK,
    scheme_named,
    topk_with_feedback,
)

__all__ = [
    "Cast",
    "CompressedFitPayload",
    "CompressedTransport",
    "Encoded",
    "Identity",
    "Quantize",
    "Scheme",
    "TopK",
    "scheme_named",
    "topk_with_feedback",
]
