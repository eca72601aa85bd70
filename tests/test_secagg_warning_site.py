"""The warnings of `secagg.secure` name the line that called it, not covey's own wrapper."""

from __future__ import annotations

import warnings

import covey
import covey.secagg


def test_the_unsigned_keys_warning_names_the_callers_line() -> None:
    # It named covey/strategies/_names.py (the keyword checker around secure()).
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        covey.secagg.secure(covey.FedAvg(), clip_range=0.5, bits=16)
    assert [w.filename for w in said] == [__file__]
    assert "without signed keys" in str(said[0].message)


def test_the_curious_threat_warning_names_the_callers_line() -> None:
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        covey.secagg.secure(covey.FedAvg(), clip_range=0.5, bits=16, signed=True)
    assert [w.filename for w in said] == [__file__]
    assert "curious threat model" in str(said[0].message)
