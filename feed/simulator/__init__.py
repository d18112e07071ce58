"""A faithful local stand-in for Gumnut's album-assets API: tests, demos, benchmarks."""

from feed.simulator.faults import Fault, Faults
from feed.simulator.library import Library
from feed.simulator.server import Simulator

__all__ = ["Fault", "Faults", "Library", "Simulator"]
