"""Publishing where this daemon can be reached, for vsmctl (vsmd/locator.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from vsmd import __version__, locator
from vsmd.config import Config
from vsmd.daemon.trust import without_credentials
from vsmd.security.credentials import credentials_file

log = logging.getLogger("vsmd")


@dataclass(frozen=True)
class Announcement:
    where: locator.Where
    paths: tuple[Path, ...]

    def withdraw(self) -> None:
        locator.remove(self.paths, self.where)


def announce(config: Config, secure: bool, env: Mapping[str, str]) -> Announcement:
    """Publish the daemon's broker URL; in secure mode without the daemon's own login, which
    is for this process only, but with the operator credentials file vsmctl may log in with."""
    state_dir = config.state_dir.absolute()  # vsmctl may run in another directory
    creds = credentials_file(state_dir, "operator", config.namespace) if secure else None
    where = locator.Where(
        namespace=config.namespace,
        broker_url=without_credentials(config.broker_url) if secure else config.broker_url,
        credentials=str(creds) if creds else None,
        pid=os.getpid(),
        started=psutil.Process().create_time(),
        state_dir=str(state_dir),
        version=__version__,
    )
    paths = locator.publish(where, env)
    if paths:
        log.info("vsmctl finds this vsmd through %s", " and ".join(map(str, paths)))
    return Announcement(where, paths)
