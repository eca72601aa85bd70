"""Update compression: fewer bytes from clients to the server, for any strategy.

Pass a scheme to :func:`covey.simulate` or :func:`covey.serve` (``compression=``,
or ``covey server --compression SPEC``): clients encode the update they send
(their delta), and the server decodes it before any aggregation step sees it.
Over the network the scheme travels as its spec and the update as plain
arrays, checked by the server before decoding. Schemes: :class:`Cast` (float16 or bfloat16),
:class:`Quantize` (8 or 4 bits, stochastic rounding, unbiased), :class:`TopK`
(sparsification with error feedback kept on the client) and :class:`Identity`.

Example:
    >>> from covey.compress import Quantize, scheme_named
    >>> Quantize(4).name, scheme_named("bfloat16").name
    ('q4', 'bfloat16')
"""

from covey.compress._feedback import topk_with_feedback
from covey.compress._plain import (
    check_applies,
    encoded_from_plain,
    encoded_to_plain,
    run_scheme,
    scheme_named,
    scheme_spec,
)
from covey.compress._runtime import CompressedTransport
from covey.compress._schemes import (
    Cast,
    Encoded,
    Identity,
    Quantize,
    Scheme,
    TopK,
)
from covey.compress._task import CompressedFitPayload

__all__ = [
    "Cast",
    "CompressedFitPayload",
    "CompressedTransport",
    "Encoded",
    "Identity",
    "Quantize",
    "Scheme",
    "TopK",
    "check_applies",
    "encoded_from_plain",
    "encoded_to_plain",
    "run_scheme",
    "scheme_named",
    "scheme_spec",
    "topk_with_feedback",
]
