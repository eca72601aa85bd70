"""A strategy option of the wrong type is a TypeError naming the option and the type given.

A value of the right type out of range stays a ValueError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import covey

_WRONG_TYPES: list[tuple[Callable[..., Any], dict[str, Any], str]] = [
    (covey.FedAvg, {"fraction_fit": "0.5"}, r"fraction_fit must be a number in \[0, 1\], got str"),
    (covey.FedAvg, {"fraction_evaluate": True}, r"fraction_evaluate must be a number .*got bool"),
    (covey.FedAvg, {"min_fit_clients": "2"}, r"min_fit_clients must be .*got str '2'"),
    (covey.FedAvg, {"min_fit_clients": 2.0}, r"min_fit_clients must be .*got float 2\.0"),
    (covey.FedAvg, {"min_available_clients": True}, r"min_available_clients .*got bool True"),
    (covey.FedAdam, {"eta": "0.1"}, r"eta must be a finite number > 0, got str '0\.1'"),
    (covey.FedAdam, {"tau": True}, r"tau must be a finite number > 0, got bool True"),
    (covey.FedAvgM, {"server_momentum": "0.9"}, r"momentum must be a finite number >= 0, got str"),
    (covey.FedProx, {"proximal_mu": "0.1"}, r"proximal_mu must be .*got str '0\.1'"),
    (covey.FedTrimmedAvg, {"beta": "0.2"}, r"beta must be a finite number >= 0, got str"),
    (covey.Krum, {"f": "1"}, r"f must be an int >= 0, got str '1'"),
    (covey.QFedAvg, {"q": True}, r"q must be a finite number >= 0, got bool True"),
    (covey.FedBuff, {"buffer_size": "3"}, r"buffer_size must be an int >= 1 .*got str '3'"),
    (covey.FedBuff, {"buffer_size": 3, "concurrency": 2.0}, r"concurrency .*got float 2\.0"),
]


@pytest.mark.parametrize(("build", "options", "match"), _WRONG_TYPES)
def test_an_option_of_the_wrong_type_is_a_type_error_naming_it(
    build: Callable[..., Any], options: dict[str, Any], match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        build(**options)


@pytest.mark.parametrize(
    ("build", "options", "match"),
    [
        (covey.FedAvg, {"fraction_fit": 1.5}, r"fraction_fit must be in \[0, 1\], got 1\.5"),
        (covey.FedAvg, {"min_fit_clients": -1}, r"min_fit_clients must be a non-negative int"),
        (covey.FedAdam, {"eta": -0.1}, r"eta must be a finite number > 0, got -0\.1"),
        (covey.Krum, {"f": -1}, r"f must be an int >= 0, got -1"),
        (covey.FedBuff, {"buffer_size": 0}, r"buffer_size must be an int >= 1"),
    ],
)
def test_an_option_out_of_range_stays_a_value_error(
    build: Callable[..., Any], options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build(**options)
