"""feed: publishes every change of Gumnut's album-asset links to Kafka."""

__version__ = "0.1.0"
