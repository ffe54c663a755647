"""vsmctl: command line and Python client of vsmd."""

from vsmctl.client import VsmClient

__all__ = ["VsmClient"]
