"""Fixtures come from helpers.py, so that test modules can import its functions too."""

from helpers import client, kafka, library, sim

__all__ = ["client", "kafka", "library", "sim"]
