"""Secure aggregation (SecAgg+): the server learns the sum of the clients' vectors, nothing else.

Two entry points share one protocol implementation:

* **Generic secure sum** (federated analytics and anything else that adds up
  integer vectors). On every client, name the computation once::

      covey.secagg.register_input("hist", lambda client, payload: client.histogram(payload))

  where the function returns a 1-D int64 vector with entries in ``[-bound, bound]``.
  On the server::

      result = covey.secagg.secure_sum(
          transport, cids, round=1, input_kind="hist", payload={"bins": 10},
          length=10, bound=1000, threat=None, timeout=30.0, seed=None,
      )
      result.total      # int64 array: the exact sum over result.survivors
      result.survivors  # clients whose vectors are in the sum
      result.dropped    # clients that dropped after sharing keys (recovered), with why
      result.excluded   # clients that left before sharing keys (not in the sum), with why

  :class:`SecAggAbort` (with ``reason``, ``stage``, ``dropped``) is raised when
  the round must stop without revealing anything. ``noise=Noise("skellam", s)``
  adds distributed DP noise on each client before masking.

* **Secure federated learning**: ``covey.secagg.secure(strategy, clip_range=...,
  bits=...)`` returns a :class:`~covey.Strategy` whose fit rounds run through
  :func:`secure_sum`.

The graph's degree and threshold come from a :class:`ThreatModel`
(:func:`harary_parameters`); the cryptography is X25519 + HKDF, AES-GCM for the
shares, Ed25519 for identities and AES-CTR for masks, all from ``cryptography``;
Shamir sharing is over GF(2^31 + 11) (:mod:`covey.secagg._shamir`).

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning", CCS 2017. Bell et al., "Secure Single-Server Aggregation with
    (Poly)Logarithmic Overhead", CCS 2020.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from covey.core._lazy import lazy_exports

if TYPE_CHECKING:  # loaded on first use: cryptography is slow to import
    from covey.secagg._client_stages import Identity, ProtocolAbort, identities
    from covey.secagg._crypto import new_signing_key
    from covey.secagg._dp import Noise
    from covey.secagg._driver import SecAggAbort, SecureSumResult, secure_sum
    from covey.secagg._handlers import forget, register_input, register_task_input
    from covey.secagg._params import (
        GraphPlan,
        ThreatModel,
        complete_threshold,
        harary_parameters,
        plan,
    )
    from covey.secagg._ring import RangeError, ring_bits
    from covey.secagg._secure import secure

__all__ = [
    "GraphPlan",
    "Identity",
    "Noise",
    "ProtocolAbort",
    "RangeError",
    "SecAggAbort",
    "SecureSumResult",
    "ThreatModel",
    "complete_threshold",
    "forget",
    "harary_parameters",
    "identities",
    "new_signing_key",
    "plan",
    "register_input",
    "register_task_input",
    "ring_bits",
    "secure",
    "secure_sum",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "GraphPlan": "_params",
            "Identity": "_client_stages",
            "Noise": "_dp",
            "ProtocolAbort": "_client_stages",
            "RangeError": "_ring",
            "SecAggAbort": "_driver",
            "SecureSumResult": "_driver",
            "ThreatModel": "_params",
            "complete_threshold": "_params",
            "forget": "_handlers",
            "harary_parameters": "_params",
            "identities": "_client_stages",
            "new_signing_key": "_crypto",
            "plan": "_params",
            "register_input": "_handlers",
            "register_task_input": "_handlers",
            "ring_bits": "_ring",
            "secure": "_secure",
            "secure_sum": "_driver",
        },
    )
