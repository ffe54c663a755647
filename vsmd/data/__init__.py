"""Files an installed vsmd carries: the sample configuration and the systemd unit.

In the source tree they are symlinks to config/vsmd.toml and systemd/vsmd.service (one copy to
keep up to date); a built wheel holds their contents. ``python -m vsmd.data NAME`` prints one,
for an installation that has no source tree (pipx).
"""

from __future__ import annotations

from importlib.resources import files

FILES = ("vsmd.toml", "vsmd.service")


def read(name: str) -> str:
    """The text of one of ``FILES``."""
    if name not in FILES:
        raise ValueError(f"no packaged file {name!r}; there are {', '.join(FILES)}")
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def sample_config() -> str:
    return read("vsmd.toml")


def systemd_unit() -> str:
    return read("vsmd.service")
