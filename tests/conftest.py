"""Fixtures come from helpers.py, so that test modules can import its functions too."""

from helpers import kafka, library, sim

__all__ = ["kafka", "library", "sim"]
