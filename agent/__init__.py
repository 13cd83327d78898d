"""station-agent: the edge agent on the box at every polling station."""

__version__ = "0.1.0"
