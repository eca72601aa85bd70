"""The graph parameters match Google's production parameter finder on its own test vectors."""

from __future__ import annotations

import pytest

from covey.secagg import ThreatModel, complete_threshold, harary_parameters, identities, plan

# (n, corrupt, dropout, adversary) -> (degree, threshold upper bound), from the
# published test vectors of the production finder.
VECTORS = [
    (100, 0.05, 0.05, "curious", 12, 6),
    (1_000, 0.05, 0.05, "curious", 30, 17),
    (10_000, 0.05, 0.05, "curious", 34, 20),
    (100_000, 0.05, 0.05, "curious", 36, 21),
    (1_000_000, 0.05, 0.05, "curious", 38, 22),
    (100, 0.05, 0.05, "semi-malicious", 16, 11),
    (1_000, 0.05, 0.05, "semi-malicious", 52, 37),
    (100, 0.05, 0.33, "curious", 28, 6),
    (1_000, 0.05, 0.33, "curious", 72, 24),
    (1_000_000, 0.05, 0.33, "curious", 102, 34),
    (100, 0.33, 0.33, "curious", 68, 34),
    (1_000, 0.33, 0.33, "curious", 286, 150),
    (100, 0.45, 0.45, "curious", 92, 46),
    (10, 0.33, 0.33, "curious", 8, 4),
    (100, 0.33, 0.05, "curious", 34, 29),
    (100, 0.3, 0.3, "semi-malicious", 92, 62),
]


@pytest.mark.parametrize(("n", "corrupt", "drop", "adversary", "degree", "threshold"), VECTORS)
def test_matches_the_production_finder(
    n: int, corrupt: float, drop: float, adversary: str, degree: int, threshold: int
) -> None:
    k, t = harary_parameters(n, ThreatModel(corrupt, drop, adversary))  # type: ignore[arg-type]
    assert k == degree
    assert 2 <= t <= threshold


def test_issue_values_exactly() -> None:
    assert [harary_parameters(n) for n in (100, 1_000, 1_000_000)] == [(12, 6), (30, 17), (38, 22)]


def test_infeasible_threat_models_are_refused() -> None:
    with pytest.raises(ValueError, match="infeasible"):
        ThreatModel(0.5, 0.5)
    with pytest.raises(ValueError, match="infeasible"):
        ThreatModel(0.3, 0.35, "semi-malicious")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ThreatModel(-0.1, 0.1)


def test_complete_graph_thresholds() -> None:
    assert complete_threshold(100, ThreatModel(0.05, 0.05)) == 6
    assert complete_threshold(100, ThreatModel(0.05, 0.05, "semi-malicious")) == 54
    with pytest.raises(ValueError, match="cannot be both"):
        complete_threshold(10, ThreatModel(0.3, 0.3, "semi-malicious"))


def test_plan_refuses_more_clients_than_the_protocol_takes() -> None:
    # It fell back to the complete graph (n * (n - 1) neighbour entries) past 1,000,000.
    with pytest.raises(ValueError, match="at most 1,000,000 clients in a round, got 1,000,001"):
        plan(1_000_001)
    with pytest.raises(ValueError, match="at most 1,000,000 clients"):
        plan(10**7, complete=True)


def test_an_identity_never_shows_its_private_key() -> None:
    identity = identities(["site-a"])["site-a"]
    assert identity.signing_key.hex() not in repr(identity)
    assert "signing_key" not in repr(identity)
    assert "site-a" in repr(identity)


def test_plan_falls_back_to_the_complete_graph_for_small_federations() -> None:
    small = plan(5, ThreatModel(0.2, 0.2))
    assert small.complete
    assert small.degree == 4
    assert not plan(100).complete
    assert plan(100, complete=True).degree == 99
