"""One line at start about ``memory_merge``: what the kernel will do with VSMs' pages."""

from __future__ import annotations

import logging

from vsmd.config import Config
from vsmd.supervisor.oscalls import ksm_running

log = logging.getLogger("vsmd")


def report(config: Config, secure: bool) -> None:
    """The fork server marks its pages at its first spawn (a refusal is logged there); this
    says whether the mark will do anything, so an operator who turned it on is not misled."""
    if not config.memory_merge:
        return
    if config.spawn_strategy != "forkserver":
        log.warning(
            'memory_merge applies to the fork server only; spawn_strategy = "%s" ignores it',
            config.spawn_strategy,
        )
        return
    running = ksm_running()
    if running is None:
        log.warning("memory_merge: this kernel has no KSM; VSMs' pages will not be merged")
    elif not running:
        log.warning(
            "memory_merge: the kernel's KSM is not running, so nothing is merged until it is "
            "(echo 1 > /sys/kernel/mm/ksm/run)"
        )
    else:
        log.info("memory_merge: the kernel's KSM merges identical pages of VSMs")
    if secure:
        log.warning(
            "memory_merge in secure mode: page merging lets a VSM time whether another process "
            "holds a page it can guess (docs/security.md)"
        )
