"""Fixtures come from helpers.py, so that test modules can import its functions too."""

import pytest
from helpers import client, kafka, library, sim

__all__ = ["client", "kafka", "library", "sim"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-scenarios",
        type=int,
        default=0,
        help="also run N randomized convergence scenarios (tests/test_convergence.py); "
        "FEED_SOAK_SCENARIOS and FEED_SOAK_MINUTES do the same from the environment",
    )
