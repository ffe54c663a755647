"""vsmd: hosts recursive trees of Viable System Model units as supervised OS processes."""

__version__ = "0.1.0"
